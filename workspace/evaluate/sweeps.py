"""Sweeps: every point of a policy grid evaluated on the same prompts, against one baselines record made first.

The one sweep loop: `cdw sweep` runs it strictly (the first error stops it, one point after another) and the
notebook's sweep widget runs it concurrently, keeping each point's error on its row. Each point is an ordinary
`evaluate`, so its record and id are the same however the sweep ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..benchmarks import PromptSet
from ..policies import Policy, PolicyError, expand_spec, load_policy
from ..stats import StopRule
from .baselines import ensure_baselines
from .phases import OnProgress
from .results import Baselines, Evaluation
from .runs import evaluate, evaluation_id
from .setup import EvalSettings, Setup


@dataclass
class SweepPoint:
    """One point of a sweep: its spec and policy, then its evaluation's record id (known before it runs) and its
    evaluation, or why it has none."""

    spec: str
    policy: Policy | None = None
    id: str | None = None
    evaluation: Evaluation | None = None
    error: str | None = None


def sweep_points(specs: str | Sequence[str | SweepPoint], strict: bool = True) -> list[SweepPoint]:
    """The points of one grid spec or several (`margin(tau=[0.02, 0.05])`), grid order, each policy loaded (points
    given as such are kept). `strict`: a spec that does not parse or a policy that does not load raises, so
    nothing runs; otherwise it becomes a point with its error."""
    points: list[SweepPoint] = []
    for s in [specs] if isinstance(specs, str) else specs:
        if isinstance(s, SweepPoint):
            points.append(s)
            continue
        try:
            points += [SweepPoint(x) for x in expand_spec(s)]
        except PolicyError as e:
            if strict:
                raise
            points.append(SweepPoint(s, error=str(e)))
    for p in points:  # every point must load before any runs
        if p.error is None and p.policy is None:
            try:
                p.policy = load_policy(p.spec)
            except Exception as e:
                if strict:
                    raise
                p.error = f"{type(e).__name__}: {e}"
    return points


async def sweep(
    specs: str | Sequence[str | SweepPoint],
    prompts: PromptSet,
    setup: Setup,
    settings: EvalSettings | None = None,
    progress: bool = True,
    on_progress: OnProgress | None = None,
    on_point: Callable[[SweepPoint], None] | None = None,
    on_baselines: Callable[[Baselines], None] | None = None,
    concurrent: bool = False,
    strict: bool = True,
    stop: StopRule | None = None,
) -> list[SweepPoint]:
    """Evaluate every point of a policy grid on the same prompts; returns the points in grid order.

    The baselines are made (or read) first, once for every point. Then the points run one after another, or all
    at once with `concurrent` when the baselines are complete (while some baseline examples failed, each
    evaluation retries them, and a record has one writer at a time). Points already on record are read back.

    Progress: `progress` shows tqdm bars; `on_progress(phase, done, total)` is called as work is recorded (by the
    baselines and every point); `on_baselines(baselines)` once they are ready; `on_point(point)` as each point
    ends. `strict`: the first error raises; otherwise a point that fails keeps its error and never stops the
    others (a failure of the baselines still raises: no point can run without them). `stop`: every point runs under
    this early stopping rule (`evaluate`'s `stop`).
    """
    settings = settings or EvalSettings()
    points = sweep_points(specs, strict)
    base = await ensure_baselines(prompts, setup, settings, progress, on_progress)
    if on_baselines:
        on_baselines(base)
    todo = [p for p in points if p.error is None]
    for p in todo:
        try:
            p.id = await evaluation_id(p.policy, prompts, setup, settings)
        except Exception as e:
            if strict:
                raise
            p.error = f"{type(e).__name__}: {e}"

    async def one(p: SweepPoint) -> None:
        try:
            p.evaluation = await evaluate(p.policy, prompts, setup, settings, progress, on_progress=on_progress,
                                          stop=stop)  # fmt: skip
        except Exception as e:
            if strict:
                raise
            p.error = f"{type(e).__name__}: {e}"
        if on_point:
            on_point(p)

    todo = [p for p in todo if p.error is None]
    if concurrent and base.complete:
        await asyncio.gather(*(one(p) for p in todo))
    else:
        for p in todo:
            await one(p)
    return points
