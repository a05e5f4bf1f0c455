"""Fuzzed scenario YAML through ``moesim validate`` and ``moesim run``.

Each hypothesis example takes one of the shipped files in scenarios/ (its ``sweep:`` block
dropped, its trace pointed at a tiny synthetic dump of 2 sequences x 6 steps x 2 layers so that
a run costs milliseconds, a cost-table path made absolute), applies random mutations to the
parsed document (delete or rename keys, other types, bad units, huge/negative/zero/NaN numbers,
unicode, deep nesting, duplicated list items, extra keys) and/or to its text (YAML syntax
damage, truncation, control characters, BOM/CRLF, anchors), sometimes adds random ``--set``
overrides, and runs both commands in this process under a timeout. Every case must end in:

* exit 2 with exactly one stderr line ``moesim: error: ...``, nothing on stdout for validate,
  nothing written (no results directory, no temporary leftovers), or
* exit 0; for ``run`` a complete results directory (every CSV parses with its full header and
  at least one row, every JSON parses, the YAML parses);
* ``validate`` and ``run`` agree: a file validate rejects is rejected by run with the same line;
* never a traceback or a hang.

The same document and text mutations are applied to a dump's ``trace.yaml`` and run through
``moesim trace stats``. Counts per mutation kind and outcome are kept in ``FUZZ_COUNTS``
(``MOESIM_FUZZ_STATS=FILE`` writes them as JSON; docs/reliability.md reports a long run:
``pytest -m slow`` on this file).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_fuzz_shards import (
    EPOCH,
    MODEL,
    RUN,
    B,
    CliOutcome,
    Pristine,
    S,
    assert_one_line_error,
    record_event,
    run_cli,
    write_pristine,
)

from sim.atomic import write_json
from sim.scenario.run import RESULT_FILES
from sim.scenario.schema import MAX_REQUESTS

REPO = Path(__file__).resolve().parents[1]
SCENARIO_FILES = tuple(sorted((REPO / "scenarios").glob("*.yaml")))
FUZZ_COUNTS: Counter[str] = Counter()


# -- the base documents ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 sequences x 6 steps x layers 2-3, top-6 of 64 experts (FLAME-MoE-290M's shape)."""
    root = tmp_path_factory.mktemp("tiny") / "dump"
    argv = ["trace", "synth", "--out", str(root), "--layers", "2-3", "--num-shards", "1"]
    argv += ["--micro-batch-size", "2", "--seq-len", "6", "--experts", "64", "--topk", "6"]
    outcome = run_cli(argv)
    assert outcome.code == 0, outcome
    return root


# A serving run costs about 0.7 ms per request per policy (2 cores): the shipped serving.yaml
# (200 requests, 8 policies) takes 33 s on the embedded trace, which is where a fuzzed case whose
# `trace` key was deleted lands; that is a legitimate bounded run (the schema allows 10,000,000
# requests on purpose), so the fuzzer, not the schema, keeps its runs inside its 30 s budget.
FUZZ_REQUESTS = 12  # requests of the base documents' workloads (each prompt + output fits 6 steps)
FUZZ_MAX_REQUESTS = 100  # a mutated `requests` above this (and within the schema) is cut to it


def base_document(file: Path, tiny: Path) -> dict[str, Any]:
    """The shipped scenario made cheap to run: tiny trace, absolute cost-table path, a serving
    workload of a few short requests (its prompts and outputs fit the tiny trace's 6 steps)."""
    doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    doc.pop("sweep", None)
    if isinstance(doc.get("costs"), dict):
        doc["costs"]["path"] = str((file.parent / doc["costs"]["path"]).resolve())
    else:
        doc["trace"] = {"path": str(tiny)}
    workload = doc.get("workload")
    if isinstance(workload, dict) and workload.get("kind") == "serving":
        workload.update(requests=FUZZ_REQUESTS, warmup=2)
        workload["prompt"] = {"dist": "uniform", "low": 1, "high": 3}
        workload["output"] = {"dist": "uniform", "low": 1, "high": 3}
    return doc


