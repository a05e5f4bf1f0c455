"""Hardware and model descriptions the engine runs on, in SI units (bytes, seconds, bytes/s, FLOP/s).

Units are parsed once, at the YAML boundary (`sim.units`), into these plain frozen dataclasses.
Nothing here validates user input: `sim.scenario` does that and names the YAML field.

Memory model (see docs/engine.md):
* ``hbm.capacity`` is the budget for experts *kept in HBM across layers* (the expert cache).
  The experts a layer fetches on demand pass through a separate staging area sized for one
  layer's worth, which is always available; a policy that keeps them must admit them into the
  cache (evicting others). 0 means no cache.
* Experts outside HBM live in ``host`` DRAM (reached over ``pcie``), in the ``md`` pool (reached
  over ``md_link``), or in both (``placement``).
* In ``near-data`` MD mode the pool can also run an expert next to its memory: only the
  tokens' activations cross ``md_link`` (in and out).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

SHARING_RULES = ("fifo", "fair")


@dataclass(frozen=True)
class LinkConfig:
    """A one-directional link towards the GPU.

    ``sharing`` says how transfers share ``bandwidth`` (docs/engine.md, "Topology"):

    * ``fifo`` (static slots): ``channels`` concurrent transfer slots of the link (copy
      engines / queue pairs, all GPUs on the link together) each move data at
      ``channel_rate`` = min(bandwidth / channels, channel_bandwidth); a transfer waits FIFO
      for the earliest free slot, then takes ``latency + bytes / rate``;
    * ``fair`` (max-min fair): the flows active on the link share its bandwidth max-min
      (progressive filling over every link of each flow's path), each capped at
      ``channel_bandwidth`` if set; ``channels`` is how many transfers each GPU keeps in flight
      on a route that starts with this link.
    """

    name: str
    bandwidth: float  # bytes/s, the link's total
    latency: float = 0.0  # s per transfer
    channels: int = 1
    channel_bandwidth: float | None = None  # bytes/s cap per slot / per flow (None: no cap)
    sharing: str = "fifo"  # "fifo" or "fair"

    @property
    def channel_rate(self) -> float:
        share = self.bandwidth / self.channels
        return share if self.channel_bandwidth is None else min(share, self.channel_bandwidth)

    def transfer_time(self, nbytes: float) -> float:
        """Time one transfer of ``nbytes`` occupies a slot."""
        return self.latency + nbytes / self.channel_rate


@dataclass(frozen=True)
class HbmConfig:
    capacity: float = 0.0  # bytes for experts cached across layers (0 = no cache)
    bandwidth: float = 3.35e12  # bytes/s, for the roofline of expert compute


@dataclass(frozen=True)
class GpuConfig:
    peak_flops: float = 989e12  # FLOP/s (dense bf16)
    # FLOP/s of the GPU's vector (non-tensor FP32) units, which dequantise low-precision
    # weights; None: dequantisation is not charged (docs/engine.md, "Precision")
    vector_flops: float | None = None
    # s per MoE layer: attention, router, shared experts, this layer's share of the dense layers
    # and LM head; None = the roofline of `sim.roofline` per step (what scenarios default to)
    non_expert_time: float | None = 0.0
    expert_start: str = "per-expert"  # "per-expert": an expert starts once its weights are in;
    #                                   "layer": expert compute waits for all of the layer's weights
    # s per transformer layer per iteration of fixed software time (kernel launches, framework
    # dispatch, synchronisation) that the roofline does not see; added to the non-expert time
    layer_overhead: float = 0.0


@dataclass(frozen=True)
class ComputeUnit:
    """Compute next to a memory (MD pool near-data engine, or the host CPU)."""

    memory_bandwidth: float  # bytes/s the unit reads weights at
    peak_flops: float  # FLOP/s
    sharing: str = "fifo"  # the MD pool's unit shared by several GPUs: "fifo" or "ps"


HOST_LINK = "pcie"  # the link from host DRAM to the GPU in the default topology
MD_LINK = "md_link"  # the link from the MD pool to the GPU in the default topology
TIERS = ("host", "md")  # where experts live outside HBM, each reached over a path
PEER = "gpu"  # the path from another GPU (expert parallelism's activations), if any
ROUTE_OF_TIER = {"host": HOST_LINK, "md": MD_LINK}  # the route names policies see
TIER_OF_ROUTE = {route: tier for tier, route in ROUTE_OF_TIER.items()}
DATA_PARALLEL = ("replicas", "split", "expert")


@dataclass(frozen=True)
class Topology:
    """Which GPUs there are and how each tier reaches each GPU.

    ``paths[tier]``: the links a transfer from that tier to a GPU crosses, in order (from the
    memory to the GPU). A link named in ``per_gpu`` exists once per GPU (each GPU's own PCIe
    port); any other link is one link that every GPU's path shares. ``data_parallel``:
    ``replicas`` (every GPU decodes the scenario's whole batch) or ``split`` (the batch's
    sequences are divided among the GPUs).
    """

    num_gpus: int = 1
    paths: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"host": (HOST_LINK,), "md": (MD_LINK,)}, hash=False
    )
    per_gpu: frozenset[str] = frozenset({HOST_LINK})
    data_parallel: str = "replicas"

    def __post_init__(self) -> None:
        paths = {tier: tuple(self.paths[tier]) for tier in (*TIERS, PEER) if tier in self.paths}
        object.__setattr__(self, "paths", MappingProxyType(paths))
        object.__setattr__(self, "per_gpu", frozenset(self.per_gpu))

    def instance(self, link: str, gpu: int) -> str:
        """The name of GPU ``gpu``'s instance of ``link``: the link's own name when there is
        one GPU or the link is shared, else ``link@gpuN``."""
        if self.num_gpus == 1 or link not in self.per_gpu:
            return link
        return f"{link}@gpu{gpu}"

    def route(self, tier: str, gpu: int) -> tuple[str, ...]:
        """Link instances from ``tier`` to GPU ``gpu``, in order."""
        return tuple(self.instance(link, gpu) for link in self.paths[tier])

    def instances(self) -> list[tuple[str, str]]:
        """Every link instance of the machine as (instance name, link name), in path order."""
        seen: dict[str, str] = {}
        for gpu in range(self.num_gpus):
            for tier in self.paths:
                for link in self.paths[tier]:
                    seen.setdefault(self.instance(link, gpu), link)
        return list(seen.items())


@dataclass(frozen=True)
class Hardware:
    """One GPU's hardware and the links towards it, by name.

    ``links`` maps each link's name to its `LinkConfig` (given as a mapping or as an iterable
    of configs, keyed by their ``name``); it is stored read-only. The one-GPU topology reaches
    host DRAM over the link named ``pcie`` and the MD pool over ``md_link``.
    """

    hbm: HbmConfig
    links: Mapping[str, LinkConfig] = field(hash=False)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    md_mode: str = "fetch"  # "fetch" or "near-data"
    placement: str = "both"  # where experts live outside HBM: "host", "md" or "both"
    md_compute: ComputeUnit | None = None  # needed for md_mode "near-data"
    host_compute: ComputeUnit | None = None  # needed for policies that compute on the host CPU
    topology: Topology = field(default_factory=Topology)
    # the precisions of the expert copies each tier holds (`TIERS`), by the model's precision
    # names; a tier of `placement` not named here holds the model's native precision only
    copies: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        links = _links_by_name(self.links)
        for tier, path in self.topology.paths.items():
            for name in path:
                if name not in links:
                    raise ValueError(
                        f"hardware: path {tier} names link {name!r}, not one of {list(links)}"
                    )
        object.__setattr__(self, "links", MappingProxyType(links))
        copies = {tier: tuple(names) for tier, names in dict(self.copies).items()}
        for tier, names in copies.items():
            if tier not in self.tiers:
                raise ValueError(
                    f"hardware copies: expected tiers of placement {self.placement!r} "
                    f"({', '.join(self.tiers)}), got {tier!r}"
                )
            if not names or len(set(names)) != len(names):
                raise ValueError(f"hardware copies.{tier}: expected distinct names, got {names}")
        object.__setattr__(self, "copies", MappingProxyType(copies))

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tiers that hold experts outside HBM (`placement`)."""
        return {"host": ("host",), "md": ("md",)}.get(self.placement, TIERS)

    def route_links(self, tier: str) -> tuple[LinkConfig, ...]:
        """The links of ``tier``'s path (from the memory to the GPU)."""
        return tuple(self.links[name] for name in self.topology.paths[tier])

    def link(self, name: str) -> LinkConfig:
        """The link called ``name`` (KeyError if there is none)."""
        return self.links[name]

    @property
    def pcie(self) -> LinkConfig:
        """The host route as one link (`route_config`); by default exactly the ``pcie``
        link."""
        return self.route_config("host")

    @property
    def md_link(self) -> LinkConfig:
        """The MD route as one link (`route_config`); by default exactly the ``md_link``
        link."""
        return self.route_config("md")

    def route(self, name: str) -> LinkConfig:
        """A route by the name policies use (``pcie``: host, ``md_link``: MD) as one link."""
        return self.route_config(TIER_OF_ROUTE[name])

    def route_config(self, tier: str) -> LinkConfig:
        """``tier``'s route seen as one link, named after the route (``pcie`` / ``md_link``),
        for the estimates of policies and the uniform transfer time of the cost model: a
        one-link path is that link; a longer one has its first link's channels and sharing,
        the smallest bandwidth and per-flow cap on the path and the latencies added."""
        path = self.route_links(tier)
        name = ROUTE_OF_TIER[tier]
        first = path[0]
        if len(path) == 1:
            return first if first.name == name else dataclasses.replace(first, name=name)
        caps = [link.channel_bandwidth for link in path if link.channel_bandwidth is not None]
        return LinkConfig(
            name=name,
            bandwidth=min(link.bandwidth for link in path),
            latency=sum(link.latency for link in path),
            channels=first.channels,
            channel_bandwidth=min(caps) if caps else None,
            sharing=first.sharing,
        )

    def with_links(self, **links: LinkConfig) -> Hardware:
        """A copy with the named links replaced or added."""
        merged = {**self.links, **links}
        return dataclasses.replace(self, links=merged)


