"""moe-offload-sim: where should the experts of a Mixture-of-Experts model live, and what does moving them cost?"""

__version__ = "0.1.0"