def within_budget(doc: Any) -> Any:
    """``doc`` with a mutated serving ``requests`` count cut to `FUZZ_MAX_REQUESTS` when the
    schema would accept it (a million requests is a valid hour-long run, not a bug to find);
    counts the schema refuses are left for it to refuse."""
    workload = doc.get("workload") if isinstance(doc, dict) else None
    if isinstance(workload, dict):
        count = workload.get("requests")
        if type(count) is int and FUZZ_MAX_REQUESTS < count <= MAX_REQUESTS:
            workload["requests"] = FUZZ_MAX_REQUESTS
    return doc


# -- document mutations ---------------------------------------------------------------------------
Location = tuple[Any, ...]


def locations(node: Any, here: Location = ()) -> list[Location]:
    """Every key path and list index in ``node`` (depth-first)."""
    found: list[Location] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((*here, key))
            found.extend(locations(value, (*here, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.append((*here, i))
            found.extend(locations(value, (*here, i)))
    return found


def _parent(doc: Any, loc: Location) -> Any:
    for part in loc[:-1]:
        doc = doc[part]
    return doc


NUMBERS = ("0", "-1", "-0", "1", "2.5", "1e400", "-1e400", "nan", "inf", "1e-300", "0x20", "1_000")
NUMBERS += ("99999999999999999999", "3.4e38", "")
UNITS = ("GB/s", "Gbps", "Gbit/s", "GiB/s", "MB", "GiB", "B", "us", "ms", "s", "ns", "TFLOP/s")
UNITS += ("experts", "expert", "GB", "gb/s", "parsec", "%", "GB/h", "K", "", "Hz", "MHz")
NAMES = ("seed-split", "lru", "belady", "optimal", "prefetch-synthetic", "h100-sxm", "pcie5-x16")
NAMES += ("notebook-gbps", "flame-moe-290m", "embedded", "no-such-thing", "", " ", "LRU")
TEXTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), max_codepoint=0x1F64F), max_size=12
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXTS,
    st.builds(
        lambda n, sep, u: f"{n}{sep}{u}",
        st.sampled_from(NUMBERS),
        st.sampled_from(["", " ", "  "]),
        st.sampled_from(UNITS),
    ),
    st.sampled_from(NAMES),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXTS, inner, max_size=3)),
    max_leaves=8,
)


@dataclass(frozen=True)
class DocEdit:
    """One edit of the parsed document at the location picked by ``pick`` (a fraction)."""

    op: str
    pick: float
    value: Any = None

    def apply(self, doc: Any) -> Any:
        locs = locations(doc)
        if not locs or not isinstance(doc, dict):
            return doc
        loc = locs[int(self.pick * len(locs)) % len(locs)]
        parent, last = _parent(doc, loc), loc[-1]
        current = parent[last]
        if self.op == "delete":
            del parent[last]
        elif self.op == "rename" and isinstance(parent, dict):
            parent[_renamed(last, self.value)] = parent.pop(last)
        elif self.op == "replace":
            parent[last] = self.value
        elif self.op == "scale":
            parent[last] = _scaled(current, self.value)
        elif self.op == "insert" and isinstance(current, dict):
            current[str(self.value)] = current.get("x", 1)
        elif self.op == "wrap":
            parent[last] = [current] if self.value else {"value": current}
        elif self.op == "duplicate" and isinstance(parent, list):
            parent.append(current)
        elif self.op == "nest":
            for _ in range(int(self.value)):
                current = [current]
            parent[last] = current
        return doc


def _renamed(key: Any, how: Any) -> Any:
    text = str(key)
    if not isinstance(how, str):
        return f"{text}{how!r}"
    return {
        "upper": text.upper(),
        "typo": text[:-1] if len(text) > 1 else text + "x",
        "space": f" {text}",
        "int": 7,
    }.get(how, f"{text}{how}")


