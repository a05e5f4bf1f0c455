"""The ``workload:`` section: validation (one line naming the field, exit 2), the resolved
round trip, request generation (Poisson, Gamma, lengths) and CSV files of requests (ours and
the Azure LLM inference traces' columns; every bad row one line naming file, row, column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.errors import UserError
from sim.scenario import scenario_from_dict
from sim.serving.requests import make_requests, read_requests_csv
from sim.serving.spec import LengthDist, lognormal_parameters

BASE = {
    "name": "t",
    "trace": "embedded",
    "hardware": "notebook-gbps",
    "policies": ["seed-split"],
}
SERVING = {
    "kind": "serving",
    "arrivals": {"process": "poisson", "rate": 10},
    "prompt": 16,
    "output": {"dist": "uniform", "low": 4, "high": 32},
    "requests": 50,
}


def _scenario(workload: object, tmp_path: Path | None = None):
    doc = {**BASE, "workload": workload}
    base = None if tmp_path is None else tmp_path
    return scenario_from_dict(doc, "s.yaml", base_dir=base)


def test_lockstep_is_the_default_and_resolves_without_a_workload_key():
    plain = scenario_from_dict(dict(BASE))
    assert plain.workload is None and not plain.serving
    assert "workload" not in plain.resolved_dict()
    explicit = scenario_from_dict({**BASE, "workload": "lockstep"})
    assert explicit.resolved_dict() == plain.resolved_dict()


def test_serving_resolves_and_round_trips():
    scenario = _scenario(SERVING)
    spec = scenario.workload
    assert spec is not None and scenario.serving
    assert spec.requests == 50 and spec.seed == 0 and spec.prompt.value == 16
    assert spec.scheduler.max_running == 256 and spec.memory.mode == "fixed"
    again = scenario_from_dict(scenario.resolved_dict())
    assert again.workload == spec


BAD_WORKLOADS = [
    ({**SERVING, "kind": "batch"}, "workload.kind: expected one of 'lockstep' or 'serving'"),
    ({"kind": "lockstep", "requests": 3}, "workload: expected no requests with kind lockstep"),
    ({"kind": "serving"}, "workload: expected arrivals with kind serving, got none"),
    (
        {**SERVING, "arrivals": {"process": "gamma", "rate": 3}},
        "workload.arrivals: expected cv with process gamma, got none",
    ),
    (
        {**SERVING, "arrivals": {"process": "poisson", "rate": 3, "cv": 2}},
        "workload.arrivals: expected no cv with process poisson",
    ),
    (
        {**SERVING, "arrivals": {"rate": 0}},
        "workload.arrivals.rate: expected a value > 0",
    ),
    (
        {**SERVING, "arrivals": {"rate": float("inf")}},
        "workload.arrivals.rate:",
    ),
    ({**SERVING, "prompt": 0}, "workload.prompt.value: expected a value > 0, got 0"),
    (
        {**SERVING, "prompt": {"dist": "uniform", "low": 9, "high": 3}},
        "workload.prompt: expected low <= high, got 9 > 3",
    ),
    (
        {**SERVING, "output": {"dist": "lognormal", "mean": 10, "median": 20}},
        "workload.output: expected mean >= median",
    ),
    (
        {**SERVING, "output": {"dist": "lognormal", "mean": 10}},
        "workload.output: expected median with dist lognormal, got none",
    ),
    (
        {**SERVING, "output": {"dist": "fixed", "value": 3, "high": 9}},
        "workload.output: expected no high with dist fixed",
    ),
    (
        {k: v for k, v in SERVING.items() if k != "requests"},
        "workload: expected exactly one of requests and duration, got neither",
    ),
    ({**SERVING, "duration": "10 s"}, "workload: expected exactly one of requests and duration"),
    ({**SERVING, "warmup": 50}, "workload.warmup: expected fewer than the 50 requests, got 50"),
    ({**SERVING, "requests": 10**9}, "workload.requests: expected a value <= 10000000"),
    (
        {**{k: v for k, v in SERVING.items() if k != "requests"}, "duration": "2000000 s"},
        "workload.duration: expected rate x duration at most 10,000,000 requests",
    ),
    ({**SERVING, "scheduler": {"max_running": 0}}, "workload.scheduler.max_running: expected"),
    ({**SERVING, "memory": {"mode": "split"}}, "workload.memory.mode: expected one of"),
    ({**SERVING, "slo": {"ttft": "soon"}}, "workload.slo.ttft: expected a duration"),
    ({**SERVING, "router": "random"}, "workload.router: expected one of"),
    ({**SERVING, "colour": 1}, "workload.colour: unknown key"),
    (
        {**SERVING, "arrivals": {"process": "csv", "path": "nope.csv"}},
        "workload: expected no prompt with a CSV",
    ),
]


@pytest.mark.parametrize(("workload", "message"), BAD_WORKLOADS)
def test_bad_workloads_are_one_line(workload, message):
    with pytest.raises(UserError) as err:
        _scenario(workload)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_bad_workload_through_the_cli_exits_2(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**BASE, "workload": {**SERVING, "prompt": -1}}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "workload.prompt.value: expected a value > 0" in err


def test_costs_and_serving_are_refused_together(tmp_path):
    (tmp_path / "tables").mkdir()
    doc = {
        **BASE,
        "trace": "costs",
        "costs": {"path": str(tmp_path / "tables")},
        "workload": SERVING,
    }
    with pytest.raises(UserError, match=r"workload\.kind: expected lockstep with a costs: section"):
        scenario_from_dict(doc)


# -- generated requests ------------------------------------------------------------------------
def _spec(**workload):
    return _scenario({**SERVING, **workload}).workload


def test_poisson_arrivals_have_the_rate_and_are_deterministic():
    spec = _spec(requests=20000, arrivals={"rate": 50.0})
    a = make_requests(spec)
    gaps = np.diff(np.concatenate([[0.0], a.arrival]))
    assert abs(gaps.mean() * 50.0 - 1.0) < 0.03
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.03  # exponential: cv 1
    b = make_requests(spec)
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.output, b.output)
    other = make_requests(_spec(requests=20000, arrivals={"rate": 50.0}, seed=1))
    assert not np.array_equal(a.arrival, other.arrival)


def test_gamma_arrivals_have_the_rate_and_the_cv():
    spec = _spec(requests=40000, arrivals={"process": "gamma", "rate": 20.0, "cv": 3.0})
    gaps = np.diff(np.concatenate([[0.0], make_requests(spec).arrival]))
    assert abs(gaps.mean() * 20.0 - 1.0) < 0.05
    assert abs(gaps.std() / gaps.mean() - 3.0) < 0.15


def test_lengths_do_not_move_arrivals():
    a = make_requests(_spec(prompt=16))
    b = make_requests(_spec(prompt={"dist": "uniform", "low": 1, "high": 99}))
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.output, b.output)
    assert not np.array_equal(a.prompt, b.prompt)


def test_duration_keeps_the_arrivals_before_it():
    spec = _spec(requests=None, duration="20 s", arrivals={"rate": 30.0})
    got = make_requests(spec)
    assert got.arrival.max() < 20.0 and abs(len(got) - 600) < 100
    longer = make_requests(_spec(requests=None, duration="40 s", arrivals={"rate": 30.0}))
    assert np.array_equal(longer.arrival[: len(got)], got.arrival)


def test_lognormal_is_fitted_to_mean_and_median():
    mu, sigma = lognormal_parameters(300.0, 100.0)
    assert np.isclose(np.exp(mu), 100.0) and np.isclose(np.exp(mu + sigma**2 / 2), 300.0)
    dist = LengthDist("lognormal", mean=300.0, median=100.0)
    values = dist.sample(np.random.default_rng(0), 200_000)
    assert abs(np.median(values) / 100.0 - 1.0) < 0.02
    assert abs(values.mean() / 300.0 - 1.0) < 0.05
    capped = LengthDist("lognormal", mean=300.0, median=100.0, max=250)
    got = capped.sample(np.random.default_rng(0), 1000)
    assert got.max() == 250 and got.min() >= 1
    uniform = LengthDist("uniform", low=3, high=5).sample(np.random.default_rng(0), 1000)
    assert set(uniform.tolist()) == {3, 4, 5}


# -- CSV files -----------------------------------------------------------------------------------
def test_csv_with_our_columns(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("arrival,prompt_tokens,output_tokens,note\n0.5,10,3,a\n0.5,4,1,b\n2,7,9,c\n")
    got = read_requests_csv(path)
    assert got.arrival.tolist() == [0.5, 0.5, 2.0]
    assert got.prompt.tolist() == [10, 4, 7] and got.output.tolist() == [3, 1, 9]
    assert read_requests_csv(path, rate_scale=2.0).arrival.tolist() == [0.25, 0.25, 1.0]


def test_csv_with_the_azure_columns(tmp_path):
    path = tmp_path / "azure.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:01.0000000,879,5\n"
    )
    got = read_requests_csv(path)
    assert np.allclose(got.arrival, [0.0, 4.314579, 14.31941])
    assert got.prompt.tolist() == [374, 396, 879] and got.output.tolist() == [44, 109, 5]


def test_a_csv_scenario_takes_its_first_requests(tmp_path):
    path = tmp_path / "r.csv"
    rows = "".join(f"{i * 0.1},{5 + i},{2 + i}\n" for i in range(10))
    path.write_text("arrival,prompt_tokens,output_tokens\n" + rows)
    workload = {"kind": "serving", "arrivals": {"process": "csv", "path": "r.csv"}}
    whole = make_requests(_scenario(workload, tmp_path).workload)
    assert len(whole) == 10
    first = make_requests(_scenario({**workload, "requests": 4}, tmp_path).workload)
    assert first.prompt.tolist() == [5, 6, 7, 8]
    early = make_requests(_scenario({**workload, "duration": "0.35 s"}, tmp_path).workload)
    assert len(early) == 4
    with pytest.raises(UserError, match=r"workload\.requests: expected at most the 10 requests"):
        make_requests(_scenario({**workload, "requests": 11}, tmp_path).workload)
    with pytest.raises(UserError, match=r"workload\.arrivals\.path: expected a CSV file"):
        _scenario({**workload, "arrivals": {"process": "csv", "path": "gone.csv"}}, tmp_path)


BAD_ROWS = [
    ("arrival,prompt_tokens\n1,2\n", "expected a column output_tokens or GeneratedTokens"),
    ("", "expected a CSV header row, got an empty file"),
    ("arrival,prompt_tokens,output_tokens\n", "expected at least one request row, got none"),
    (
        "arrival,prompt_tokens,output_tokens\n0,1,1\nsoon,1,1\n",
        "row 2, column arrival: expected a time in seconds >= 0, got 'soon'",
    ),
    (
        "arrival,prompt_tokens,output_tokens\n0,1,1\n-1,1,1\n",
        "row 2, column arrival: expected a time in seconds >= 0, got '-1'",
    ),
    (
        "arrival,prompt_tokens,output_tokens\n0,1,1\nnan,1,1\n",
        "row 2, column arrival: expected a time in seconds >= 0, got 'nan'",
    ),
    (
        "arrival,prompt_tokens,output_tokens\n2,1,1\n1,1,1\n",
        "row 2, column arrival: expected arrivals in non-decreasing order",
    ),
    (
        "arrival,prompt_tokens,output_tokens\n0,1.5,1\n",
        "row 1, column prompt_tokens: expected a whole number of tokens",
    ),
    (
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,10,0\n",
        "row 1, column GeneratedTokens: expected a whole number of tokens from 1",
    ),
    (
        "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,3\n",
        "row 1, column TIMESTAMP: expected a date-time like '2023-11-16 18:15:46.6805900'",
    ),
    ("arrival,prompt_tokens,output_tokens\n0,1\n", "row 1: expected 3 columns as the header"),
    (
        "arrival,TIMESTAMP,prompt_tokens,output_tokens\n0,0,1,1\n",
        "expected one of the columns arrival, TIMESTAMP, got both",
    ),
    ("arrival,prompt_tokens,output_tokens\n0,99999999999,1\n", "row 1, column prompt_tokens"),
    ('arrival,prompt_tokens,output_tokens\n0,"1\n', "row 1: expected 3 columns"),
]


@pytest.mark.parametrize(("text", "message"), BAD_ROWS)
def test_bad_csv_rows_are_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_requests_csv(path)
    assert str(err.value).startswith(str(path)), str(err.value)
    assert message in str(err.value), str(err.value)


def test_undecodable_csv_is_one_line(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"arrival,prompt_tokens,output_tokens\n0,1,\xff\n")
    with pytest.raises(
        UserError, match="expected a CSV file of requests in UTF-8, got undecodable"
    ):
        read_requests_csv(path)
    with pytest.raises(UserError, match="expected a CSV file of requests, got a directory"):
        read_requests_csv(tmp_path)
