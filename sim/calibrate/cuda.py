"""`CudaBackend`: copies, expert FFNs and plan replays on a real GPU, timed with CUDA events.

torch is imported when a backend is made, never at module import (``moesim --help`` stays
fast). Without a usable CUDA device every entry point raises a one-line `UserError`
("no CUDA GPU: ...") and the CLI exits 2.

Timing: an event recorded before the work is issued, one after it on every stream involved;
the elapsed time is the latest end minus the start. Each experiment runs once untimed (warm-up:
allocator, cuBLAS handles, clocks) before its timed repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.calibrate.backend import ReplayPlan
from sim.calibrate.measure import ExpertShape
from sim.errors import UserError

EXPERT_INNER = 10  # FFN calls per timed expert sample (one call is ~10 us: below event noise)


def require_cuda() -> Any:
    """torch with a CUDA device, or a one-line UserError saying why not."""
    try:
        import torch
    except ImportError:
        raise UserError(
            "no CUDA GPU: torch is not installed; moesim calibrate and moesim fidelity time a "
            "real GPU (docs/calibration.md)"
        ) from None
    if not torch.cuda.is_available():
        raise UserError(
            f"no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}); "
            "run this on a machine with an NVIDIA GPU and a CUDA build of torch "
            "(docs/calibration.md)"
        )
    return torch


class CudaBackend:
    """The `sim.calibrate.backend.Backend` of a CUDA GPU (device ``index``)."""

    name = "cuda"

    def __init__(self, index: int = 0) -> None:
        self.torch = require_cuda()
        if not 0 <= index < self.torch.cuda.device_count():
            raise UserError(
                f"--device: expected 0..{self.torch.cuda.device_count() - 1}, got {index}"
            )
        self.device = self.torch.device("cuda", index)
        self.torch.cuda.set_device(self.device)

    def device_name(self) -> str:
        return str(self.torch.cuda.get_device_name(self.device))

    def hbm_capacity(self) -> float | None:
        return float(self.torch.cuda.get_device_properties(self.device).total_memory)

    def _event(self) -> Any:
        return self.torch.cuda.Event(enable_timing=True)

    # -- copies ------------------------------------------------------------------------------------
    def copy_seconds(self, memory: str, nbytes: int, streams: int, repeats: int) -> list[float]:
        torch = self.torch
        host = torch.empty(nbytes * streams, dtype=torch.uint8, pin_memory=memory == "pinned")
        host.fill_(1)  # touch every page (a pageable buffer is not yet backed by memory)
        dev = torch.empty(nbytes * streams, dtype=torch.uint8, device=self.device)
        side = [torch.cuda.Stream(self.device) for _ in range(streams)]
        launch = torch.cuda.current_stream(self.device)
        out: list[float] = []
        for rep in range(repeats + 1):
            torch.cuda.synchronize(self.device)
            start = self._event()
            start.record(launch)
            ends = []
            for i, stream in enumerate(side):
                stream.wait_event(start)
                chunk = slice(i * nbytes, (i + 1) * nbytes)
                with torch.cuda.stream(stream):
                    dev[chunk].copy_(host[chunk], non_blocking=True)
                end = self._event()
                end.record(stream)
                ends.append(end)
            torch.cuda.synchronize(self.device)
            if rep:  # the first round is the warm-up
                out.append(max(start.elapsed_time(end) for end in ends) / 1e3)
        del host, dev
        return out

    # -- one expert --------------------------------------------------------------------------------
    def expert_seconds(self, shape: ExpertShape, tokens: int, repeats: int) -> list[float]:
        torch = self.torch
        dtype = _dtype(torch, shape.dtype)
        weights = torch.empty(shape.params, dtype=dtype, device=self.device).normal_(0, 0.02)
        x = torch.randn(tokens, shape.hidden_size, dtype=dtype, device=self.device)
        stream = torch.cuda.current_stream(self.device)
        out: list[float] = []
        for rep in range(repeats + 1):
            torch.cuda.synchronize(self.device)
            start, end = self._event(), self._event()
            start.record(stream)
            for _ in range(EXPERT_INNER):
                expert_ffn(torch, x, weights, shape)
            end.record(stream)
            torch.cuda.synchronize(self.device)
            if rep:
                out.append(start.elapsed_time(end) / 1e3 / EXPERT_INNER)
        return out

    # -- replay ------------------------------------------------------------------------------------
    def replay(self, plan: ReplayPlan, repeats: int) -> np.ndarray:
        """Every expert of every layer lives in pinned host memory and has a home in HBM; a
        fetch copies it host -> home on its stream, a compute runs the FFN from the home."""
        torch = self.torch
        shape = plan.shape
        dtype = _dtype(torch, shape.dtype)
        need = plan.num_layers * plan.num_experts * shape.nbytes
        free, _total = torch.cuda.mem_get_info(self.device)
        if need > 0.8 * free:
            raise UserError(
                f"fidelity: expected the model's experts ({need / 1e9:.2f} GB) to fit in 80% of "
                f"the GPU's free memory ({free / 1e9:.2f} GB); use a smaller model"
            )
        home = torch.empty(
            (plan.num_layers, plan.num_experts, shape.params), dtype=dtype, device=self.device
        ).normal_(0, 0.02)
        host = torch.empty(home.shape, dtype=dtype, pin_memory=True)
        host.copy_(home)
        x = torch.randn(plan.max_tokens, shape.hidden_size, dtype=dtype, device=self.device)
        copy_streams = [torch.cuda.Stream(self.device) for _ in range(plan.streams)]
        compute = torch.cuda.Stream(self.device)
        runs = []
        for rep in range(repeats + 1):
            torch.cuda.synchronize(self.device)
            marks = self._replay_once(plan, home, host, x, copy_streams, compute)
            torch.cuda.synchronize(self.device)
            if rep:
                runs.append([a.elapsed_time(b) / 1e3 for a, b in marks])
        del home, host
        return np.median(np.asarray(runs, dtype=np.float64), axis=0)

    def _replay_once(
        self, plan: ReplayPlan, home: Any, host: Any, x: Any, copy_streams: list, compute: Any
    ) -> list[tuple[Any, Any]]:
        torch = self.torch
        marks = []
        with torch.cuda.stream(compute):
            for layers in plan.steps:
                begin = self._event()
                begin.record(compute)
                for layer, lp in enumerate(layers):
                    gate = torch.cuda.Event()
                    gate.record(compute)  # the gate: the previous layer's compute is done
                    arrived = []
                    for expert, k in lp.fetch.tolist():
                        stream = copy_streams[k]
                        stream.wait_event(gate)
                        with torch.cuda.stream(stream):
                            home[layer, expert].copy_(host[layer, expert], non_blocking=True)
                        done = torch.cuda.Event()
                        done.record(stream)
                        arrived.append(done)
                    if not plan.per_expert_start:
                        for done in arrived:
                            compute.wait_event(done)
                    for expert, tokens, fetch in lp.compute.tolist():
                        if fetch >= 0 and plan.per_expert_start:
                            compute.wait_event(arrived[fetch])
                        expert_ffn(torch, x[:tokens], home[layer, expert], shape=plan.shape)
                    for done in arrived:  # the layer ends when its copies are in, too
                        compute.wait_event(done)
                end = self._event()
                end.record(compute)
                marks.append((begin, end))
        return marks


def _dtype(torch: Any, name: str) -> Any:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"expert dtype: expected a torch dtype such as bfloat16, got {name!r}")
    return dtype


def expert_ffn(torch: Any, x: Any, weights: Any, shape: ExpertShape) -> Any:
    """One expert on ``x`` [tokens, hidden]; ``weights`` is the expert's flat parameter buffer
    (gate and up projections [ffn, hidden] each, then down [hidden, ffn]), one copy per expert."""
    h, f = shape.hidden_size, shape.ffn_size
    up = weights[: f * h].view(f, h)
    if shape.gated:
        gate = weights[f * h : 2 * f * h].view(f, h)
        down = weights[2 * f * h :].view(h, f)
        act = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
    else:
        down = weights[f * h :].view(h, f)
        act = torch.nn.functional.gelu(x @ up.T)
    return act @ down.T