def _scaled(current: Any, factor: str) -> Any:
    """Multiply the number in ``current`` (a number or ``'32 GB/s'``) by ``factor``."""
    if isinstance(current, bool):
        return not current
    if isinstance(current, int | float):
        return current * float(factor)
    if isinstance(current, str):
        head, _, unit = current.strip().partition(" ")
        try:
            number = float(head)
        except ValueError:
            return current
        return f"{number * float(factor)!r} {unit}".strip()
    return current


picks = st.floats(0, 1, exclude_max=True)
doc_edits = st.one_of(
    st.builds(DocEdit, st.just("delete"), picks),
    st.builds(
        DocEdit, st.just("rename"), picks, st.sampled_from(["upper", "typo", "space", "int", "_x"])
    ),
    st.builds(DocEdit, st.just("replace"), picks, values),
    st.builds(
        DocEdit,
        st.just("scale"),
        picks,
        st.sampled_from(["0", "-1", "1e30", "1e-30", "nan", "inf"]),
    ),
    st.builds(DocEdit, st.just("insert"), picks, TEXTS),
    st.builds(DocEdit, st.just("wrap"), picks, st.booleans()),
    st.builds(DocEdit, st.just("duplicate"), picks),
    st.builds(DocEdit, st.just("nest"), picks, st.integers(1, 40)),
)


# -- text mutations -------------------------------------------------------------------------------
YAML_NOISE = ":-[]{}#&*!|>'\"%@`,? \t\n\\\x00\x7f\u2028\ufeff"


@dataclass(frozen=True)
class TextEdit:
    op: str
    pick: float
    text: str = ""

    def apply(self, text: str) -> str:
        at = int(self.pick * len(text)) if text else 0
        if self.op == "insert":
            return text[:at] + self.text + text[at:]
        if self.op == "delete":
            return text[:at] + text[at + 1 + len(self.text) :]
        if self.op == "truncate":
            return text[:at]
        if self.op == "swap-lines":
            lines = text.splitlines()
            if len(lines) > 1:
                i = at % (len(lines) - 1)
                lines[i], lines[i + 1] = lines[i + 1], lines[i]
            return "\n".join(lines) + "\n"
        if self.op == "indent":
            lines = text.splitlines()
            if lines:
                i = at % len(lines)
                lines[i] = " " + lines[i]
            return "\n".join(lines) + "\n"
        if self.op == "crlf":
            return text.replace("\n", "\r\n")
        if self.op == "bom":
            return "\ufeff" + text
        if self.op == "anchor":  # an alias to a mapping used where a scalar is expected
            return text.replace("seed: ", "seed: &s ", 1) + "\ndescription: *s\n"
        return text


text_edits = st.builds(
    TextEdit,
    op=st.sampled_from(
        ["insert", "delete", "truncate", "swap-lines", "indent", "crlf", "bom", "anchor"]
    ),
    pick=st.floats(0, 1, exclude_max=True),
    text=st.text(alphabet=st.sampled_from(YAML_NOISE), max_size=4),
)

override_keys = st.one_of(
    st.sampled_from(
        [
            "seed",
            "hardware.hbm.capacity",
            "hardware.links.pcie.bandwidth",
            "hardware.links.md_link",
            "routing.topk",
            "policies[0].params.slots",
            "policies[9].name",
            "policies.0",
            "trace.positions",
            "model.expert_bytes",
            "a..b",
            "",
            "[0]",
            "hardware.gpu.peak_flops",
        ]
    ),
    TEXTS,
)
overrides = st.lists(
    st.builds(
        lambda key, value, eq: f"{key}{eq}{value}",
        override_keys,
        st.one_of(st.sampled_from(NUMBERS), st.sampled_from(UNITS), TEXTS, st.just("[1, 2")),
        st.sampled_from(["=", "=", ""]),
    ),
    max_size=2,
)