def _links_by_name(links: Mapping[str, LinkConfig] | Iterable[LinkConfig]) -> dict[str, LinkConfig]:
    if isinstance(links, Mapping):
        out = dict(links)
        for key, config in out.items():
            if config.name != key:
                raise ValueError(f"hardware links: link {key!r} is named {config.name!r}")
        return out
    out = {}
    for config in links:
        if config.name in out:
            raise ValueError(f"hardware links: two links named {config.name!r}")
        out[config.name] = config
    return out


@dataclass(frozen=True)
class Precision:
    """A stored format of expert weights other than the model's native one.

    One copy of an expert holds ``params * bits / 8`` bytes of values plus, with per-group
    scales, ``ceil(params / group_size) * scale_bits / 8`` bytes of metadata (scales, zero
    points, second-level scales: whatever the format stores per group). ``dequant_ops`` is the
    arithmetic per weight that turns the stored value into the compute type (charged on the
    GPU's vector units, docs/engine.md)."""

    name: str
    bits: float  # bits per weight of the stored values
    group_size: int | None = None  # weights per scale group (None: no per-group metadata)
    scale_bits: float = 0.0  # bits of metadata per group
    dequant_ops: float = 0.0  # vector-unit operations per weight to dequantise
    source: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bits) and self.bits > 0):
            raise ValueError(f"precision {self.name}: bits: expected > 0, got {self.bits!r}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(
                f"precision {self.name}: group_size: expected >= 1, got {self.group_size!r}"
            )
        if not (math.isfinite(self.scale_bits) and self.scale_bits >= 0):
            raise ValueError(
                f"precision {self.name}: scale_bits: expected >= 0, got {self.scale_bits!r}"
            )
        if not (math.isfinite(self.dequant_ops) and self.dequant_ops >= 0):
            raise ValueError(
                f"precision {self.name}: dequant_ops: expected >= 0, got {self.dequant_ops!r}"
            )

    def copy_bytes(self, params: float) -> float:
        """Bytes of one expert of ``params`` weights in this format."""
        nbytes = params * self.bits / 8.0
        if self.group_size is not None and self.scale_bits:
            nbytes += math.ceil(params / self.group_size) * self.scale_bits / 8.0
        return nbytes

    def bits_per_weight(self) -> float:
        """Effective bits per weight, metadata included."""
        extra = self.scale_bits / self.group_size if self.group_size else 0.0
        return self.bits + extra


