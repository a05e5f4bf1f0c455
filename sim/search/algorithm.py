"""Search algorithms over lattice indices: bisection, the two-field staircase, the fallback grid.

A search is a generator: it yields the lattice points it needs next (tuples of indices, one
per varied field), is sent back their metric values, and returns an `Answer`. It knows nothing
of scenarios or simulations, so the driver (`sim.search.run`) can batch the requests of every
policy's search into one parallel round, and tests can drive it with plain functions.

Bisection, not golden-section: the question is where a metric crosses a threshold, which
bisection answers in ``ceil(log2(n))`` steps on an ``n``-value lattice; golden-section search
finds the minimum of a unimodal function, a different question.

Monotonicity is checked as the search goes: once the direction in which each field helps the
target is known (from the ends of the range, or the corners of the two-field rectangle), every
new point is compared with every point already evaluated that it dominates or is dominated by;
a metric that gets worse with more help is *non-monotone*, and the search falls back to a grid
that lists where the metric turns. Bisection only sees the points it evaluates: a dip between
them goes unseen.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

Point = tuple[int, ...]
Reply = dict[Point, float]
Search = Generator[list[Point], Reply, "Answer"]

OPERATORS = ("<=", ">=", "<", ">")
BOUNDARY = "boundary"  # found at the tolerance
WHOLE_RANGE = "whole range"  # met at every value of the range: the boundary lies beyond it
NOT_MET = "not met"  # met nowhere in the range
NON_MONOTONE = "non-monotone"  # the metric is not monotone: the grid's answer
SLACK = 1e-9  # relative: differences below this are float noise, not a change of direction


@dataclass(frozen=True)
class Goal:
    """``metric op value``: the target a search must just meet."""

    metric: str
    op: str  # one of OPERATORS
    value: float  # SI units

    def met(self, metric: float) -> bool:
        if self.op == "<=":
            return metric <= self.value
        if self.op == "<":
            return metric < self.value
        if self.op == ">=":
            return metric >= self.value
        return metric > self.value

    def score(self, metric: float) -> float:
        """Higher is better for the target: ``-metric`` for an upper limit."""
        return -metric if self.op in ("<=", "<") else metric


@dataclass(frozen=True)
class Step:
    """The boundary along the last varied field (at one value of the first, with two fields).

    ``at`` meets the target and ``wrong`` is its lattice neighbour one tolerance step the
    other way, which does not. ``at`` is None when no value meets (``wrong`` is then the best
    point seen); ``wrong`` is None when the boundary is an end of the range. ``inferred``: the
    point was not simulated, monotonicity says it meets (a two-field staircase that reached
    the bottom of the range)."""

    at: Point | None
    wrong: Point | None
    inferred: bool = False


@dataclass(frozen=True)
class Answer:
    status: str  # BOUNDARY, WHOLE_RANGE, NOT_MET or NON_MONOTONE
    steps: tuple[Step, ...]  # one field: one step; two fields: one per value of the first
    helps: tuple[int, ...]  # per field: +1 larger values help the target, -1 smaller, 0 flat
    turning: tuple[Point, ...] = ()  # non-monotone: the grid points where the metric turns
    seen: tuple[Point, Point] | None = None  # non-monotone: the pair that showed it


class NonMonotone(Exception):
    """``better`` has more help than ``worse`` in every field, yet a worse metric."""

    def __init__(self, better: Point, worse: Point) -> None:
        super().__init__(f"{better} vs {worse}")
        self.pair = (better, worse)


class _Book:
    """The points evaluated so far, and the monotonicity check of each new one."""

    def __init__(self, goal: Goal) -> None:
        self.goal = goal
        self.values: dict[Point, float] = {}
        self.helps: tuple[int, ...] | None = None  # set once the directions are known

    def ask(self, points: Sequence[Point], check: bool = True) -> Search:
        """Metric values of ``points``; yields those not evaluated yet (one batch)."""
        need = [p for p in dict.fromkeys(points) if p not in self.values]
        if need:
            reply = yield need
            for point in need:
                self.values[point] = float(reply[point])
            if check and self.helps is not None:
                self._check(need)
        return [self.values[p] for p in points]  # type: ignore[return-value]

    def _check(self, new: Sequence[Point]) -> None:
        assert self.helps is not None
        for p in new:
            for q, metric in self.values.items():
                order = _dominance(p, q, self.helps)
                if order == 0:
                    continue
                better, worse = (p, q) if order > 0 else (q, p)
                gain = self.goal.score(self.values[better]) - self.goal.score(self.values[worse])
                scale = max(abs(self.values[p]), abs(metric))
                if gain < -SLACK * scale:
                    raise NonMonotone(better, worse)


def _dominance(p: Point, q: Point, helps: tuple[int, ...]) -> int:
    """+1 if ``p`` has at least as much help as ``q`` in every field (and differs), -1 the
    other way round, 0 if incomparable or equal."""
    diffs = [h * (a - b) for h, a, b in zip(helps, p, q)]
    if all(d >= 0 for d in diffs) and any(d > 0 for d in diffs):
        return 1
    if all(d <= 0 for d in diffs) and any(d < 0 for d in diffs):
        return -1
    return 0


def spread(size: int, count: int) -> list[int]:
    """``count`` lattice indices evenly spaced from the first to the last (all when fewer)."""
    if count >= size:
        return list(range(size))
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)})


# -- one field -----------------------------------------------------------------------------------
def line_search(size: int, goal: Goal, grid: int) -> Search:
    """The boundary of one field on a lattice of ``size`` values: both ends, then bisection;
    ``grid`` values (and every one seen) when the metric turns out not to be monotone."""
    book = _Book(goal)
    lo, hi = (0,), (size - 1,)
    m_lo, m_hi = yield from book.ask([lo, hi])
    trend = _sign(goal.score(m_hi) - goal.score(m_lo), m_lo, m_hi)
    met_lo, met_hi = goal.met(m_lo), goal.met(m_hi)
    if met_lo and met_hi:  # the end with the least help already meets
        return Answer(WHOLE_RANGE, (Step(hi if trend < 0 else lo, None),), (trend,))
    if not met_lo and not met_hi:
        return Answer(NOT_MET, (Step(None, lo if trend < 0 else hi),), (trend,))
    helps = 1 if met_hi else -1
    book.helps = (helps,)
    good, bad = (size - 1, 0) if met_hi else (0, size - 1)
    try:
        good, bad = yield from _bisect(book, lambda i: (i,), good, bad)
    except NonMonotone as seen:
        return (yield from _line_grid(book, size, grid, helps, seen.pair))
    return Answer(BOUNDARY, (Step((good,), (bad,)),), (helps,))


def _bisect(book: _Book, point: Callable[[int], Point], good: int, bad: int) -> Search:
    """Narrow ``good`` (meets) and ``bad`` (does not) to neighbours; returns (good, bad)."""
    while abs(good - bad) > 1:
        mid = (good + bad) // 2
        (metric,) = yield from book.ask([point(mid)])
        if book.goal.met(metric):
            good = mid
        else:
            bad = mid
    return good, bad  # type: ignore[return-value]


def _line_grid(book: _Book, size: int, count: int, helps: int, seen: tuple[Point, Point]) -> Search:
    """The fallback: ``count`` evenly spaced values plus every value seen; the boundary is the
    last value, walking in from the end that meets, from which every grid value meets."""
    indices = sorted(set(spread(size, count)) | {p[0] for p in book.values})
    values = yield from book.ask([(i,) for i in indices], check=False)
    turning = tuple((indices[j],) for j in _turning_points(values))
    walk = indices[::-1] if helps > 0 else indices
    step = _safe_step([(i,) for i in walk], book)
    return Answer(NON_MONOTONE, (step,), (helps,), turning, seen)


def _safe_step(walk: Sequence[Point], book: _Book) -> Step:
    """Along ``walk`` (from the most helpful end), the last point of the leading run that
    meets, and the first that does not."""
    if not book.goal.met(book.values[walk[0]]):
        return Step(None, walk[0])
    for previous, point in itertools.pairwise(walk):
        if not book.goal.met(book.values[point]):
            return Step(previous, point)
    return Step(walk[-1], None)


def _turning_points(values: Sequence[float]) -> list[int]:
    """Interior positions where the sequence changes direction (plateaus at a turn count)."""
    signs = [_sign(b - a, a, b) for a, b in itertools.pairwise(values)]
    found = []
    for j in range(1, len(values) - 1):
        left = next((s for s in reversed(signs[:j]) if s), 0)
        right = next((s for s in signs[j:] if s), 0)
        if left and right and left != right:
            found.append(j)
    return found


def _sign(diff: float, a: float, b: float) -> int:
    if abs(diff) <= SLACK * max(abs(a), abs(b)):
        return 0
    return 1 if diff > 0 else -1


# -- two fields ----------------------------------------------------------------------------------
def frontier_search(sizes: tuple[int, int], goal: Goal, grid: int) -> Search:
    """The Pareto frontier of two fields by a staircase: at ``grid`` values of the first
    field, from the one with the least help, the boundary of the second by bisection, bracketed
    by the previous value's boundary (with more help in the first field, no more is needed in
    the second). Falls back to a ``grid`` x ``grid`` grid when the metric is not monotone."""
    nx, ny = sizes
    book = _Book(goal)
    corners = [(0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1)]
    metric = dict(zip(corners, (yield from book.ask(corners))))
    helps = []
    for axis in (0, 1):
        signs = set()
        for end in (0, sizes[1 - axis] - 1):
            low, high = _corner(axis, 0, end), _corner(axis, sizes[axis] - 1, end)
            a, b = metric[low], metric[high]
            signs.add(_sign(goal.score(b) - goal.score(a), a, b))
        signs.discard(0)
        if len(signs) > 1:  # one end of the other field says up, the other down
            other = sizes[1 - axis] - 1
            seen = (_corner(axis, 0, other), _corner(axis, sizes[axis] - 1, other))
            return (yield from _plane_grid(book, sizes, grid, (1, 1), seen))
        helps.append(signs.pop() if signs else 1)
    hx, hy = helps
    book.helps = (hx, hy)

    def x_at(t: int) -> int:
        return t if hx > 0 else nx - 1 - t

    def y_at(t: int) -> int:
        return t if hy > 0 else ny - 1 - t

    best, worst = (x_at(nx - 1), y_at(ny - 1)), (x_at(0), y_at(0))
    if not goal.met(metric[best]):
        return Answer(NOT_MET, (Step(None, best),), (hx, hy))
    if goal.met(metric[worst]):
        return Answer(WHOLE_RANGE, (Step(worst, None),), (hx, hy))
    steps: list[Step] = []
    good: int | None = None  # help index along y of the previous boundary
    try:
        for x in (x_at(t) for t in spread(nx, grid)):
            if good == 0:  # the bottom already met with less help in x
                bottom_point = (x, y_at(0))
                steps.append(Step(bottom_point, None, inferred=bottom_point not in book.values))
                continue
            if good is None:
                (top,) = yield from book.ask([(x, y_at(ny - 1))])
                if not goal.met(top):
                    steps.append(Step(None, (x, y_at(ny - 1))))
                    continue
                good = ny - 1
            (bottom,) = yield from book.ask([(x, y_at(0))])
            if goal.met(bottom):
                good = 0
                steps.append(Step((x, y_at(0)), None))
                continue
            good, bad = yield from _bisect(book, lambda t, x=x: (x, y_at(t)), good, 0)
            yield from book.ask([(x, y_at(good))])  # simulate a boundary known from the last x
            steps.append(Step((x, y_at(good)), (x, y_at(bad))))
    except NonMonotone as seen:
        return (yield from _plane_grid(book, sizes, grid, (hx, hy), seen.pair))
    return Answer(BOUNDARY, tuple(steps), (hx, hy))


def _corner(axis: int, index: int, other: int) -> Point:
    return (index, other) if axis == 0 else (other, index)


def _plane_grid(
    book: _Book,
    sizes: tuple[int, int],
    count: int,
    helps: tuple[int, int],
    seen: tuple[Point, Point],
) -> Search:
    """The two-field fallback: a ``count`` x ``count`` grid; per value of the first field the
    safe boundary of the second (as `_line_grid`); turning points along rows and columns."""
    xs, ys = spread(sizes[0], count), spread(sizes[1], count)
    yield from book.ask([(x, y) for x in xs for y in ys], check=False)
    turning: set[Point] = set()
    for x in xs:
        turning |= {(x, ys[j]) for j in _turning_points([book.values[x, y] for y in ys])}
    for y in ys:
        turning |= {(xs[j], y) for j in _turning_points([book.values[x, y] for x in xs])}
    hx, hy = helps
    steps = tuple(
        _safe_step([(x, y) for y in (ys[::-1] if hy > 0 else ys)], book)
        for x in (xs if hx > 0 else xs[::-1])
    )
    return Answer(NON_MONOTONE, steps, helps, tuple(sorted(turning)), seen)


def pareto(steps: Sequence[Step]) -> list[bool]:
    """Which steps of a staircase are on the Pareto frontier: each boundary that needs less of
    the second field than the one before (the first that meets at all included)."""
    flags = []
    previous: Point | None = None
    for step in steps:
        on = step.at is not None and (previous is None or step.at[1] != previous[1])
        flags.append(on)
        if step.at is not None:
            previous = step.at
    return flags