@dataclass(frozen=True)
class Case:
    file: Path
    doc_edits: tuple[DocEdit, ...]
    text_edits: tuple[TextEdit, ...]
    sets: tuple[str, ...]

    def label(self) -> str:
        kinds = [e.op for e in self.doc_edits] + [f"text-{e.op}" for e in self.text_edits]
        kinds += ["set"] if self.sets else []
        return "+".join(sorted(set(kinds))) or "none"


cases = st.builds(
    Case,
    file=st.sampled_from(SCENARIO_FILES),
    doc_edits=st.lists(doc_edits, max_size=3).map(tuple),
    text_edits=st.lists(text_edits, max_size=2).map(tuple),
    sets=overrides.map(tuple),
)


# -- checks ---------------------------------------------------------------------------------------
def assert_complete_results(out: Path) -> None:
    """Every result file is complete: CSVs with their full header and rows, JSON and YAML parse."""
    for name in RESULT_FILES:
        assert (out / name).is_file(), f"missing {name}"
    for path in sorted(out.iterdir()):
        assert not path.name.startswith("."), f"temporary file left: {path.name}"
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            rows = list(csv.reader(text.splitlines()))
            assert len(rows) >= 2, f"{path.name}: no rows"
            assert all(len(r) == len(rows[0]) for r in rows), f"{path.name}: ragged rows"
            assert text.endswith("\n")
        elif path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".yaml":
            yaml.safe_load(text)


def _message(outcome: CliOutcome) -> str:
    """The error line without its ``moesim [COMMAND]: error:`` prefix."""
    return outcome.err_lines[0].partition("error: ")[2]


def write_case(case: Case, tiny: Path, path: Path) -> None:
    doc = base_document(case.file, tiny)
    for edit in case.doc_edits:
        doc = edit.apply(doc)
    text = yaml.safe_dump(within_budget(doc), sort_keys=False, allow_unicode=True)
    for t_edit in case.text_edits:
        text = t_edit.apply(text)
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))


# Tracebacks already reported and not yet fixed: counted, not failed, in the random cases.
# Empty: J8-J10 (huge selections, huge channel counts, explicit nulls) are fixed and tested in
# test_odd_overrides.
KNOWN_TRACEBACKS: dict[str, tuple[type[BaseException], str]] = {}


def known_traceback(err: BaseException) -> str | None:
    for bug, (kind, text) in KNOWN_TRACEBACKS.items():
        if isinstance(err, kind) and text in str(err):
            return bug
    return None


def check_case(case: Case, tiny: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="fuzz-scenario-"))
    cwd = Path.cwd()
    try:
        os.chdir(work)  # a default output.dir would land here: it must stay empty
        scenario = work / "s.yaml"
        write_case(case, tiny, scenario)
        sets = [arg for item in case.sets for arg in ("--set", item)]
        out = work / "results-out"
        try:
            checked = run_cli(["validate", str(scenario), *sets])
            ran = run_cli(["run", str(scenario), "--out", str(out), "--quiet", *sets])
        except (OverflowError, ValueError, TypeError) as err:
            known = known_traceback(err)
            if known is None:
                raise
            FUZZ_COUNTS[f"known bug {known} (traceback)"] += 1
            record_event(f"known bug {known}")
            return
        outcome_kind = f"validate {checked.code}, run {ran.code}"
        FUZZ_COUNTS[f"{case.label()}: {outcome_kind}"] += 1
        FUZZ_COUNTS[outcome_kind] += 1
        record_event(outcome_kind)
        for outcome in (checked, ran):
            assert "Traceback" not in outcome.err, outcome.err
            assert outcome.code in (0, 2), outcome
        if checked.code == 2:
            line = assert_one_line_error(checked)
            assert ran.code == 2, f"run accepted what validate rejected: {line}"
        if ran.code == 2:
            assert_one_line_error(ran)
            if checked.code == 2:
                assert _message(ran) == _message(checked)
            assert not out.exists(), "results written for a rejected scenario"
        else:
            assert_complete_results(out)
        leftovers = sorted(p.name for p in work.iterdir() if p.name not in ("s.yaml", out.name))
        assert leftovers == [], f"files left behind: {leftovers}"
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,
    "phases": [Phase.explicit, Phase.generate, Phase.shrink],
}