@dataclass(frozen=True)
class ModelSpec:
    """What the engine needs to know about the MoE model."""

    name: str
    num_experts: int  # routed experts per MoE layer
    top_k: int
    expert_bytes: float  # bytes of one routed expert's weights
    hidden_size: int = 1024
    expert_ffn_size: int = 704
    bytes_per_param: float = 2.0  # bf16
    gated: bool = True  # SwiGLU (3 matrices) vs plain FFN (2)
    bytes_per_activation: float = 2.0  # hidden states and KV-cache entries (2 = bf16)
    # Dimensions of the non-expert part, for `sim.roofline` (None: not known)
    num_layers: int | None = None  # transformer layers, dense and MoE
    moe_layers: int | None = None  # of which MoE layers
    attention_heads: int | None = None
    kv_heads: int | None = None  # key/value heads (GQA); = attention_heads for plain MHA
    head_dim: int | None = None
    attention_params: float | None = None  # per layer; None: 2*h*(heads + kv_heads)*head_dim
    kv_cache_dim: float | None = None  # KV-cache elements per token per layer; None: 2*kv*hd
    dense_ffn_size: int | None = None  # FFN width of the dense (non-MoE) layers
    shared_experts: int = 0  # always-on shared experts per MoE layer
    shared_expert_ffn_size: int | None = None  # their total FFN width; None: n * expert ffn
    vocab_size: int | None = None  # LM head rows
    # Expert precisions: the native one (its copy is ``expert_bytes``) and the other stored
    # formats that exist (`Precision`); index 0 is the native one everywhere in the engine
    native_precision: str = "bf16"
    precisions: tuple[Precision, ...] = ()

    @property
    def matrices(self) -> int:
        return 3 if self.gated else 2

    @property
    def flops_per_token(self) -> float:
        """FLOPs of one token through one expert (2 per multiply-add)."""
        return 2.0 * self.matrices * self.hidden_size * self.expert_ffn_size

    @property
    def params_per_expert(self) -> int:
        """Weights of one routed expert (its matrices)."""
        return self.matrices * self.hidden_size * self.expert_ffn_size

    @property
    def precision_names(self) -> tuple[str, ...]:
        """Every precision by index: the native one first."""
        return (self.native_precision, *(p.name for p in self.precisions))

    def precision_index(self, name: str) -> int:
        """The index of precision ``name`` (ValueError if the model has none of that name)."""
        names = self.precision_names
        if name not in names:
            raise ValueError(f"expected one of {', '.join(names)}, got {name!r}")
        return names.index(name)

    def copy_bytes(self, index: int) -> float:
        """Bytes of one expert's copy in precision ``index`` (0: ``expert_bytes``)."""
        if index == 0:
            return float(self.expert_bytes)
        return self.precisions[index - 1].copy_bytes(self.params_per_expert)

    @property
    def activation_bytes_per_token(self) -> float:
        """Bytes of one token's hidden state crossing a link (one direction)."""
        return self.hidden_size * self.bytes_per_activation
