"""The ``hardware`` section's topology: GPUs, paths of links, sharing rules, checked once.

`resolve_topology` merges the preset's and the scenario's topology fields (``num_gpus``,
``parallel``, ``paths``, ``md_via_pcie``, each link's ``sharing`` and ``per_gpu``), fills the
defaults (one GPU; host DRAM over ``[pcie]``, the MD pool over ``[md_link]``) and checks what
only makes sense together; every problem is one `UserError` line naming the YAML field.
"""

from __future__ import annotations

from typing import Any

from sim.errors import UserError
from sim.hardware import HOST_LINK, MD_LINK, PEER, TIERS, Topology
from sim.scenario.schema import HardwareSection

DEFAULT_PATHS = {"host": [HOST_LINK], "md": [MD_LINK]}
VIA_PCIE = [MD_LINK, HOST_LINK]  # md_via_pcie: the MD link, then the GPU's PCIe port


def resolve_topology(
    base: HardwareSection | None, section: HardwareSection, links: dict[str, dict[str, Any]]
) -> tuple[Topology, dict[str, Any]]:
    """The topology and its resolved doc (``num_gpus``, ``parallel``, ``paths``,
    ``md_via_pcie``). ``links``: each link's merged fields; ``sharing`` and ``per_gpu`` are
    filled in here."""
    top = {
        **(base.model_dump(exclude_unset=True, exclude_none=True) if base else {}),
        **section.model_dump(exclude_unset=True, exclude_none=True),
    }
    base_paths = base.paths.model_dump(exclude_none=True) if base and base.paths else {}
    own_paths = section.paths.model_dump(exclude_none=True) if section.paths else {}
    via_pcie = bool(top.get("md_via_pcie", False))
    paths: dict[str, list[str]] = {}
    for tier in TIERS:
        given = own_paths.get(tier, base_paths.get(tier))
        if tier == "md" and via_pcie:
            if given is not None and given != VIA_PCIE:
                raise UserError(
                    f"hardware.paths.md: expected {VIA_PCIE} or nothing with md_via_pcie true, "
                    f"got {given}"
                )
            given = VIA_PCIE
        paths[tier] = list(given) if given is not None else list(DEFAULT_PATHS[tier])
    parallel = str(top.get("parallel", "replicas"))
    peer = own_paths.get(PEER, base_paths.get(PEER))
    if peer is not None:
        paths[PEER] = list(peer)
    elif parallel == "expert":
        raise UserError(
            "hardware.paths.gpu: required when hardware.parallel is expert (the link a token "
            "crosses to its expert's GPU, e.g. [nvlink] with hardware.links.nvlink: nvlink4-h100)"
        )
    _check_paths(paths, links)
    for tier in paths:
        for position, name in enumerate(paths[tier]):
            sharing = links[name].setdefault("sharing", "fifo")
            if position > 0 and sharing != "fair":
                raise UserError(
                    f"hardware.links.{name}.sharing: expected fair ({name} is link "
                    f"{position + 1} of paths.{tier} {paths[tier]}: FIFO slots only admit "
                    "transfers at a path's first link), got fifo"
                )
    own_port = set(paths["host"]) | set(paths.get(PEER, ()))  # each GPU's own by default
    for name, values in links.items():
        values.setdefault("per_gpu", name in own_port)
    topology = Topology(
        num_gpus=int(top.get("num_gpus", 1)),
        paths={tier: tuple(path) for tier, path in paths.items()},
        per_gpu=frozenset(name for name, values in links.items() if values["per_gpu"]),
        data_parallel=parallel,
    )
    doc = {
        "num_gpus": topology.num_gpus,
        "parallel": topology.data_parallel,
        "paths": {tier: list(path) for tier, path in paths.items()},
        "md_via_pcie": via_pcie,
    }
    return topology, doc


def _check_paths(paths: dict[str, list[str]], links: dict[str, dict[str, Any]]) -> None:
    """Every link a path names exists, appears once per path, and every link is on a path."""
    for tier in paths:
        for i, name in enumerate(paths[tier]):
            if name not in links:
                if [name] == DEFAULT_PATHS.get(tier) or name in (HOST_LINK, MD_LINK):
                    raise UserError(
                        f"hardware.links.{name}: required, missing (on paths.{tier}; give a "
                        "link preset name or a bandwidth)"
                    )
                raise UserError(
                    f"hardware.paths.{tier}[{i}]: expected a link of hardware.links "
                    f"({', '.join(links)}), got {name!r}"
                )
        if len(set(paths[tier])) != len(paths[tier]):
            raise UserError(f"hardware.paths.{tier}: expected each link once, got {paths[tier]}")
    used = {name for path in paths.values() for name in path}
    for name in links:
        if name not in used:
            shown = "; ".join(f"{tier} {path}" for tier, path in paths.items())
            raise UserError(
                f"hardware.links.{name}: expected only links a path uses (paths: {shown}), "
                f"got an unused link {name!r}"
            )