@settings(max_examples=200, **FUZZ_SETTINGS)
@given(case=cases)
def test_fuzzed_scenarios(tiny_dump: Path, case: Case) -> None:
    check_case(case, tiny_dump)


@pytest.mark.slow
@settings(max_examples=3000, **FUZZ_SETTINGS)
@given(case=cases)
def test_fuzzed_scenarios_long(tiny_dump: Path, case: Case) -> None:
    check_case(case, tiny_dump)


# Base documents refused on the tiny trace: mixtral-synth's model has 8 experts, the trace 64 (its
# own synthetic trace is not kept: a fuzzed seq_len would make runs of any length).
REFUSED_BASES = {"mixtral-synth.yaml"}


def test_every_base_document_runs(tiny_dump: Path) -> None:
    for file in SCENARIO_FILES:
        before = FUZZ_COUNTS["validate 0, run 0"]
        check_case(Case(file, (), (), ()), tiny_dump)
        ran = FUZZ_COUNTS["validate 0, run 0"] - before
        assert ran == (0 if file.name in REFUSED_BASES else 1), file.name


SERVING_FILES = tuple(
    f
    for f in SCENARIO_FILES
    if (yaml.safe_load(f.read_text(encoding="utf-8")).get("workload") or {}).get("kind")
    == "serving"
)


@pytest.mark.parametrize("trace", ["tiny", "deleted"])
def test_serving_base_documents_run_small(tiny_dump: Path, tmp_path: Path, trace: str) -> None:
    """The serving scenarios run on the tiny trace (their shipped prompts did not fit it), and
    with `trace` deleted (the embedded trace: serving.yaml's 200 requests took 33 s there, past
    the fuzzer's 30 s) they run `FUZZ_REQUESTS` requests."""
    assert SERVING_FILES
    for file in SERVING_FILES:
        doc = base_document(file, tiny_dump)
        edits: tuple[DocEdit, ...] = ()
        if trace == "deleted":
            locs = locations(doc)
            edits = (DocEdit("delete", (locs.index(("trace",)) + 0.5) / len(locs)),)
        scenario, out = tmp_path / f"{file.stem}-{trace}.yaml", tmp_path / f"{file.stem}-{trace}"
        write_case(Case(file, edits, (), ()), tiny_dump, scenario)
        written = yaml.safe_load(scenario.read_text(encoding="utf-8"))
        assert ("trace" in written) == (trace == "tiny")
        assert written["workload"]["requests"] == FUZZ_REQUESTS
        outcome = run_cli(["run", str(scenario), "--out", str(out), "--quiet"])
        assert outcome.code == 0, outcome
        assert_complete_results(out)


@pytest.mark.parametrize(
    ("declared", "kept"),
    [
        (FUZZ_MAX_REQUESTS, FUZZ_MAX_REQUESTS),
        (FUZZ_MAX_REQUESTS + 1, FUZZ_MAX_REQUESTS),
        (MAX_REQUESTS, FUZZ_MAX_REQUESTS),
        (MAX_REQUESTS + 1, MAX_REQUESTS + 1),  # the schema's to refuse
        (True, True),
        ("5000", "5000"),
    ],
)
def test_within_budget_cuts_only_valid_large_request_counts(declared: Any, kept: Any) -> None:
    doc = within_budget({"workload": {"kind": "serving", "requests": declared}})
    assert doc["workload"]["requests"] == kept


# -- files that are not scenarios at all, and the known bugs ----------------------------------------
def _deep(depth: int) -> Callable[[str], str]:
    return lambda text: text.replace("seed: 0", "seed: " + "[" * depth + "1" + "]" * depth)


