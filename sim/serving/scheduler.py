"""Continuous batching as a deterministic state machine (Orca / vLLM, Sarathi-Serve chunks).

The engine's GPU process asks `Scheduler.poll(now)` for its next iteration whenever it is free
and reports the iteration's end with `Scheduler.complete(end)`. `poll` answers a `Batch`, a
wake-up time (nothing to run until the next arrival) or None (every request is finished).

One iteration, decided at its start (``now``):

1. Requests that arrived by ``now`` join the waiting queue (FCFS, in arrival order).
2. **Decodes**: every running request whose prefill is done decodes one token. Its KV cache
   grows by one token; when the blocks it needs no longer fit the KV budget, the most
   recently admitted running requests are **preempted** (vLLM's recompute preemption): their
   KV is freed and they go back to the front of the queue; re-admitted, they prefill their
   prompt plus the tokens generated so far in one pass and continue. Each is counted.
3. **Prefill chunks** (chunked prefill only): running requests still in their prefill take
   the next chunk of it, in admission order, from the token budget the decodes leave.
4. **Admission**, FCFS from the head of the queue while fewer than ``max_running`` requests
   run: the head is admitted when the KV blocks of its whole prefill fit (allocated at once)
   and, without chunked prefill, its whole prefill fits the token budget left; else admission
   stops (no request overtakes the head). Its prefill starts in this iteration.

At the end of the iteration every decode, and every prefill that completed, emits a token:
the first one is the request's first token; the request finishes when it has emitted all
its output tokens, and its KV is freed.

Once every request has arrived, or while more requests wait than the batch has room for, what
runs next depends only on this state, not on when iterations end (`Scheduler.can_plan_next`):
`poll` may then be called again before `complete`, the previous iteration's effects applied at
once; `complete(end, start)` later gives each iteration, oldest first, its times (admissions,
first tokens, finishes, the record's queue and arrival counts).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.errors import UserError
from sim.serving.requests import RequestSet
from sim.serving.spec import SchedulerSpec


@dataclass(frozen=True)
class Batch:
    """One iteration's work. Arrays are aligned: request ``ids[i]`` processes ``new_tokens[i]``
    tokens at positions ``first_pos[i]..``; its KV length afterwards is ``kv_after[i]``."""

    index: int
    start: float  # when it was asked for (its start, unless planned ahead; see `complete`)
    ids: np.ndarray  # int64 [n]
    first_pos: np.ndarray  # int64 [n]
    new_tokens: np.ndarray  # int64 [n]
    kv_after: np.ndarray  # int64 [n]
    emits: np.ndarray  # bool [n]: emits a token at the end (a decode, or a finished prefill)
    decode_tokens: int
    prefill_tokens: int


# Per-iteration record columns (`Scheduler.iteration_table`), see docs/serving.md
ITERATION_COLUMNS = (
    "iteration",
    "t_start",
    "t_end",
    "requests",
    "decode_tokens",
    "prefill_tokens",
    "queued",
    "in_system",
    "arrivals",
    "admitted",
    "preempted",
    "finished",
    "kv_tokens",
    "kv_blocks",
    "kv_budget_blocks",
)
_COL = {name: i for i, name in enumerate(ITERATION_COLUMNS)}


class Scheduler:
    """FCFS continuous batching over ``requests`` with a KV budget of ``kv_blocks`` blocks.

    ``routed``: the requests are handed over one by one as they arrive (`assign`, by a
    `sim.serving.router.Router` dispatching them among several GPUs) until `close`; by default
    the scheduler serves them all, each from its arrival time."""

    def __init__(
        self, requests: RequestSet, spec: SchedulerSpec, kv_blocks: int, *, routed: bool = False
    ) -> None:
        self.requests = requests
        self.spec = spec
        self.block = spec.block_tokens
        self.kv_budget = int(kv_blocks)
        n = len(requests)
        check_fits(requests, spec, self.kv_budget)
        self.prompt = requests.prompt
        self.output = requests.output
        # the requests this scheduler serves, in arrival order, and their arrival times
        self.open = routed  # more may be assigned
        self.ids: np.ndarray | list[int] = [] if routed else np.arange(n, dtype=np.int64)
        self.ids_arrival: np.ndarray | list[float] = [] if routed else requests.arrival
        # per-request state
        self.prefilled = np.zeros(n, dtype=np.int64)  # KV positions computed (0..prefilled-1)
        self.target = np.zeros(n, dtype=np.int64)  # prefill length of the current admission
        self.generated = np.zeros(n, dtype=np.int64)  # output tokens emitted
        self.blocks = np.zeros(n, dtype=np.int64)  # KV blocks held
        self.admitted = np.full(n, np.nan)  # first admission (start of that iteration)
        self.was_admitted = np.zeros(n, dtype=bool)  # admitted once (its time may come later)
        self.first_token = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.preempted = np.zeros(n, dtype=np.int64)
        self._marked = np.zeros(n, dtype=bool)  # scratch: the requests just finished
        # queues
        self.waiting: deque[int] = deque()
        self.running = np.zeros(0, dtype=np.int64)  # admission order
        self.next_arrival = 0  # index of the first request not yet arrived
        self.finished_count = 0
        self.blocks_held = 0
        self.current: Batch | None = None
        self.iterations = 0
        self.rows: list[tuple] = []
        self._pending_row: list | None = None
        # advanced (state updated) but not yet timed: (record row, first admissions,
        # first-token ids, done ids, arrivals known, finished before, queue left)
        self._untimed: deque[tuple] = deque()
        self._decided_with = (0, 0, 0)
        self._first_admissions: list[int] = []  # of the current batch

    # -- the engine's questions -------------------------------------------------------------
    def poll(self, now: float) -> Batch | float | None:
        """The next iteration starting at ``now``; or the time of the next arrival when there
        is nothing to run until then (``inf`` when it is not known yet: a router assigns it);
        or None when every request has finished."""
        assert self.current is None, "poll() before complete() or can_plan_next()"
        if self.next_arrival < len(self.ids):
            arrived = self._arrived_by(now)
            if arrived > self.next_arrival:
                self.waiting.extend(self._ids_between(self.next_arrival, arrived))
                self.next_arrival = arrived
        if not self.running.size and not self.waiting:
            if self.next_arrival < len(self.ids):
                return float(self.ids_arrival[self.next_arrival])
            return math.inf if self.open else None
        finished_before = self.finished_count
        preempted, prefilled, decoding = self._grow_decodes()
        ids, first_pos, new_tokens, decodes, budget = self._continue_prefills(prefilled, decoding)
        admitted, chunks = self._admit(budget)
        if admitted:
            ids = np.concatenate([ids, np.asarray(admitted, dtype=np.int64)])
            first_pos = np.concatenate([first_pos, np.zeros(len(admitted), dtype=np.int64)])
            new_tokens = np.concatenate([new_tokens, np.asarray(chunks, dtype=np.int64)])
        kv_after = first_pos + new_tokens
        emits = kv_after >= self.target[ids]
        assert ids.size, "an iteration with nothing to run (validated against)"
        batch = Batch(
            index=self.iterations,
            start=now,
            ids=ids,
            first_pos=first_pos,
            new_tokens=new_tokens,
            kv_after=kv_after,
            emits=emits,
            decode_tokens=decodes,
            prefill_tokens=int(new_tokens.sum()) - decodes,
        )
        self.current = batch
        # what the record's time-dependent cells start from: arrivals known, finishes, queue
        self._decided_with = (self.next_arrival, finished_before, len(self.waiting))
        self._pending_row = self._new_row(batch, len(admitted), preempted, self.blocks_held)
        return batch

    def complete(self, end: float, start: float | None = None) -> None:
        """The oldest iteration not yet timed ran from ``start`` (default: when it was asked
        for) to ``end``: its first admissions are at ``start``, its tokens out at ``end`` (first
        tokens, finishes), and its record gets both."""
        if not self._untimed:
            self._advance()
        row, admitted, first, done, known, finished_before, waiting = self._untimed.popleft()
        if start is None:
            start = row[_COL["t_start"]]
        row[_COL["t_start"]] = start
        if admitted:
            self.admitted[admitted] = start
        if first.size:
            self.first_token[first] = end
        if done.size:
            self.finish[done] = end
        row[_COL["t_end"]] = end
        at_start = at_end = known
        if self.open or known < len(self.ids):  # later arrivals join the queue's tail
            at_start, at_end = self._arrived_by(start), self._arrived_by(end)
        row[_COL["queued"]] = waiting + at_start - known
        row[_COL["in_system"]] = at_start - finished_before
        row[_COL["arrivals"]] = at_end - at_start
        self.rows.append(row)

    def can_plan_next(self) -> bool:
        """Apply the current iteration's effects now (they do not depend on when it ends) and
        say whether the next one can be decided before it is timed: yes when every request
        has arrived, or when more requests wait than the batch has room for (later arrivals
        would queue behind them and could change nothing). Then `poll` may be called again;
        `complete` times the iterations later, oldest first."""
        if self.current is not None:
            self._advance()
        if self.open:  # a router assigns by this state: it must not run ahead of time
            return False
        if self.all_arrived:
            return True
        return len(self.waiting) > self.spec.max_running - int(self.running.size)

    def poll_ahead(self, now: float, limit: int) -> list[Batch] | None:
        """Up to ``limit`` iterations decided now (only after `can_plan_next` said yes): those
        of a stretch of plain decodes at once (`_decode_stretch`), then one `poll`; each but
        the last has been applied. None when every request has finished."""
        stretch = self._decode_stretch(now, limit - 1)
        got = self.poll(now)
        if got is None and not stretch:
            return None
        assert isinstance(got, Batch), "a planned-ahead scheduler never idles"
        stretch.append(got)
        return stretch

    def _decode_stretch(self, now: float, limit: int) -> list[Batch]:
        """Iterations that `poll` then `_advance` would give one by one while every request
        has arrived, none waits and every running one decodes, up to the last before a request
        finishes or one is preempted (at most ``limit``): decided and applied at once. Each
        decodes every running request by one token and grows its KV blocks as
        `_grow_decodes` does; nothing is admitted, preempted, finished or emitted first."""
        run = self.running
        if limit < 1 or not self.all_arrived or self.waiting or not run.size:
            return []
        prefilled, target = self.prefilled[run], self.target[run]
        if not bool((prefilled >= target).all()):
            return []
        generated = self.generated[run]
        # iteration j emits each one's (generated + j + 1)-th token: none may reach its output
        count = min(limit, int((self.output[run] - generated).min()) - 1)
        if count < 1:
            return []
        step = np.arange(count, dtype=np.int64)[:, None]
        first_pos = prefilled + step  # [count, n]
        grown = (first_pos + self.block) // self.block  # ceil((kv + 1) / block), nondecreasing
        need = np.maximum(self.blocks[run], grown)  # the running maximum of _grow_decodes
        held = need.sum(axis=1)
        over = np.flatnonzero(held > self.kv_budget)
        if over.size:  # the first iteration that would preempt is left to `poll`
            count = int(over[0])
            if count < 1:
                return []
        n = int(run.size)
        ones = np.ones(n, dtype=np.int64)
        emits = np.ones(n, dtype=bool)
        no_first = run[:0]
        decided = (self.next_arrival, self.finished_count, 0)
        batches = []
        for j, (start_pos, blocks) in enumerate(zip(first_pos[:count], held[:count].tolist())):
            index = self.iterations + j
            batch = Batch(
                index=index,
                start=now,
                ids=run,
                first_pos=start_pos,
                new_tokens=ones,
                kv_after=start_pos + 1,
                emits=emits,
                decode_tokens=n,
                prefill_tokens=0,
            )
            batches.append(batch)
            row = self._new_row(batch, 0, 0, blocks)
            first = run[generated + j == 0] if j == 0 else no_first  # tokens out are j + 1 on
            self._untimed.append((row, [], first, no_first, *decided))
        self.prefilled[run] = prefilled + count
        self.generated[run] = generated + count
        self.blocks[run] = need[count - 1]
        self.blocks_held = int(held[count - 1])
        self.iterations += count
        return batches

    def _new_row(self, batch: Batch, admitted: int, preempted: int, blocks: int) -> list:
        """``batch``'s record (`ITERATION_COLUMNS`) as far as it is known when decided: its end,
        queue, arrivals and finishes are filled in later (`_advance`, `complete`)."""
        return [
            batch.index,
            batch.start,
            np.nan,  # t_end
            int(batch.ids.size),
            batch.decode_tokens,
            batch.prefill_tokens,
            0,  # queued, in_system, arrivals: set when the iteration is timed
            0,
            0,
            admitted,
            preempted,
            0,  # finished: set when its effects are applied
            blocks * self.block,
            blocks,
            self.kv_budget,
        ]

    def assign(self, request: int) -> None:
        """Serve ``request`` too (it has arrived, or arrives later than every one assigned)."""
        assert self.open, "assign() to a scheduler that serves every request"
        self.ids.append(request)  # type: ignore[union-attr]
        self.ids_arrival.append(float(self.requests.arrival[request]))  # type: ignore[union-attr]

    def close(self) -> None:
        """No more requests will be assigned."""
        self.open = False

    def outstanding(self) -> int:
        """Tokens its unfinished requests still have to process (prompt + output - 1, less
        the positions computed): the least-outstanding router's measure."""
        run = self.running
        total = int((self.prompt[run] + self.output[run] - 1 - self.prefilled[run]).sum())
        for r in self.waiting:
            total += int(self.prompt[r] + self.output[r] - 1)
        for r in self._ids_between(self.next_arrival, len(self.ids)):
            total += int(self.prompt[r] + self.output[r] - 1)
        return total

    def _arrived_by(self, t: float) -> int:
        """How many of its requests have arrived by ``t``."""
        if isinstance(self.ids_arrival, list):
            return bisect.bisect_right(self.ids_arrival, t)
        return int(np.searchsorted(self.ids_arrival, t, side="right"))

    def _ids_between(self, lo: int, hi: int) -> list[int]:
        ids = self.ids[lo:hi]
        return ids if isinstance(ids, list) else ids.tolist()

    def _advance(self) -> None:
        """The current iteration's effects: KV computed, tokens emitted, requests finished and
        their KV freed (the times come with `complete`)."""
        batch = self.current
        assert batch is not None, "complete() without an iteration"
        ids = batch.ids
        self.prefilled[ids] = batch.kv_after
        emit = ids[batch.emits]
        generated = self.generated[emit] + 1
        self.generated[emit] = generated
        first = emit[generated == 1]
        done = emit[generated >= self.output[emit]]
        if done.size:
            self.blocks_held -= int(self.blocks[done].sum())
            self.blocks[done] = 0
            mark = self._marked  # np.isin's answer, without its sort
            mark[done] = True
            self.running = self.running[~mark[self.running]]
            mark[done] = False
            self.finished_count += int(done.size)
        row = self._pending_row
        assert row is not None
        row[_COL["finished"]] = int(done.size)
        self._untimed.append((row, self._first_admissions, first, done, *self._decided_with))
        self._first_admissions = []
        self._pending_row = None
        self.current = None
        self.iterations += 1

    @property
    def all_arrived(self) -> bool:
        """Every request it will serve has arrived (and none will be assigned)."""
        return not self.open and self.next_arrival == len(self.ids)

    @property
    def all_finished(self) -> bool:
        return not self.open and self.finished_count == len(self.ids)

    # -- one iteration's decisions -----------------------------------------------------------
    def _grow_decodes(self) -> tuple[int, np.ndarray, np.ndarray]:
        """Reserve the KV block each decode may need; preempt from the most recently admitted
        until the rest fit. Returns how many were preempted, and the positions computed and
        whether it decodes of each request left running (for `_continue_prefills`)."""
        run = self.running
        prefilled = self.prefilled[run]
        if not run.size:
            return 0, prefilled, np.zeros(0, dtype=bool)
        decoding = prefilled >= self.target[run]
        held = self.blocks[run]
        grown = (prefilled + self.block) // self.block  # ceil((kv + 1) / block)
        if decoding.all():  # decodes only (the common case)
            need = np.maximum(held, grown)
        else:
            need = np.where(decoding, np.maximum(held, grown), held)
        everything = int(need.sum())
        if everything <= self.kv_budget:  # the common case: nobody is preempted
            self.blocks[run] = need
            self.blocks_held = everything
            return 0, prefilled, decoding
        total = np.cumsum(need)
        keep = int(np.searchsorted(total, self.kv_budget, side="right"))
        victims = run[keep:]
        for r in victims[::-1].tolist():  # the most recent first; the earliest ends in front
            self.preempted[r] += 1
            self.prefilled[r] = 0
            self.target[r] = 0
            self.waiting.appendleft(r)
        self.blocks[victims] = 0
        kept = run[:keep]
        self.blocks[kept] = need[:keep]
        self.blocks_held = int(total[keep - 1]) if keep else 0
        self.running = kept
        return int(victims.size), prefilled[:keep], decoding[:keep]  # the victims' reset only

    def _continue_prefills(
        self, prefilled: np.ndarray, decoding: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """Decodes (one token each), then chunks of the prefills in progress, in admission
        order: (request ids, first positions, new tokens) so far, how many are decodes, and
        the token budget left. ``prefilled``, ``decoding``: per running request, as
        `_grow_decodes` found them."""
        run = self.running
        budget = self.spec.max_batched_tokens
        n_decode = int(np.count_nonzero(decoding))
        if n_decode == run.size:  # decodes only (the common case)
            return run, prefilled, np.ones(run.size, dtype=np.int64), n_decode, budget - n_decode
        target = self.target[run]
        ids = run[decoding].tolist()
        first = prefilled[decoding].tolist()
        tokens = [1] * len(ids)
        budget -= len(ids)
        for r, done, tgt in zip(
            run[~decoding].tolist(), prefilled[~decoding].tolist(), target[~decoding].tolist()
        ):
            if budget <= 0:
                break
            chunk = min(tgt - done, budget)
            ids.append(r)
            first.append(done)
            tokens.append(chunk)
            budget -= chunk
        as_array = np.asarray
        arrays = (as_array(ids, np.int64), as_array(first, np.int64), as_array(tokens, np.int64))
        return (*arrays, n_decode, budget)

    def _admit(self, budget: int) -> tuple[list[int], list[int]]:
        """FCFS admissions: the admitted requests and the tokens of their first prefill pass
        in this iteration."""
        spec = self.spec
        free = self.kv_budget - self.blocks_held
        room = spec.max_running - int(self.running.size)
        admitted: list[int] = []
        chunks: list[int] = []
        while self.waiting and room > 0 and budget > 0:
            r = self.waiting[0]
            tgt = int(self.prompt[r] + self.generated[r])
            need = -(-tgt // self.block)
            if need > free or (not spec.chunked_prefill and tgt > budget):
                break
            self.waiting.popleft()
            chunk = min(tgt, budget)
            self.target[r] = tgt
            self.prefilled[r] = 0
            self.blocks[r] = need
            free -= need
            self.blocks_held += need
            budget -= chunk
            room -= 1
            if not self.was_admitted[r]:
                self.was_admitted[r] = True
                self._first_admissions.append(r)
            admitted.append(r)
            chunks.append(chunk)
        if admitted:
            self.running = np.concatenate([self.running, np.asarray(admitted, dtype=np.int64)])
        return admitted, chunks

    # -- records -----------------------------------------------------------------------------
    def iteration_table(self) -> dict[str, np.ndarray]:
        """One row per iteration (`ITERATION_COLUMNS`)."""
        table = np.array(self.rows, dtype=np.float64).reshape(-1, len(ITERATION_COLUMNS))
        out = {}
        for i, name in enumerate(ITERATION_COLUMNS):
            col = table[:, i]
            out[name] = col.copy() if name in ("t_start", "t_end") else col.astype(np.int64)
        return out


def check_fits(requests: RequestSet, spec: SchedulerSpec, kv_blocks: int) -> None:
    """Refuse, with one line, a workload some request of which could never run: its KV at
    the end (prompt + output - 1 tokens) above the whole KV budget, or, without chunked
    prefill, a prefill (a recompute may be prompt + output - 1 tokens long) above the token
    budget."""
    longest = requests.prompt + requests.output - 1
    blocks = -(-longest // spec.block_tokens)
    if blocks.size and int(blocks.max()) > kv_blocks:
        i = int(np.argmax(blocks))
        raise UserError(
            f"workload.memory: expected every request's KV cache to fit the KV budget of "
            f"{kv_blocks} blocks x {spec.block_tokens} tokens, got request {i} needing "
            f"{int(longest[i])} tokens ({int(blocks[i])} blocks); give the KV cache more HBM "
            f"(workload.memory.kv_capacity) or shorten the requests"
        )
    if not spec.chunked_prefill and longest.size:
        worst = int(longest.max())
        if worst > spec.max_batched_tokens:
            i = int(np.argmax(longest))
            raise UserError(
                f"workload.scheduler.max_batched_tokens: expected at least {worst} (request "
                f"{i}'s prompt + output - 1, the longest prefill it may need after a "
                f"preemption) without chunked prefill, got {spec.max_batched_tokens}; raise it "
                f"or set workload.scheduler.chunked_prefill: true"
            )
    if spec.max_batched_tokens < spec.max_running:
        raise UserError(
            f"workload.scheduler.max_batched_tokens: expected at least max_running "
            f"({spec.max_running}: every running request decodes a token per iteration), got "
            f"{spec.max_batched_tokens}"
        )
