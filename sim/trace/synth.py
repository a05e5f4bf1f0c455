"""Synthetic MoE routing traces that behave like real router outputs.

Policy results depend on the routing's structure (skew, locality, cross-layer correlation,
token determinism), so the generator models *why* real routing has that structure instead of
drawing experts independently. For sequence position ``t`` and MoE layer ``l``:

* token ids are drawn from a Zipf law over the vocabulary (id = frequency rank);
* a hidden vector, like a residual stream::

      h[t, l] = token_weight[l] * emb_l[token_t] + context_weight[l] * ctx[t, l]
                + topic_weight[l] * topic[t, l] + noise[t, l]

  ``emb_l`` is a random vector per token id (knob d: the same id pushes to the same experts);
  ``ctx`` is a fading memory of the previous tokens' vectors,
  ``ctx[t] = rho ctx[t-1] + sqrt(1 - rho^2) emb_l[token_{t-1}]`` with ``rho =
  temporal_locality[l]`` (knob b: neighbouring positions share context); ``noise`` is fresh
  per position; a per-sequence ``topic`` (weight ``topic_weight``) drifts slowly along
  positions (AR(1) with ``topic_memory``). All four drift from layer to layer as
  ``x_l = c x_{l-1} + sqrt(1 - c^2) fresh`` with ``c = layer_correlation[l]`` (knob c);
* each layer has a router matrix ``W_l`` ``[experts, hidden_dim]`` with equal row norms; a share
  ``router_affinity[l]`` of each row is inherited from one expert of the previous layer (ids
  shuffled), so experts pair up across layers (knob c, second lever);
* ``logits = W_l h / norm`` (unit variance), minus ``balance`` times each expert's mean logit
  over the trace (what a load-balanced router learns), plus a fixed popularity bias
  ``popularity_skew[l] * g_l`` with ``g_l ~ N(0, 1)`` per expert (knob a);
* the top-k experts of the logits are chosen; their scores are ``softmax(sharpness[l] * logits)``
  over *all* experts, gathered for the chosen ones, descending, not renormalised (like the real
  dump). ``sharpness`` only shapes the scores, never which experts are chosen.

Per-layer knobs (:class:`PerLayer`) take one value, a ramp ``first:last`` or a list of points
over depth. Everything is drawn from ``numpy`` generators seeded by ``seed``: the same
:class:`SynthConfig` always gives the same trace. The defaults are calibrated against the real
FLAME-MoE-290M rows (``docs/synthetic-traces.md``). Vectorised over positions and sequences:
64 sequences x 2048 steps x 8 layers take a few seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from sim.errors import UserError
from sim.limits import INT64_MAX, MAX_LAYERS, MAX_TRACE_ENTRIES, check_count
from sim.ranges import MAX_INDEX
from sim.trace.routing import RoutingTrace, TraceMeta

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class PerLayer:
    """A knob value per MoE layer: one constant, a linear ramp first->last, or a profile.

    ``spec`` is the textual form used on the command line and in provenance: ``"0.5"``
    (every layer), ``"0.2:1.0"`` (ramp from the first to the last layer) or ``"0.1,0.2,0.3"``
    (points spread evenly over depth, interpolated; one per layer when the counts match).
    """

    spec: str

    @classmethod
    def of(cls, value: float | str | PerLayer, what: str = "knob") -> PerLayer:
        if isinstance(value, PerLayer):
            return value
        knob = cls(str(value).strip())
        knob._parts(what)  # validate now, not at generation time
        return knob

    def _parts(self, what: str) -> tuple[str, list[float]]:
        text = self.spec
        kind, sep = ("ramp", ":") if ":" in text else ("list", ",")
        try:
            values = [float(p) for p in text.split(sep)]
        except ValueError:
            raise UserError(
                f"{what}: expected a number, 'first:last' or 'v1,v2,...', got {text!r}"
            ) from None
        if kind == "ramp" and len(values) != 2:
            raise UserError(f"{what}: expected a ramp 'first:last', got {text!r}")
        if not all(np.isfinite(values)):
            raise UserError(f"{what}: expected finite numbers, got {text!r}")
        return kind, values

    def resolve(self, num_layers: int, what: str = "knob") -> np.ndarray:
        """``[num_layers]`` float64 values: the given points spread evenly from the first to the
        last layer and interpolated linearly (n points for n layers are taken as they are)."""
        _, values = self._parts(what)
        if len(values) == 1:
            return np.full(num_layers, values[0])
        points = np.linspace(0.0, 1.0, len(values))
        depth = np.linspace(0.0, 1.0, num_layers) if num_layers > 1 else np.zeros(1)
        return np.interp(depth, points, values)

    def __str__(self) -> str:
        return self.spec


# Calibrated against the real FLAME-MoE-290M rows, layers 2..9 (docs/synthetic-traces.md).
_DEFAULT_SKEW = "0"
_DEFAULT_LOCALITY = "0.5"
_DEFAULT_LAYER_CORR = "0.30,0.40,0.73,0.84,0.89,0.95,0.99,0.99"
_DEFAULT_AFFINITY = "0.3:0.6"
_DEFAULT_TOKEN = "1.33,2.60,3.16,4.12,8.66,23.14,62.85,51.78"
_DEFAULT_CONTEXT = "0.29,0.40,0.53,1.10,1.88,4.24,9.12,5.99"
_DEFAULT_TOPIC = "0.18,0.75,0.94,1.35,2.88,7.38,19.69,20.26"
_DEFAULT_SHARPNESS = "0.42,1.13,1.36,1.48,1.56,1.72,1.77,1.92"


CALIBRATED_LAYERS = 8  # the defaults' per-layer profiles: FLAME-MoE-290M's MoE layers 2..9
_CALIBRATED = {
    "layer_correlation": _DEFAULT_LAYER_CORR,
    "token_weight": _DEFAULT_TOKEN,
    "context_weight": _DEFAULT_CONTEXT,
    "topic_weight": _DEFAULT_TOPIC,
    "sharpness": _DEFAULT_SHARPNESS,
}


def calibration_warnings(cfg: SynthConfig) -> list[str]:
    """A warning when the default per-layer profiles, fitted on 8 layers, are stretched (or
    squeezed) over another number of layers: the trace is then not calibrated for its depth."""
    layers = len(cfg.layer_ids)
    stretched = [name for name, spec in _CALIBRATED.items() if str(getattr(cfg, name)) == spec]
    if layers == CALIBRATED_LAYERS or not stretched:
        return []
    return [
        f"warning: the default per-layer knobs ({', '.join(stretched)}) were calibrated on "
        f"FLAME-MoE-290M's {CALIBRATED_LAYERS} MoE layers; over {layers} layers their "
        f"{CALIBRATED_LAYERS} points are {'stretched' if layers > CALIBRATED_LAYERS else 'squeezed'} "
        "over depth by interpolation, so this trace is not calibrated against real routing at "
        "this depth (docs/synthetic-traces.md)"
    ]


@dataclass(frozen=True)
class SynthConfig:
    """Every setting of the generator; recorded in the trace's provenance.

    Shape: ``num_seqs`` sequences of ``seq_len`` decode steps, MoE layers ``layer_ids``,
    top-``topk`` of ``num_experts`` experts, token ids in ``[0, vocab)``.

    Knobs (per layer, :class:`PerLayer`, unless noted):
      zipf_exponent      (scalar) token-id frequency ~ 1 / rank**s.
      popularity_skew    (a) std of a fixed per-expert logit bias: higher -> more skewed
                         expert popularity (lower entropy, higher Gini). Real: ~0.
      balance            share of each expert's mean logit removed, in [0, 1]: 1 cancels the
                         popularity that frequent tokens would otherwise create.
      temporal_locality  (b) fading-memory coefficient of the context, in [0, 1]: higher ->
                         the experts of consecutive steps of a sequence overlap more, longer.
      context_weight     (b) weight of the context in the hidden vector (noise has weight 1).
      topic_weight       (b) weight of a per-sequence topic, an AR(1) process along positions
                         with coefficient ``topic_memory`` (scalar, close to 1): overlap that
                         lasts tens of steps, as in one document.
      layer_correlation  (c) share of the hidden state carried to the next layer, in [0, 1]
                         (the first layer's value is unused): higher -> more mutual
                         information between consecutive layers' experts.
      router_affinity    (c) share of a router row inherited from the previous layer, [0, 1].
      token_weight       (d) weight of the token-id vector: higher -> two positions with the
                         same token id share more experts.
      sharpness          softmax inverse temperature: shapes the scores only.
      hidden_dim         (scalar) size of the hidden vector: smaller -> coarser, more
                         correlated routing.
    """

    num_seqs: int = 32
    seq_len: int = 2048
    layer_ids: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 9)
    num_experts: int = 64
    topk: int = 6
    vocab: int = 50277
    hidden_dim: int = 12
    seed: int = 0
    zipf_exponent: float = 1.05
    popularity_skew: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_SKEW))
    temporal_locality: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_LOCALITY))
    layer_correlation: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_LAYER_CORR))
    balance: PerLayer = field(default_factory=lambda: PerLayer("1"))
    router_affinity: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_AFFINITY))
    token_weight: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_TOKEN))
    context_weight: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_CONTEXT))
    topic_weight: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_TOPIC))
    topic_memory: float = 0.98
    sharpness: PerLayer = field(default_factory=lambda: PerLayer(_DEFAULT_SHARPNESS))

    def settings(self) -> dict[str, object]:
        """JSON-ready view (knobs as their textual specs)."""
        out = asdict(self)
        for name in _PER_LAYER_KNOBS:
            out[name] = str(getattr(self, name))
        out["layer_ids"] = list(self.layer_ids)
        out["generator_version"] = GENERATOR_VERSION
        return out

    def describe(self) -> str:
        """Provenance line: the generator and all of its settings."""
        return "synthetic (sim.trace.synth): " + json.dumps(self.settings(), sort_keys=True)


_PER_LAYER_KNOBS = (
    "popularity_skew",
    "temporal_locality",
    "layer_correlation",
    "router_affinity",
    "balance",
    "token_weight",
    "context_weight",
    "topic_weight",
    "sharpness",
)


def validate(cfg: SynthConfig) -> dict[str, np.ndarray]:
    """Check the settings (one-line UserError) and resolve the per-layer knobs."""
    for name in ("num_seqs", "seq_len", "num_experts", "topk", "vocab", "hidden_dim"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value <= 0:
            raise UserError(f"synth {name}: expected a positive integer, got {value!r}")
    if not cfg.layer_ids:
        raise UserError("synth layers: expected at least one layer id, got none")
    if cfg.topk > cfg.num_experts:
        raise UserError(f"synth topk: expected at most {cfg.num_experts} (experts), got {cfg.topk}")
    if cfg.num_experts > np.iinfo(np.int16).max:
        raise UserError(f"synth experts: expected at most 32767, got {cfg.num_experts}")
    if not 0 <= cfg.seed <= INT64_MAX:
        raise UserError(f"synth seed: expected an integer in 0..{INT64_MAX}, got {cfg.seed}")
    if not np.isfinite(cfg.zipf_exponent) or not 0 <= cfg.zipf_exponent <= 100:
        raise UserError(
            f"synth zipf exponent: expected a number in [0, 100], got {cfg.zipf_exponent}"
        )
    check_synth_size(cfg)
    num_layers = len(cfg.layer_ids)
    knobs = {
        name: PerLayer.of(getattr(cfg, name), name).resolve(num_layers, f"synth {name}")
        for name in _PER_LAYER_KNOBS
    }
    for name in ("temporal_locality", "layer_correlation", "router_affinity", "balance"):
        if np.any((knobs[name] < 0) | (knobs[name] > 1)):
            raise UserError(f"synth {name}: expected values in [0, 1], got {knobs[name].tolist()}")
    if not 0.0 <= cfg.topic_memory <= 1.0:
        raise UserError(f"synth topic_memory: expected a number in [0, 1], got {cfg.topic_memory}")
    for name in ("popularity_skew", "token_weight", "context_weight", "topic_weight", "sharpness"):
        if np.any(knobs[name] < 0) or not np.all(knobs[name] <= 1e6):
            raise UserError(
                f"synth {name}: expected values in [0, 1e6], got {knobs[name].tolist()}"
            )
    return knobs


def check_synth_size(cfg: SynthConfig) -> None:
    """The sizes the settings declare, counted before anything is allocated: routing entries
    (sequences x steps x layers x k), router logits (sequences x steps x experts, per layer),
    the token embedding (vocab x hidden_dim), each against its limit."""
    layers = len(cfg.layer_ids)
    check_count(layers, MAX_LAYERS, "synth layers", "layers")
    if max(cfg.layer_ids) > MAX_INDEX or min(cfg.layer_ids) < 0:
        raise UserError(
            f"synth layers: expected ids in 0..{MAX_INDEX}, got {list(cfg.layer_ids)[:5]}"
        )
    hint = "generate fewer sequences or steps (trace synth --num-shards/--seq-len)"
    where = "synth"
    cells = cfg.num_seqs * cfg.seq_len
    check_count(cells * layers * cfg.topk, MAX_TRACE_ENTRIES, where, "routing entries", hint)
    check_count(cells * cfg.num_experts, MAX_TRACE_ENTRIES, where, "router logits per layer", hint)
    check_count(cfg.hidden_dim, 4096, "synth hidden_dim", "dimensions")
    check_count(cfg.vocab * cfg.hidden_dim, MAX_TRACE_ENTRIES, where, "token-embedding values")


def zipf_tokens(
    rng: np.random.Generator, vocab: int, exponent: float, shape: tuple[int, ...]
) -> np.ndarray:
    """Token ids with P(id) ~ 1 / (id + 1) ** exponent (id 0 is the most frequent)."""
    weights = np.arange(1, vocab + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ids = np.searchsorted(cdf, rng.random(int(np.prod(shape))), side="right")
    return np.minimum(ids, vocab - 1).astype(np.int64).reshape(shape)


def ar1(innovations: np.ndarray, rho: float) -> np.ndarray:
    """Stationary unit-variance AR(1) along axis 0: x_t = rho x_{t-1} + sqrt(1-rho^2) e_t."""
    drive = innovations * np.sqrt(max(0.0, 1.0 - rho * rho))
    drive[0] = innovations[0]
    from scipy.signal import lfilter  # ~1.5 s to import: not for every CLI start

    return lfilter([1.0], [1.0, -rho], drive, axis=0).astype(np.float32)


def generate(
    cfg: SynthConfig,
    *,
    model: str = "synthetic",
    runid: int | str = "synth",
    epoch: int | str = 0,
    micro_batch_size: int | None = None,
) -> RoutingTrace:
    """The synthetic trace for ``cfg``: ``[seq_len, layers, num_seqs, topk]``, Megatron layout.

    ``model``/``runid``/``epoch``/``micro_batch_size`` only label the trace (and the dump paths
    it is written to); they do not change the routing.
    """
    knobs = validate(cfg)
    steps, seqs, dim, experts = cfg.seq_len, cfg.num_seqs, cfg.hidden_dim, cfg.num_experts
    num_layers = len(cfg.layer_ids)
    seeds = np.random.SeedSequence(cfg.seed).spawn(6)
    token_ss, emb_ss, router_ss, ctx_ss, noise_ss, topic_ss = seeds

    tokens = zipf_tokens(
        np.random.default_rng(token_ss), cfg.vocab, cfg.zipf_exponent, (steps, seqs)
    )
    uniq, inverse = np.unique(tokens, return_inverse=True)
    inverse = inverse.reshape(steps, seqs)
    emb_rng = np.random.default_rng(emb_ss)
    router_rng = np.random.default_rng(router_ss)
    routers = _routers(router_rng, num_layers, experts, dim, knobs["router_affinity"])
    bias_dirs = router_rng.standard_normal((num_layers, experts))
    ctx_rng = np.random.default_rng(ctx_ss)
    noise_rng = np.random.default_rng(noise_ss)
    topic_rng = np.random.default_rng(topic_ss)

    out_experts = np.empty((steps, num_layers, seqs, cfg.topk), dtype=np.int16)
    out_scores = np.empty((steps, num_layers, seqs, cfg.topk), dtype=np.float32)
    table = context = noise = topic = None
    for li in range(num_layers):
        keep = float(knobs["layer_correlation"][li])
        # Rows of a seeded [vocab, dim] table: an id's vector does not depend on the others drawn.
        table = _carry(
            table, emb_rng.standard_normal((cfg.vocab, dim), dtype=np.float32)[uniq], keep
        )
        noise = _carry(noise, noise_rng.standard_normal((steps, seqs, dim), dtype=np.float32), keep)
        # The context is a fading memory of the previous tokens' vectors at this layer:
        # ctx[t] = rho ctx[t-1] + sqrt(1 - rho^2) emb[token_{t-1}].
        innovations = np.empty((steps, seqs, dim), dtype=np.float32)
        innovations[0] = ctx_rng.standard_normal((seqs, dim), dtype=np.float32)
        innovations[1:] = table[inverse[:-1]]
        context = _carry(context, ar1(innovations, knobs["temporal_locality"][li]), keep)
        topic_innovations = topic_rng.standard_normal((steps, seqs, dim), dtype=np.float32)
        topic = _carry(topic, ar1(topic_innovations, cfg.topic_memory), keep)
        a, b = knobs["token_weight"][li], knobs["context_weight"][li]
        w = knobs["topic_weight"][li]
        hidden = a * table[inverse] + b * context + w * topic + noise
        norm = np.sqrt(dim * (a * a + b * b + w * w + 1.0))
        logits = (hidden @ routers[li].T) / norm
        # Load balancing (what a router trained with a balance loss learns): remove the share
        # `balance` of each expert's mean logit, so frequent tokens do not crown fixed experts.
        logits -= knobs["balance"][li] * logits.mean(axis=(0, 1))
        logits += knobs["popularity_skew"][li] * bias_dirs[li]
        chosen, probs = _topk_softmax(logits, cfg.topk, knobs["sharpness"][li])
        out_experts[:, li] = chosen
        out_scores[:, li] = probs

    return RoutingTrace(
        experts=out_experts,
        scores=out_scores,
        tokens=tokens,
        num_experts=experts,
        layer_ids=tuple(cfg.layer_ids),
        positions=tuple(range(steps)),
        meta=TraceMeta(
            model=model,
            runid=runid,
            epoch=epoch,
            layout="megatron",
            source=f"sim.trace.synth seed {cfg.seed}",
            provenance=cfg.describe(),
            synthetic=True,
            seq_len=steps,
            micro_batch_size=micro_batch_size,
        ),
    )


def _carry(previous: np.ndarray | None, fresh: np.ndarray, keep: float) -> np.ndarray:
    """Residual-stream drift across layers: ``keep * previous + sqrt(1 - keep^2) * fresh``."""
    if previous is None:
        return fresh
    return keep * previous + np.float32(np.sqrt(1.0 - keep * keep)) * fresh


def _routers(
    rng: np.random.Generator, num_layers: int, experts: int, dim: int, affinity: np.ndarray
) -> np.ndarray:
    """``[layers, experts, dim]`` router matrices; expert ``perm_l[e]`` of layer ``l`` inherits a
    share ``affinity[l]`` of expert ``e``'s direction at layer ``l - 1`` (ids are shuffled, so
    the affinity shows as co-activation of *different* ids, as in real MoEs)."""
    fresh = rng.standard_normal((num_layers, experts, dim), dtype=np.float32)
    perms = np.stack([rng.permutation(experts) for _ in range(num_layers)])
    routers = np.empty_like(fresh)
    routers[0] = fresh[0]
    for li in range(1, num_layers):
        g = float(affinity[li])
        routers[li][perms[li]] = g * routers[li - 1] + np.sqrt(1.0 - g * g) * fresh[li]
    # Equal row norms: no expert is favoured by geometry; popularity comes from the bias knob.
    routers *= np.sqrt(dim) / np.linalg.norm(routers, axis=2, keepdims=True)
    return routers


def _topk_softmax(logits: np.ndarray, k: int, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` experts of ``logits[..., E]`` (descending) and their softmax probabilities."""
    part = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
    part_logits = np.take_along_axis(logits, part, axis=-1)
    order = np.argsort(-part_logits, axis=-1, kind="stable")
    chosen = np.take_along_axis(part, order, axis=-1)
    scaled = sharpness * logits
    scaled -= scaled.max(axis=-1, keepdims=True)
    np.exp(scaled, out=scaled)
    scaled /= scaled.sum(axis=-1, keepdims=True)
    probs = np.take_along_axis(scaled, chosen, axis=-1)
    return chosen.astype(np.int16), probs.astype(np.float32)