def _bomb(text: str) -> str:
    """A billion-laughs structure under ``provenance`` (ignored on input: must stay cheap)."""
    lines = ["provenance:", "  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"  l{i}: &l{i} [{refs}]")
    return text + "\n".join(lines) + "\n"


RAW_CASES: dict[str, Callable[[str], str]] = {
    "empty": lambda _t: "",
    "scalar": lambda _t: "42\n",
    "list": lambda _t: "- a\n- b\n",
    "nul-byte": lambda t: t.replace("seed", "se\x00ed", 1),
    "tab-indent": lambda t: t.replace("\n  ", "\n\t", 1),
    "python-tag": lambda t: t + "description: !!python/object/apply:os.system ['true']\n",
    "recursive-alias": lambda t: t + "provenance: &r {a: *r}\n",
    "billion-laughs": _bomb,
    "nesting-40": _deep(40),
    "duplicate-keys": lambda t: t + "seed: 1\nseed: 2\n",
    "nesting-5000": _deep(5000),  # BUGS.md J3 (fixed): was a RecursionError traceback
    "int-5000-digits": lambda t: t.replace("seed: 0", "seed: " + "9" * 5000),  # J4 (fixed)
}
HUGE = "99999999999999999999"


@pytest.mark.parametrize("name", sorted(RAW_CASES))
def test_raw_documents(tiny_dump: Path, tmp_path: Path, name: str) -> None:
    check_raw(tiny_dump, tmp_path, RAW_CASES[name])


@pytest.mark.parametrize(
    "override",
    [
        f"trace.positions={HUGE}",
        f"trace.positions=0-{HUGE}",
        f"hardware.links.pcie.channels={HUGE}",
        "hardware.links.md_link.latency=null",
        "hardware.links.md_link.channels=null",
        "hardware.gpu.peak_flops=null",
        "hardware.links.pcie.bandwidth=null",
        "hardware.hbm.capacity=null",
        "model.expert_bytes=null",
        f"trace.layers={HUGE}",
        f"trace.seqs={HUGE}",
        f"routing.topk={HUGE}",
        f"seed={HUGE}",
        f"trace.num_experts={HUGE}",
        f"model.hidden_size={HUGE}",
        f"policies[0].params.bw_pcie={HUGE}",
    ],
)
def test_odd_overrides(tiny_dump: Path, tmp_path: Path, override: str) -> None:
    """Cases the fuzzers found (`--set trace.positions=99999999999999999999`, a swept null;
    BUGS.md J8-J10, fixed), and their neighbours: huge integers and explicit nulls."""
    doc = base_document(REPO / "scenarios" / "default.yaml", tiny_dump)
    doc["policies"] = ["seed-split"]
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "o"
    outcome = run_cli(["run", str(scenario), "--out", str(out), "--quiet", "--set", override])
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.code in (0, 2), outcome
    if outcome.code == 2:
        assert_one_line_error(outcome)
        assert not out.exists()
    else:
        assert_complete_results(out)


def check_raw(tiny: Path, tmp_path: Path, edit: Callable[[str], str]) -> None:
    doc = base_document(REPO / "scenarios" / "default.yaml", tiny)
    text = edit(yaml.safe_dump(doc, sort_keys=False))
    scenario = tmp_path / "s.yaml"
    scenario.write_text(text, encoding="utf-8")
    for argv in (["validate", str(scenario)], ["run", str(scenario), "--out", str(tmp_path / "o")]):
        outcome = run_cli([*argv, "--quiet"] if argv[0] == "run" else argv, timeout=20)
        assert "Traceback" not in outcome.err, outcome.err
        if outcome.code != 0:
            assert_one_line_error(outcome)
            assert not (tmp_path / "o").exists()
        elif argv[0] == "run":
            assert_complete_results(tmp_path / "o")


def test_set_with_bad_values_is_one_line(tiny_dump: Path, tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    doc = base_document(REPO / "scenarios" / "default.yaml", tiny_dump)
    scenario.write_text(yaml.safe_dump(doc), encoding="utf-8")
    for item in ("seed", "=3", "a..b=1", "policies[99].name=lru", "seed=[1, 2", "routing.topk=0"):
        outcome = run_cli(["validate", str(scenario), "--set", item])
        assert_one_line_error(outcome)


# -- sweep files: the scenario plus a `sweep:` block ----------------------------------------------
def sweep_document(tiny: Path) -> dict[str, Any]:
    """A small sweep (2 x 2 grid x 2 zipped = 8 points) over the tiny dump."""
    return {
        "name": "fuzz-sweep",
        "trace": str(tiny),
        "routing": {"topk": 6},
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "8 experts"}},
        "policies": ["seed-split"],
        "baseline": "seed-split",
        "sweep": {
            "grid": {
                "hardware.hbm.capacity": ["0 B", "8 experts"],
                "policies": ["seed-split", "lru"],
            },
            "zip": {
                "hardware.links.md_link.latency": ["1 us", "5 us"],
                "hardware.links.md_link.channels": [1, 4],
            },
            "repeats": 1,
        },
    }


