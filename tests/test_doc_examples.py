"""Every shell example in README.md and docs/*.md runs, so that the documentation cannot drift.

The examples are read from the Markdown itself: command lines (``moesim ...``, ``python -m sim
...``) in fenced ``sh``/``bash``/plain blocks and in indented blocks, with ``\\`` continuations
joined and ``# comments`` dropped. Each document's examples run in order, in-process
(`sim.cli.main`), in one temporary working directory that links the repository's
``scenarios/``, ``traces/`` and ``docs/``; so a command may use what an earlier one of the same
document wrote (``moesim report results/hbm-tight-<UTC time>`` is the directory step 4 made).

To keep the suite fast every run is cut short without changing what it exercises: scenario runs
and sweeps get a short positions window (``--set trace.positions=0-7``, or a short synthetic
sequence), absolute ``/tmp`` paths land in the working directory, placeholders (``DIR``,
``FILE``, ``OUT``) become the directory or file the document's previous commands produced. A
command whose next line in the document is ``moesim: error: ...`` must fail with that error.

Commands that cannot run here are listed in ``EXEMPT`` with the reason; examples that take
more than a few seconds are marked slow (``pytest -m slow``).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = ("", "sh", "bash", "shell", "console")
PROGRAMS = ("moesim", ".venv/bin/moesim", "python", ".venv/bin/python", "make")
SHORT_POSITIONS = "trace.positions=0-7"

# (document, regex on the command): why it does not run in the tests
EXEMPT = {
    ("*", r"^make "): "builds the environment; `make run` is `moesim run scenarios/default.yaml "
    "--report` (run below, from docs/reports.md) and CI runs `make test` on a clean clone",
    ("*", r"/data/flame-dump|\bDUMP\b|CUTS/"): "needs a full FLAME-MoE dump (or the notebook's "
    "cuts), which the repository does not ship",
    ("*", r"~/"): "needs data in the reader's home directory (the parquet release)",
    ("*", r"^\S*python (-m pytest|benchmarks/)"): "runs the test suite or a benchmark itself",
    ("calibration.md", r"^moesim calibrate (--out|--sizes)"): "needs a CUDA GPU",
    ("calibration.md", r"--from calibrated\.yaml"): "needs the output of a GPU calibration",
    ("fidelity.md", r"^moesim calibrate --out"): "needs a CUDA GPU",
    ("fidelity.md", r"fidelity SCENARIO "): "the usage synopsis, not an example",
    ("sweeps.md", r"--scheduler tcp://"): "needs a running Dask cluster",
}
SLOW = {  # documents with an example that takes more than a few seconds here
    ("README.md", r"sweep scenarios/sweep-bandwidth"),
    ("reports.md", r"--report"),
    ("stats.md", r"--notebook-tree"),
    ("search.md", r"."),
    ("serving.md", r"."),
    ("sweeps.md", r"sweep scenarios/sweep-bandwidth|--executor dask"),
    ("synthetic-traces.md", r"trace synth --out /tmp/synth( |$)"),
    ("trace-profile.md", r"embedded:flame-moe-290m-synth"),
}


@dataclass(frozen=True)
class Example:
    doc: str  # file name
    line: int
    command: str
    error: str | None  # the documented error line's text after "moesim: error: "


def examples(path: Path) -> list[Example]:
    """The shell commands of one document, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    fence: str | None = None
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            i += 1
            continue
        in_shell = fence is not None and fence in SHELL_LANGS
        indented = fence is None and raw.startswith("    ")
        text = re.sub(r"^\$ ", "", stripped)
        first = text.split(" ", 1)[0]
        if (in_shell or indented) and first in PROGRAMS:
            start = i + 1
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            error = (
                following.removeprefix("moesim: error: ")
                if following.startswith("moesim: error: ")
                else None
            )
            out.append(Example(path.name, start, _drop_comment(text), error))
        i += 1
    return out


def _drop_comment(text: str) -> str:
    words = shlex.split(text, comments=True)
    return shlex.join(words)


def _matches(table, doc: str, command: str) -> str | bool | None:
    for key in table:
        where, pattern = key
        if where in ("*", doc) and re.search(pattern, command):
            return table[key] if isinstance(table, dict) else True
    return None


ALL = [ex for path in DOCS for ex in examples(path)]


def test_the_examples_are_found() -> None:
    docs = {ex.doc for ex in ALL}
    assert {"README.md", "scenarios.md", "reports.md", "sweeps.md", "stats.md"} <= docs
    assert any(ex.command.startswith("moesim calibrate") and ex.error for ex in ALL)
    assert len(ALL) > 60


def test_every_exemption_is_used() -> None:
    used = {key for key in EXEMPT for ex in ALL if _matches({key: 1}, ex.doc, ex.command)}
    assert used == set(EXEMPT), set(EXEMPT) - used


