"""From a validated scenario file to the engine's inputs: presets resolved, defaults filled.

`scenario_from_dict` validates (`sim.scenario.schema`), then resolves presets by deep merge
(a whole-hardware preset, then its GPU/link presets, then the scenario's own fields; a section
that names its own ``preset`` starts afresh from it), checks what only makes sense together
(cache budget vs expert size, policy names and parameters, the baseline label, trace paths) and
returns a frozen `Scenario`. Every problem is one `UserError` line naming the YAML path.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sim import opener
from sim import presets as preset_data
from sim.errors import SelectionError, UserError
from sim.hardware import (
    ComputeUnit,
    GpuConfig,
    Hardware,
    HbmConfig,
    LinkConfig,
    ModelSpec,
    Precision,
)
from sim.precision import expert_bytes_for_cache
from sim.ranges import parse_int_selection, parse_name_list
from sim.scenario.schema import (
    ROOFLINE,
    ComputeSection,
    CostsSection,
    GpuSection,
    HardwareSection,
    LinkSection,
    ModelSection,
    PolicyEntry,
    PrecisionSection,
    ScenarioSection,
    TraceSection,
    UnitDoc,
    dotted_path,
    validate_scenario_dict,
    validation_error_line,
)
from sim.scenario.topology import resolve_topology
from sim.trace.routing import RoutingTrace
from sim.units import format_exact, parse_clock
from sim.yamlio import YamlSyntaxError, parse_yaml, read_yaml

if typing.TYPE_CHECKING:
    from sim.costs.source import CostSource
    from sim.serving.spec import ServingSpec

DEFAULT_MODEL_PRESET = "flame-moe-290m"
DEFAULT_GPU_PRESET = "h100-sxm"
DEFAULT_BASELINE = "seed-split"
COSTS_TRACE = "costs"  # trace.path naming the routing of the costs section's tables


# -- the resolved scenario -----------------------------------------------------------------------
@dataclass(frozen=True)
class TraceSpec:
    """Where the routing comes from. ``kind``: ``embedded``, ``dump``, ``synthetic`` or
    ``costs`` (the routing of the scenario's cost tables)."""

    kind: str
    path: Path | None = None  # dump directory (kind "dump")
    model: str | None = None
    runid: str | None = None
    epoch: str | None = None
    layout: str | None = None
    shards: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None
    seqs: tuple[int, ...] | None = None
    batch: int | None = None  # trace.batch as written (``seqs`` holds its first N sequences)
    num_experts: int | None = None
    k: int | None = None
    synthetic: Any = None  # sim.trace.synth.SynthConfig (kind "synthetic")
    embedded: str = "embedded"  # `embedded` or `embedded:NAME` (kind "embedded")

    def to_dict(self) -> dict[str, Any]:
        """The ``trace:`` section that reproduces this spec (absolute path, selections)."""
        if self.kind == "synthetic":
            settings = dict(self.synthetic.settings())
            settings.pop("generator_version", None)
            return {"synthetic": settings, "seqs": _sel(self.seqs)}
        if self.kind == "costs":
            return {"path": COSTS_TRACE}
        return {
            "path": self.embedded if self.kind == "embedded" else str(self.path),
            "model": self.model,
            "runid": self.runid,
            "epoch": self.epoch,
            "layout": self.layout,
            "shards": ",".join(self.shards) if self.shards is not None else None,
            "layers": _sel(self.layers),
            "positions": _sel(self.positions),
            "seqs": _sel(self.seqs),
            "num_experts": self.num_experts,
            "k": self.k,
        }


def _sel(values: tuple[int, ...] | None) -> list[int] | str:
    return "all" if values is None else list(values)


@dataclass(frozen=True)
class PolicySpec:
    """One policy of the comparison: registry ``name``, unique ``label``, given ``params``."""

    name: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    resolved_params: dict[str, Any] = field(default_factory=dict)  # every default filled
    is_bound: bool = False
    where: str = "policies"  # YAML path, for errors raised when the policy is built again

    def build(self) -> Any:
        """A fresh policy object (policies keep per-run state)."""
        from sim.policies.base import make_policy

        return make_policy(self.name, self.params, f"{self.where}.params")


@dataclass(frozen=True)
class OutputSpec:
    dir: str = "results"
    timeline: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    trace: TraceSpec
    topk: list[int]
    model: ModelSpec
    hardware: Hardware
    policies: list[PolicySpec]
    baseline: str
    seed: int
    output: OutputSpec
    raw: dict[str, Any]  # the validated input document (after --set overrides)
    source: str = ""
    model_doc: dict[str, Any] = field(default_factory=dict)
    hardware_doc: dict[str, Any] = field(default_factory=dict)
    costs: CostSource | None = None  # per-expert cost tables (the `costs:` section)
    workload: ServingSpec | None = None  # None: lockstep (the trace's batch, step by step)

    @property
    def clock_hz(self) -> float | None:
        """The cost tables' clock: results are also given in cycles when it is set."""
        return None if self.costs is None else self.costs.clock_hz

    def resolved_dict(self) -> dict[str, Any]:
        """The scenario with every default filled in; it validates back to the same scenario."""
        return {
            "name": self.name,
            "description": self.description,
            "trace": self.trace.to_dict(),
            **({} if self.costs is None else {"costs": _costs_doc(self.costs)}),
            "routing": {"topk": list(self.topk)},
            "model": copy.deepcopy(self.model_doc),
            "hardware": copy.deepcopy(self.hardware_doc),
            "policies": [
                {"name": p.name, "label": p.label, "params": copy.deepcopy(p.resolved_params)}
                for p in self.policies
            ],
            "baseline": self.baseline,
            "seed": self.seed,
            **({} if self.workload is None else {"workload": self.workload.to_dict()}),
            "output": {"dir": self.output.dir, "timeline": self.output.timeline},
        }

    @property
    def serving(self) -> bool:
        """True for a serving workload (requests arrive), False for lockstep."""
        return self.workload is not None

    def policy(self, label: str) -> PolicySpec:
        return next(p for p in self.policies if p.label == label)


# -- loading -----------------------------------------------------------------------------------
def load_scenario(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Scenario:
    """Read, override (``a.b.c=value``, value parsed as YAML) and validate a scenario file."""
    file = Path(path)
    data = read_yaml(file, "a scenario YAML file")
    data = {} if data is None else data
    for item in overrides:
        key, value = parse_override(item)
        data = set_dotted(data, key, value)
    return scenario_from_dict(data, str(file), base_dir=file.parent)


def parse_override(item: str) -> tuple[str, Any]:
    """``"hardware.hbm.capacity=2 GiB"`` -> (dotted key, YAML-parsed value)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set: expected key=value like 'seed=3', got {item!r}")
    try:
        value = parse_yaml(text, f"--set {key.strip()}") if text.strip() else ""
    except YamlSyntaxError:
        value = text  # not YAML: take the text as written
    return key.strip(), value


_INDEX_RE = re.compile(r"\[(\d+)\]")


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``dotted`` (``a.b.c``, ``policies[1].params.slots`` or
    ``policies.1.params.slots``) set to ``value``; missing mappings are created."""
    if not isinstance(data, dict):
        raise UserError(
            f"{dotted}: expected the scenario to be a mapping, got {type(data).__name__}"
        )
    parts = [p for p in _INDEX_RE.sub(r".\1", dotted).split(".")]
    if not all(parts):
        raise UserError(
            f"--set: expected a dotted key like 'hardware.hbm.capacity', got {dotted!r}"
        )
    out = copy.deepcopy(data)
    node: Any = out
    loc: list[str | int] = []  # for errors, written as the schema's are: policies[1].params
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        loc.append(int(part) if isinstance(node, list) and part.isdigit() else part)
        where = dotted_path(tuple(loc))
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{where}: expected an index below {len(node)}, got {part!r}")
            if last:
                node[int(part)] = value
            else:
                if isinstance(node[int(part)], str):
                    node[int(part)] = {_shorthand_key(parts[: i + 1]): node[int(part)]}
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if isinstance(child, str):  # a shorthand ("lru", "notebook-gbps", a path)
                    child = {_shorthand_key(parts[: i + 1]): child}
                elif not isinstance(child, dict | list):
                    child = {}
                node[part] = child
                node = child
        else:
            raise UserError(f"{where}: expected a mapping to set a key in, got {node!r}")
    return out


def _shorthand_key(path: list[str]) -> str:
    """The mapping key a bare string stands for at ``path`` (as the schema's shorthands):
    ``trace: DIR`` is ``{path: DIR}``, ``policies[i]: NAME`` is ``{name: NAME}``, and a
    string anywhere else (model, hardware, gpu, links) names a ``preset``."""
    if path == ["trace"]:
        return "path"
    if len(path) == 2 and path[0] == "policies":
        return "name"
    return "preset"


def scenario_from_dict(
    data: dict[str, Any], source: str = "", *, base_dir: str | os.PathLike[str] | None = None
) -> Scenario:
    """Validate and resolve a scenario document. ``source`` names it in errors; relative trace
    paths are taken from ``base_dir`` (default: the directory of ``source``, else cwd)."""
    schema = validate_scenario_dict(data, source)
    if base_dir is None:
        base_dir = Path(source).parent if source.endswith((".yaml", ".yml")) else Path.cwd()
    try:
        return _build(schema, data, source, Path(base_dir))
    except UserError as err:
        raise UserError(f"{err} ({source})" if source else str(err)) from None


def _build(schema: ScenarioSection, data: dict[str, Any], source: str, base: Path) -> Scenario:
    model, model_doc = build_model(schema.model)
    hardware, hardware_doc = build_hardware(schema.hardware, model)
    topk = list(schema.routing.topk or [model.top_k])
    for i, k in enumerate(topk):
        if k > model.num_experts:
            raise UserError(
                f"routing.topk[{i}]: expected at most {model.num_experts} (experts), got {k}"
            )
    if len(set(topk)) != len(topk):
        raise UserError(f"routing.topk: expected distinct values, got {topk}")
    if hardware.gpu.non_expert_time is None:  # the roofline: its model dimensions, now
        from sim.roofline import layer_shape

        layer_shape(model)
    policies = build_policies(schema.policies, schema.baseline)
    check_cache_sizes(policies, hardware, model, _capacity_origin(schema.hardware))
    check_policies(policies, hardware, model)
    name = schema.name or (Path(source).stem if source else "scenario")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", name):
        raise UserError(f"name: expected letters, digits and . _ + - only, got {name!r}")
    costs = build_costs(schema.costs, base)
    workload = build_workload(schema, base, costs is not None)
    return Scenario(
        name=name,
        description=schema.description,
        trace=build_trace_spec(schema.trace, base, schema.seed, costs=costs is not None),
        topk=topk,
        model=model,
        hardware=hardware,
        policies=policies,
        baseline=schema.baseline,
        seed=schema.seed,
        output=OutputSpec(dir=schema.output.dir, timeline=schema.output.timeline),
        raw=copy.deepcopy(data),
        source=source,
        model_doc=model_doc,
        hardware_doc=hardware_doc,
        costs=costs,
        workload=workload,
    )


def build_workload(schema: ScenarioSection, base: Path, costs: bool) -> ServingSpec | None:
    """The serving workload (None: lockstep). Cost tables are per trace position and decode
    step, which a serving iteration is not: refused together."""
    from sim.serving.spec import from_section

    workload = from_section(schema.workload, base, schema.seed)
    if workload is not None and costs:
        raise UserError(
            "workload.kind: expected lockstep with a costs: section (its tables are per decode "
            "step of a fixed batch, which serving iterations are not), got serving"
        )
    return workload


# -- presets -----------------------------------------------------------------------------------
_PRESET_KIND = {
    LinkSection: "links",
    GpuSection: "gpus",
    ModelSection: "models",
    ComputeSection: "cpus",
}


def validated_preset(section_cls: type[BaseModel], kind: str, name: str, where: str) -> BaseModel:
    """A preset entry validated by the section schema it fills (units parsed)."""
    entry = preset_data.get_preset(kind, name, where)
    try:
        return section_cls.model_validate(entry)
    except ValidationError as err:
        raise validation_error_line(err, entry, f"sim/presets/{kind}.yaml: {name}") from None


def _values(section: BaseModel | None, where: str) -> dict[str, Any]:
    """A section's given fields, on top of the preset it names (if any)."""
    if section is None:
        return {}
    own = section.model_dump(exclude_unset=True, exclude_none=True)  # null = not given
    name = getattr(section, "preset", None)
    if not name:
        return own
    base = validated_preset(type(section), _PRESET_KIND[type(section)], name, f"{where}.preset")
    return {**base.model_dump(exclude_unset=True), **own}


def _merged(base: BaseModel | None, override: BaseModel | None, where: str) -> dict[str, Any]:
    """``override`` on top of ``base``; an override naming its own preset replaces ``base``."""
    if override is not None and getattr(override, "preset", None):
        return _values(override, where)
    return {**_values(base, where), **_values(override, where)}


def _doc(section_cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Values in YAML form: quantities as exact unit strings, None dropped, schema order."""
    out: dict[str, Any] = {}
    for name, info in section_cls.model_fields.items():
        if values.get(name) is None:
            continue
        unit = unit_of(info.annotation, info.metadata)
        value = values[name]
        if unit is not None and isinstance(value, float):
            value = format_exact(unit.kind, value)
        out[name] = value
    return out


def unit_of(annotation: Any, metadata: Sequence[Any] = ()) -> UnitDoc | None:
    """The UnitDoc of a field, looking inside ``X | None`` and ``Annotated``."""
    for item in (*metadata, *getattr(annotation, "__metadata__", ())):
        if isinstance(item, UnitDoc):
            return item
    for arg in typing.get_args(annotation):
        found = unit_of(arg)
        if found is not None:
            return found
    return None


# -- model -------------------------------------------------------------------------------------
def build_model(section: ModelSection | None) -> tuple[ModelSpec, dict[str, Any]]:
    """The ModelSpec (preset `flame-moe-290m` unless another is named) and its resolved doc."""
    if section is None or section.preset is None:
        base = ModelSection(preset=DEFAULT_MODEL_PRESET)
        values = {**_values(base, "model"), **(_values(section, "model") if section else {})}
    else:
        values = _values(section, "model")
    gated = bool(values.get("gated", True))
    bpp = float(values.get("bytes_per_param", 2.0))
    for key in ("num_experts", "top_k", "hidden_size", "expert_ffn_size"):
        if values.get(key) is None:
            raise UserError(f"model.{key}: required (no model preset gives it)")
    if values["top_k"] > values["num_experts"]:
        raise UserError(
            f"model.top_k: expected at most num_experts ({values['num_experts']}), "
            f"got {values['top_k']}"
        )
    derived = (3 if gated else 2) * values["hidden_size"] * values["expert_ffn_size"] * bpp
    if values.get("expert_bytes") is None:
        values["expert_bytes"] = float(derived)
    values.setdefault("name", values.get("preset") or "custom")
    values.update(gated=gated, bytes_per_param=bpp)
    values.setdefault("bytes_per_activation", 2.0)
    native = values.get("native_precision") or _NATIVE_NAMES.get(bpp, "native")
    precisions, listed = build_precisions(values.get("precisions"), native, bpp)
    values.update(native_precision=native, precisions=listed)
    spec = ModelSpec(
        name=values["name"],
        num_experts=values["num_experts"],
        top_k=values["top_k"],
        expert_bytes=values["expert_bytes"],
        hidden_size=values["hidden_size"],
        expert_ffn_size=values["expert_ffn_size"],
        bytes_per_param=bpp,
        gated=gated,
        bytes_per_activation=float(values["bytes_per_activation"]),
        **{key: values.get(key) for key in _ROOFLINE_FIELDS},
        shared_experts=int(values.get("shared_experts") or 0),
        native_precision=native,
        precisions=precisions,
    )
    return spec, _doc(ModelSection, values)


_NATIVE_NAMES = {4.0: "fp32", 2.0: "bf16", 1.0: "fp8"}  # by bytes_per_param


def build_precisions(
    given: list[Any] | None, native: str, bytes_per_param: float
) -> tuple[tuple[Precision, ...], list[Any]]:
    """The model's reduced precisions (`Precision`) and their resolved YAML form: each entry a
    format name of sim/presets/precisions.yaml or a mapping; by default every shipped format
    with fewer bits per weight than the native precision (``8 x bytes_per_param``)."""
    native_bits = 8.0 * bytes_per_param
    shipped = preset_data.presets("precisions")
    if given is None:
        entries: list[Any] = [
            name
            for name in shipped
            if name != native
            and _precision(shipped[name], name, "").bits_per_weight() < native_bits
        ]
    else:
        entries = list(given)
    out: list[Precision] = []
    resolved: list[Any] = []
    for i, entry in enumerate(entries):
        where = f"model.precisions[{i}]"
        if isinstance(entry, str):
            precision = _precision(preset_data.get_preset("precisions", entry, where), entry, where)
            resolved.append(entry)
        else:
            fields = dict(entry)
            if not fields.get("name"):
                raise UserError(f"{where}.name: required, missing")
            precision = _precision(fields, fields["name"], where)
            resolved.append(dict(fields))
        if precision.name == native:
            raise UserError(
                f"{where}: expected a name other than the native precision {native!r}, "
                f"got {precision.name!r}"
            )
        if precision.name in (p.name for p in out):
            raise UserError(f"{where}: expected distinct names, got {precision.name!r} again")
        if not precision.bits_per_weight() < native_bits:
            raise UserError(
                f"{where} ({precision.name}): expected fewer bits per weight than the native "
                f"{native} ({native_bits:g}), got {precision.bits_per_weight():g}"
            )
        out.append(precision)
    return tuple(out), resolved


def _precision(fields: dict[str, Any], name: str, where: str) -> Precision:
    """A `Precision` from a preset entry or a scenario mapping (validated by the schema)."""
    try:
        section = PrecisionSection.model_validate({**fields, "name": fields.get("name") or name})
    except ValidationError as err:
        line = str(validation_error_line(err, fields))
        raise UserError(
            f"{where}.{line}" if where else f"{line} (sim/presets/precisions.yaml: {name})"
        ) from None
    return Precision(
        name=section.name or name,
        bits=section.bits,
        group_size=section.group_size,
        scale_bits=section.scale_bits or 0.0,
        dequant_ops=section.dequant_ops or 0.0,
        source=section.source or "",
    )


# model fields passed to ModelSpec as they are (None when not given): the roofline's dimensions
_ROOFLINE_FIELDS = (
    "num_layers",
    "moe_layers",
    "attention_heads",
    "kv_heads",
    "head_dim",
    "attention_params",
    "kv_cache_dim",
    "dense_ffn_size",
    "shared_expert_ffn_size",
    "vocab_size",
)


# -- hardware ----------------------------------------------------------------------------------
def build_hardware(section: HardwareSection, model: ModelSpec) -> tuple[Hardware, dict[str, Any]]:
    """The Hardware (presets resolved, SI units) and its resolved doc."""
    base: HardwareSection | None = None
    if section.preset:
        base = validated_preset(HardwareSection, "hardware", section.preset, "hardware.preset")
    gpu_base = base.gpu if base and base.gpu else None
    if gpu_base is None and section.gpu is None:
        gpu_base = GpuSection(preset=DEFAULT_GPU_PRESET)
    gpu = _merged(gpu_base, section.gpu, "hardware.gpu")
    links = _link_values(base, section)
    top = {
        **(base.model_dump(exclude_unset=True) if base else {}),
        **section.model_dump(exclude_unset=True),
    }
    hbm = {
        **(base.hbm.model_dump(exclude_unset=True) if base and base.hbm else {}),
        **(section.hbm.model_dump(exclude_unset=True) if section.hbm else {}),
    }
    hbm_bw = hbm.get("bandwidth") or gpu.get("hbm_bandwidth") or HbmConfig().bandwidth
    md_mode = top.get("md_mode") or "fetch"
    placement = top.get("placement") or "both"
    units = {
        name: _merged(
            getattr(base, name) if base else None, getattr(section, name), f"hardware.{name}"
        )
        for name in ("md_compute", "host_compute")
    }
    md_compute = _compute(units["md_compute"], "hardware.md_compute")
    host_compute = _compute(units["host_compute"], "hardware.host_compute")
    if md_mode == "near-data" and md_compute is None:
        raise UserError("hardware.md_compute: required when hardware.md_mode is near-data")
    gpu.setdefault("non_expert_time", ROOFLINE)
    gpu.setdefault("expert_start", GpuConfig().expert_start)
    gpu.setdefault("peak_flops", GpuConfig().peak_flops)
    for link in links.values():
        link.setdefault("latency", 0.0)
        link.setdefault("channels", 1)
    topology, topology_doc = resolve_topology(base, section, links)
    copies = _copies(top.get("copies"), placement, model)
    hardware = Hardware(
        hbm=HbmConfig(capacity=0.0, bandwidth=hbm_bw),
        links={name: _link(name, values) for name, values in links.items()},
        gpu=GpuConfig(
            peak_flops=gpu["peak_flops"],
            vector_flops=gpu.get("vector_flops"),
            non_expert_time=None
            if gpu["non_expert_time"] == ROOFLINE
            else float(gpu["non_expert_time"]),
            expert_start=gpu["expert_start"],
            layer_overhead=float(gpu.get("layer_overhead") or 0.0),
        ),
        md_mode=md_mode,
        placement=placement,
        md_compute=md_compute,
        host_compute=host_compute,
        topology=topology,
        copies=copies,
    )
    # the cache budget, counted in the experts the tiers hold (their largest default copy)
    slot = expert_bytes_for_cache(hardware, model)
    capacity = _cache_bytes(hbm.get("capacity") or 0.0, slot, gpu.get("hbm_capacity"))
    hardware = dataclasses.replace(hardware, hbm=HbmConfig(capacity=capacity, bandwidth=hbm_bw))
    doc = {
        "preset": section.preset or (base.preset if base else None),
        "description": top.get("description"),
        "source": top.get("source"),
        "gpu": _doc(GpuSection, gpu),
        "hbm": {
            "capacity": format_exact("size", capacity),
            "bandwidth": format_exact("bandwidth", hbm_bw),
        },
        "links": {name: _doc(LinkSection, values) for name, values in links.items()},
        "md_mode": md_mode,
        "placement": placement,
        "md_compute": _doc(ComputeSection, units["md_compute"]) if md_compute else None,
        "host_compute": _doc(ComputeSection, units["host_compute"]) if host_compute else None,
        **topology_doc,
        "copies": {tier: list(names) for tier, names in copies.items()} or None,
    }
    return hardware, {k: v for k, v in doc.items() if v is not None}


def _copies(
    given: dict[str, str | list[str]] | None, placement: str, model: ModelSpec
) -> dict[str, tuple[str, ...]]:
    """``hardware.copies`` checked: tiers of the placement, precisions of the model."""
    if not given:
        return {}
    tiers = {"host": ("host",), "md": ("md",)}.get(placement, ("host", "md"))
    names = model.precision_names
    out = {}
    for tier, value in given.items():
        where = f"hardware.copies.{tier}"
        if tier not in tiers:
            raise UserError(
                f"{where}: expected a tier of placement {placement!r} ({', '.join(tiers)}), "
                f"got {tier!r}"
            )
        listed = [value] if isinstance(value, str) else list(value)
        if not listed:
            raise UserError(f"{where}: expected at least one precision, got none")
        for i, name in enumerate(listed):
            if name not in names:
                raise UserError(
                    f"{where}[{i}]: expected one of the model's precisions "
                    f"({', '.join(names)}), got {name!r}"
                )
            if listed.index(name) != i:
                raise UserError(f"{where}[{i}]: expected distinct precisions, got {name!r} again")
        out[tier] = tuple(listed)
    return out


def _link_values(
    base: HardwareSection | None, section: HardwareSection
) -> dict[str, dict[str, Any]]:
    """Each link's fields by name: the preset's links, then the scenario's (merged field by
    field with the preset's link of the same name; new names add links). Which links the
    paths need, and that every link is on one: `resolve_topology`."""
    base_links = (base.links or {}) if base else {}
    own_links = {k: v for k, v in (section.links or {}).items() if v is not None}  # null: not given
    links: dict[str, dict[str, Any]] = {}
    for name in (*base_links, *(n for n in own_links if n not in base_links)):
        links[name] = _merged(base_links.get(name), own_links.get(name), f"hardware.links.{name}")
    for name, values in links.items():
        if values.get("bandwidth") is None:
            raise UserError(
                f"hardware.links.{name}.bandwidth: required (give a bandwidth or a link preset)"
            )
    return links


def _link(name: str, values: dict[str, Any]) -> LinkConfig:
    return LinkConfig(
        name=name,
        bandwidth=values["bandwidth"],
        latency=values["latency"],
        channels=values["channels"],
        channel_bandwidth=values.get("channel_bandwidth"),
        sharing=values.get("sharing", "fifo"),
    )


def _compute(values: dict[str, Any], where: str) -> ComputeUnit | None:
    """The compute unit (None when the scenario gives none); both figures are required, from
    its preset or its own fields."""
    if not values:
        return None
    for key in ("memory_bandwidth", "peak_flops"):
        if values.get(key) is None:
            raise UserError(f"{where}.{key}: required, missing (give it or a CPU preset)")
    return ComputeUnit(
        memory_bandwidth=values["memory_bandwidth"],
        peak_flops=values["peak_flops"],
        sharing=values.get("sharing") or "fifo",
    )


def _cache_bytes(capacity: float | str, expert_bytes: float, gpu_hbm: float | None) -> float:
    """The expert-cache budget in bytes: 0, or at least one expert (``expert_bytes``: the
    largest default copy the tiers hold, `sim.precision.expert_bytes_for_cache`) and at most
    the GPU's HBM."""
    where = "hardware.hbm.capacity"
    if isinstance(capacity, str):  # "N experts"
        nbytes = int(capacity.split()[0]) * expert_bytes
        shown = capacity
    else:
        nbytes, shown = float(capacity), format_exact("size", float(capacity))
    if 0 < nbytes < expert_bytes:
        raise UserError(
            f"{where}: expected 0 (no cache) or at least one expert "
            f"({format_exact('size', expert_bytes)}), got {shown!r}"
        )
    if gpu_hbm is not None and nbytes > gpu_hbm:
        raise UserError(
            f"{where}: expected at most the GPU's HBM ({format_exact('size', gpu_hbm)}), "
            f"got {shown!r}"
        )
    return float(nbytes)


# -- policies ----------------------------------------------------------------------------------
def build_policies(entries: list[PolicyEntry], baseline: str) -> list[PolicySpec]:
    """Validate names and parameters through the policy registry; give each a unique label."""
    from sim.policies.base import available_policies, make_policy

    registry = available_policies()
    built: list[tuple[PolicyEntry, Any, str]] = []
    for i, entry in enumerate(entries):
        where = f"policies[{i}]"
        if entry.name not in registry:
            raise UserError(
                f"{where}.name: expected one of {', '.join(registry)}, got {entry.name!r}"
            )
        built.append((entry, make_policy(entry.name, entry.params, f"{where}.params"), where))
    labels = [e.label or e.name for e, _, _ in built]
    for i, (entry, _, _) in enumerate(built):
        if entry.label is None and labels.count(labels[i]) > 1 and entry.params:
            given = ",".join(f"{k}={v}" for k, v in sorted(entry.params.items()))
            labels[i] = f"{entry.name}({given})"
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            raise UserError(
                f"policies[{i}].label: expected a label unique among the policies, got {label!r} "
                f"(also policies[{labels.index(label)}]); set label:"
            )
    specs = [
        PolicySpec(
            name=entry.name,
            label=label,
            params=dict(entry.params),
            resolved_params=_plain(dataclasses.asdict(policy.params)),
            is_bound=bool(getattr(policy, "is_bound", False)),
            where=where,
        )
        for (entry, policy, where), label in zip(built, labels)
    ]
    if baseline not in labels:
        if baseline != DEFAULT_BASELINE or DEFAULT_BASELINE not in registry:
            raise UserError(
                f"baseline: expected one of the policy labels ({', '.join(labels)}), "
                f"got {baseline!r}"
            )
        policy = make_policy(DEFAULT_BASELINE, {}, "baseline")
        specs.insert(
            0,
            PolicySpec(
                name=DEFAULT_BASELINE,
                label=DEFAULT_BASELINE,
                resolved_params=_plain(dataclasses.asdict(policy.params)),
                where="baseline",
            ),
        )
    return specs


def check_cache_sizes(
    policies: list[PolicySpec], hardware: Hardware, model: ModelSpec, origin: str
) -> None:
    """A policy's own cache size (``slots``/``capacity_bytes``) must fit the HBM budget: said
    now, naming the policy's field and the one to change, not when its run starts."""
    expert_bytes = expert_bytes_for_cache(hardware, model)
    available = int(hardware.hbm.capacity // expert_bytes)
    for spec in policies:
        slots = spec.resolved_params.get("slots")
        nbytes = spec.resolved_params.get("capacity_bytes")
        if slots is not None:
            field_name, wanted = "slots", slots
        elif nbytes is not None:
            field_name, wanted = "capacity_bytes", nbytes // expert_bytes
        else:
            continue
        if wanted > available:
            raise UserError(
                f"{spec.where}.params.{field_name} ({spec.label}): expected at most {available} "
                f"experts (hardware.hbm.capacity is "
                f"{format_exact('size', hardware.hbm.capacity)}, {origin}; set "
                f"hardware.hbm.capacity), got {int(wanted)}"
            )


def check_policies(policies: list[PolicySpec], hardware: Hardware, model: ModelSpec) -> None:
    """Policies that depend on the hardware and model (a precision the tiers must hold) say
    so now (their ``check(hardware, model, where)``), naming the field."""
    for spec in policies:
        policy = spec.build()
        check = getattr(type(policy), "check", None)
        if check is not None:
            check(policy, hardware, model, f"{spec.where}.params")


def _capacity_origin(section: HardwareSection) -> str:
    """Where hardware.hbm.capacity came from, for the error that asks to change it."""
    if section.hbm is not None and "capacity" in section.hbm.model_fields_set:
        return "as the scenario sets it"
    if section.preset:
        return f"from preset {section.preset}"
    return "the default"


def _plain(value: Any) -> Any:
    """YAML/JSON-ready copy: tuples as lists, other objects as their string form."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# -- trace -------------------------------------------------------------------------------------
def build_trace_spec(
    section: TraceSection, base: Path, seed: int, *, costs: bool = False
) -> TraceSpec:
    """Selections parsed, the dump path checked (it must exist: no run starts on a typo).
    With cost tables (``costs``) the routing is theirs: ``trace`` must be absent or ``costs``."""
    if costs or section.path == COSTS_TRACE:
        return _costs_trace_spec(section, costs)
    seqs = _tuple(parse_int_selection(section.seqs, "trace.seqs"))
    batch = section.batch
    if batch is not None:  # the first N sequences: the batch-size knob of sweeps
        if seqs is not None:
            raise UserError("trace.batch: expected either trace.seqs or trace.batch, got both")
        seqs = tuple(range(batch))
    if section.synthetic is not None:
        return TraceSpec(
            kind="synthetic",
            synthetic=_synth_config(section.synthetic, seed),
            seqs=seqs,
            batch=batch,
        )
    common = dict(
        model=section.model,
        runid=None if section.runid is None else str(section.runid),
        epoch=None if section.epoch is None else str(section.epoch),
        layout=section.layout,
        shards=_tuple(parse_name_list(section.shards, "trace.shards")),
        layers=_tuple(parse_int_selection(section.layers, "trace.layers")),
        positions=_tuple(parse_int_selection(section.positions, "trace.positions")),
        seqs=seqs,
        batch=batch,
        num_experts=section.num_experts,
        k=section.k,
    )
    if section.path == "embedded" or section.path.startswith("embedded:"):
        from sim.trace.open import embedded_root

        embedded_root(section.path)  # UserError now, before any run, if it is not shipped
        return TraceSpec(kind="embedded", embedded=section.path, **common)
    hint = "; set it to your FLAME-MoE dump (the one holding samples/ and actives/)"
    path = _existing_dir(base, section.path, "trace.path", "trace directory", hint)
    return TraceSpec(kind="dump", path=path, **common)


def _existing_dir(base: Path, value: str, field: str, what_dir: str, hint: str = "") -> Path:
    """``value`` (``~`` expanded) resolved against ``base``; a UserError naming ``field``
    unless it is a directory."""
    path = base / os.path.expanduser(value)
    kind = opener.describe(path)  # a symlink loop too: never Path.resolve's RuntimeError
    if kind != "a directory":
        shown = os.path.abspath(path)
        raise UserError(
            f"{field}: expected an existing {what_dir}, got {value!r} ({shown}: {kind}){hint}"
        )
    return path.resolve()


def _costs_trace_spec(section: TraceSection, costs: bool) -> TraceSpec:
    """``trace: costs`` (or no trace section) with a costs section; anything else is an error."""
    if not costs:
        raise UserError(
            f"trace.path: expected a costs: section when the trace is {COSTS_TRACE!r}, got none"
        )
    given = {k: v for k, v in section.model_dump(exclude_unset=True).items() if v is not None}
    if given.get("path", COSTS_TRACE) != COSTS_TRACE:
        raise UserError(
            f"trace.path: expected {COSTS_TRACE!r} or no trace section with a costs: section "
            f"(the tables give the routing), got {given['path']!r}"
        )
    given.pop("path", None)
    if given:
        key = next(iter(given))
        raise UserError(
            f"trace.{key}: expected nothing with trace {COSTS_TRACE!r} (the tables give the "
            f"routing), got {given[key]!r}"
        )
    return TraceSpec(kind="costs")


def build_costs(section: CostsSection | None, base: Path) -> CostSource | None:
    """The cost-table source; its directory must exist (tables are read on first use)."""
    if section is None:
        return None
    from sim.costs.source import CostSource

    clock_hz = parse_clock(section.clock, "costs.clock")
    path = _existing_dir(base, section.path, "costs.path", "cost-table directory")
    return CostSource(path, clock_hz, kind=section.kind, num_experts=section.num_experts)


def _costs_doc(source: CostSource) -> dict[str, Any]:
    """The ``costs:`` section that reproduces ``source`` (absolute path, clock in Hz)."""
    return {
        "kind": source.kind,
        "path": str(source.path),
        "clock": source.clock_hz,
        "num_experts": source.num_experts,
    }


def _tuple(values: list[Any] | None) -> tuple[Any, ...] | None:
    return None if values is None else tuple(values)


def _synth_config(values: dict[str, Any], seed: int) -> Any:
    from sim.policies.base import build_params
    from sim.trace import synth

    values = dict(values)
    values.setdefault("seed", seed)
    if isinstance(values.get("layer_ids"), str | int):
        values["layer_ids"] = parse_int_selection(values["layer_ids"], "trace.synthetic.layer_ids")
    if isinstance(values.get("layer_ids"), list):
        values["layer_ids"] = tuple(values["layer_ids"])
    for knob in synth._PER_LAYER_KNOBS:
        if knob in values and not isinstance(values[knob], bool):
            values[knob] = synth.PerLayer.of(str(values[knob]), f"trace.synthetic.{knob}")
    cfg = build_params(synth.SynthConfig, values, "trace.synthetic")
    try:
        synth.validate(cfg)
    except UserError as err:
        raise UserError(f"trace.synthetic: {err}") from None
    return cfg


def load_scenario_trace(scenario: Scenario) -> RoutingTrace:
    """The scenario's routing, checked against its model and top-k."""
    spec = scenario.trace
    if spec.kind == "costs" and scenario.costs is not None:
        trace = _costs_trace(scenario)
    elif spec.kind == "synthetic":
        from sim.trace.synth import generate

        trace = generate(spec.synthetic, model=scenario.model.name)
    else:
        from sim.trace.open import open_trace

        try:
            trace = open_trace(
                spec.embedded if spec.kind == "embedded" else spec.path,
                layout=spec.layout,
                shards=spec.shards,
                layers=spec.layers,
                positions=spec.positions,
                model=spec.model,
                runid=spec.runid,
                epoch=spec.epoch,
                num_experts=spec.num_experts,
                k=spec.k,
            )
        except SelectionError as err:  # the loader names the selection; here it is trace.X
            raise _in_file(scenario, f"trace.{err.field}: {err.detail}") from None
    try:
        return _checked_trace(scenario, trace)
    except UserError as err:
        raise _in_file(scenario, str(err)) from None


def _in_file(scenario: Scenario, message: str) -> UserError:
    """A scenario field's error, with the scenario file named as every scenario error does."""
    return UserError(f"{message} ({scenario.source})" if scenario.source else message)


def _costs_trace(scenario: Scenario) -> RoutingTrace:
    """The routing of the cost tables (read here: malformed tables are one-line errors)."""
    assert scenario.costs is not None
    try:
        return scenario.costs.trace(scenario.model.name)
    except UserError as err:
        raise UserError(f"costs.path: {err}") from None


def _checked_trace(scenario: Scenario, trace: RoutingTrace) -> RoutingTrace:
    """The sequence selection applied; model and top-k checked against the trace."""
    spec = scenario.trace
    if spec.batch is not None and spec.batch > trace.num_seqs:
        raise UserError(
            f"trace.batch: expected at most {trace.num_seqs} (the trace's sequences), "
            f"got {spec.batch}"
        )
    if spec.seqs is not None:
        bad = [s for s in spec.seqs if s >= trace.num_seqs]
        if bad:
            raise UserError(
                f"trace.seqs: expected indices below {trace.num_seqs} (the trace's sequences), "
                f"got {bad}"
            )
        trace = trace.select(seqs=list(spec.seqs))
    if trace.num_experts != scenario.model.num_experts:
        raise UserError(
            f"model.num_experts: expected {trace.num_experts} (the trace's expert count), "
            f"got {scenario.model.num_experts}"
        )
    too_big = [k for k in scenario.topk if k > trace.k]
    if too_big:
        raise UserError(
            f"routing.topk: expected values <= {trace.k} (the trace's k), got {too_big}"
        )
    return trace