def _has_sweep_block(text: str) -> bool:
    try:
        parsed = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError):
        return False
    return isinstance(parsed, dict) and "sweep" in parsed


def check_sweep_case(tiny: Path, edits: tuple[DocEdit, ...], t_edits: tuple[TextEdit, ...]) -> None:
    """``moesim validate`` and ``moesim sweep`` agree; errors are one line; outputs complete."""
    from test_crash_safety import assert_only_complete_files

    work = Path(tempfile.mkdtemp(prefix="fuzz-sweep-"))
    cwd = Path.cwd()
    try:
        os.chdir(work)
        doc: Any = sweep_document(tiny)
        for edit in edits:
            doc = edit.apply(doc)
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        for t_edit in t_edits:
            text = t_edit.apply(text)
        path = work / "sweep.yaml"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        out = work / "sweep-out"
        checked = run_cli(["validate", str(path)])
        try:
            swept = run_cli(["sweep", str(path), "--out", str(out), "--jobs", "1", "--no-progress"])
        except (OverflowError, ValueError, TypeError) as err:
            known = known_traceback(err)
            if known is None:
                raise
            FUZZ_COUNTS[f"known bug {known} (traceback)"] += 1
            record_event(f"known bug {known}")
            return
        kind = f"sweep file: validate {checked.code}, sweep {swept.code}"
        FUZZ_COUNTS[kind] += 1
        record_event(kind)
        for outcome in (checked, swept):
            assert "Traceback" not in outcome.err, outcome.err
            assert outcome.code in (0, 2), outcome
        if checked.code == 2:
            assert_one_line_error(checked)
            if _has_sweep_block(text):  # without one, validate checks it as a plain scenario
                assert swept.code == 2, f"sweep ran what validate rejected: {checked.err}"
        if swept.code == 2:
            assert_one_line_error(swept)
            if checked.code == 2:
                assert not out.exists(), "a rejected sweep wrote its directory"
        else:
            assert (out / "sweep.csv").is_file()
        assert_only_complete_files(out)
        leftovers = sorted(p.name for p in work.iterdir() if p.name not in (path.name, out.name))
        assert leftovers == [], f"files left behind: {leftovers}"
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


# 1-3 document edits and at most one text edit: the mutations of sweep files and trace.yaml.
SMALL_EDITS = {
    "edits": st.lists(doc_edits, min_size=1, max_size=3).map(tuple),
    "t_edits": st.lists(text_edits, max_size=1).map(tuple),
}


@settings(max_examples=30, **FUZZ_SETTINGS)
@given(**SMALL_EDITS)
def test_fuzzed_sweep_files(
    tiny_dump: Path, edits: tuple[DocEdit, ...], t_edits: tuple[TextEdit, ...]
) -> None:
    check_sweep_case(tiny_dump, edits, t_edits)