# -- running -------------------------------------------------------------------------------------
class Context:
    """A document's working directory and what its commands produced so far."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        for name in ("scenarios", "traces", "docs"):
            (cwd / name).symlink_to(ROOT / name)
        (cwd / "tmp").mkdir()
        self.made: list[Path] = []  # directories and files written, latest last
        self._inputs()

    def _inputs(self) -> None:
        """The small input files docs/trace-import.md's examples name."""
        rng = np.random.default_rng(0)
        tokens, layers, k = 32, 26, 2
        ids = np.argsort(rng.random((tokens, layers, 8)), axis=2)[:, :, :k]
        np.savez(self.cwd / "routed_experts.npz", expert_ids=ids)
        with (self.cwd / "routing.jsonl").open("w") as handle:
            for t in range(8):
                for layer in (2, 3):
                    experts = rng.permutation(64)[:6].tolist()
                    handle.write(json.dumps({"layer": layer, "token": t, "expert_ids": experts}))
                    handle.write("\n")

    def latest(self, prefix: str = "", kind: str = "dir") -> Path:
        """The latest directory written (``kind`` "run": holding a summary.csv)."""
        for path in reversed(self.made):
            if not path.name.startswith(prefix) or not path.is_dir():
                continue
            if kind == "dir" or (path / "summary.csv").is_file():
                return path
        raise AssertionError(f"no earlier output named {prefix}*")

    def argv(self, command: str) -> list[str]:
        command = re.sub(r"results/([\w.+-]+?)-<[^>]+>", r"results/\1-<time>", command)
        words = shlex.split(command)
        if words[0] in ("python", ".venv/bin/python"):
            assert words[1:3] == ["-m", "sim"], command
            words = words[2:]
        words = words[1:]  # the program
        out = []
        for word in words:
            word = re.sub(r"^/tmp/", str(self.cwd / "tmp") + "/", word)
            stamp = re.match(r"^results/([\w.+-]+?)-(<[^>]+>|\d{8}T\d{6}Z)/?$", word)
            if stamp:
                word = str(self.latest(stamp.group(1)))
            elif word == "DIR":  # a run's results directory
                word = str(self.latest(kind="run"))
            elif word == "OUT":
                word = str(self.latest(kind="dir"))
            elif word == "FILE":
                word = "scenarios/sweep-batch.yaml"
            elif word == "stats-out/":
                word = str(self.latest("stats"))
            elif word == "elsewhere/tl.json":
                timeline = self.cwd / "elsewhere" / "tl.json"
                timeline.parent.mkdir(exist_ok=True)
                source = next(p for p in reversed(self.made) if (p / "timeline.json").is_file())
                timeline.write_bytes((source / "timeline.json").read_bytes())
                word = str(timeline)
            out.append(word)
        return self._shortened(out)

    def _shortened(self, argv: list[str]) -> list[str]:
        """Runs and sweeps on a short window of the trace."""
        if len(argv) < 2 or argv[0] not in ("run", "sweep", "search", "fidelity"):
            return argv
        if any(SHORT_POSITIONS.split("=")[0] in a or "seq_len" in a for a in argv):
            return argv
        scenario = yaml.safe_load((self.cwd / argv[1]).read_text())
        trace = scenario.get("trace") if isinstance(scenario, dict) else None
        if isinstance(trace, dict) and "synthetic" in trace:
            return [*argv, "--set", "trace.synthetic.seq_len=8"]
        if scenario.get("costs") or trace == "costs" or "workload" in scenario:
            return argv  # cost tables are small; a serving workload needs its whole trace
        return [*argv, "--set", SHORT_POSITIONS]

    def run(self, example: Example) -> tuple[int, str, str]:
        argv = self.argv(example.command)
        if argv and argv[0] == "sweep" and "--jobs" not in argv:
            argv += ["--jobs", "1"]
        before = set(self._outputs())
        out, err = io.StringIO(), io.StringIO()
        with (
            contextlib.chdir(self.cwd),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = int(exit_.code or 0)
        self.made += sorted(set(self._outputs()) - before, key=lambda p: p.stat().st_mtime)
        return code, out.getvalue(), err.getvalue()

    def _outputs(self) -> list[Path]:
        found = []
        for parent in (self.cwd, self.cwd / "results", self.cwd / "tmp", self.cwd / "results"):
            if parent.is_dir():
                found += [p for p in parent.iterdir() if not p.is_symlink()]
        return found


def _doc_params():
    params = []
    for path in DOCS:
        runnable = [ex for ex in examples(path) if not _matches(EXEMPT, ex.doc, ex.command)]
        if not runnable:
            continue
        slow = any(_matches(dict.fromkeys(SLOW, 1), ex.doc, ex.command) for ex in runnable)
        marks = [pytest.mark.slow] if slow else []
        params.append(pytest.param(path, marks=marks, id=path.name))
    return params


@pytest.mark.parametrize("path", _doc_params())
def test_doc_examples_run(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    context = Context(tmp_path)
    for example in examples(path):
        if _matches(EXEMPT, example.doc, example.command):
            continue
        if example.error and "no CUDA GPU" in example.error:
            torch = pytest.importorskip("torch")
            if torch.cuda.is_available():
                continue  # on a GPU machine the command would calibrate for real
        code, out, err = context.run(example)
        where = f"{example.doc}:{example.line}: {example.command}"
        if example.error is None:
            assert code == 0, f"{where}\n{err or out}"
        else:
            expected = example.error.split("...")[0].strip()
            assert code == 2 and expected in err, f"{where}: expected {expected!r}, got {err}"