@pytest.mark.slow
@settings(max_examples=600, **FUZZ_SETTINGS)
@given(**SMALL_EDITS)
def test_fuzzed_sweep_files_long(
    tiny_dump: Path, edits: tuple[DocEdit, ...], t_edits: tuple[TextEdit, ...]
) -> None:
    check_sweep_case(tiny_dump, edits, t_edits)


def test_the_fuzzed_sweep_starts_valid(tiny_dump: Path) -> None:
    check_sweep_case(tiny_dump, (), ())
    assert FUZZ_COUNTS["sweep file: validate 0, sweep 0"] >= 1


# -- trace.yaml: the other YAML a user hands us (next to a dump) ------------------------------------
@pytest.fixture(scope="module")
def raw_dump(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return write_pristine(tmp_path_factory.mktemp("raw-dump"))


TRACE_YAML = {
    "model": MODEL,
    "runid": RUN,
    "epoch": EPOCH,
    "layout": "megatron",
    "seq_len": S,
    "micro_batch_size": B,
    "num_experts": 64,
    "k": 6,
    "provenance": "fuzz",
    "synthetic": True,
    "synthetic_layers": [3],
    "tokens_known": "all",
    "notes": "",
}


def check_trace_yaml(
    pristine: Pristine, edits: tuple[DocEdit, ...], t_edits: tuple[TextEdit, ...]
) -> None:
    """A damaged trace.yaml: exit 2 with one line, or exit 0 with complete outputs."""
    work = Path(tempfile.mkdtemp(prefix="fuzz-trace-yaml-"))
    try:
        root = work / "dump"
        shutil.copytree(pristine.root, root)
        doc: Any = json.loads(json.dumps(TRACE_YAML))
        for edit in edits:
            doc = edit.apply(doc)
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        for t_edit in t_edits:
            text = t_edit.apply(text)
        (root / "trace.yaml").write_bytes(text.encode("utf-8", errors="surrogatepass"))
        out = work / "out"
        outcome = run_cli(
            [
                "trace",
                "stats",
                str(root),
                "--positions",
                "all",
                "--layers",
                "all",
                "--out",
                str(out),
            ]
        )
        kind = f"trace.yaml: exit {outcome.code}"
        FUZZ_COUNTS[kind] += 1
        record_event(kind)
        assert "Traceback" not in outcome.err, outcome.err
        if outcome.code != 0:
            assert_one_line_error(outcome)
            assert not out.exists()
        else:
            assert outcome.err == "", outcome.err
            assert_complete_results_stats(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def assert_complete_results_stats(out: Path) -> None:
    for name in ("gating.csv", "counts.csv", "meta.json"):
        text = (out / name).read_text(encoding="utf-8")
        if name.endswith(".csv"):
            rows = list(csv.reader(text.splitlines()))
            assert len(rows) >= 2 and all(len(r) == len(rows[0]) for r in rows)
        else:
            json.loads(text)


@settings(max_examples=60, **FUZZ_SETTINGS)
@given(**SMALL_EDITS)
def test_fuzzed_trace_yaml(
    raw_dump: Pristine, edits: tuple[DocEdit, ...], t_edits: tuple[TextEdit, ...]
) -> None:
    check_trace_yaml(raw_dump, edits, t_edits)


@pytest.mark.slow
@settings(max_examples=1000, **FUZZ_SETTINGS)
@given(**SMALL_EDITS)
def test_fuzzed_trace_yaml_long(
    raw_dump: Pristine, edits: tuple[DocEdit, ...], t_edits: tuple[TextEdit, ...]
) -> None:
    check_trace_yaml(raw_dump, edits, t_edits)


def test_the_fuzzed_trace_yaml_starts_valid(raw_dump: Pristine) -> None:
    check_trace_yaml(raw_dump, (), ())
    assert FUZZ_COUNTS["trace.yaml: exit 0"] >= 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    target = os.environ.get("MOESIM_FUZZ_STATS")
    if target and FUZZ_COUNTS:
        write_json(target, {"scenarios": dict(sorted(FUZZ_COUNTS.items()))})
