"""The one sweep loop (`workspace/evaluate/sweeps.py`): its points, strict and lenient errors, and records that are
the ones `evaluate` makes, whether the points ran one after another (the CLI) or at once (the notebook)."""

from __future__ import annotations

import pytest

from tests.test_evaluate import PROMPTS, SETTINGS, make_setup, numbers, servers  # noqa: F401 (a fixture)
from workspace.evaluate import evaluate, sweep, sweep_points
from workspace.policies import PolicyError

GRID = "top1(tau=[0.1, 0.3], span=punct)"
POINTS = ["top1(tau=0.1, span=punct)", "top1(tau=0.3, span=punct)"]


def test_points_in_grid_order_strict_refuses_lenient_keeps_the_error():
    points = sweep_points([GRID, "never"])
    assert [p.spec for p in points] == [*POINTS, "never"]
    assert all(p.policy is not None and p.policy.describe() == p.spec and p.error is None for p in points)
    for bad in ("margin(tau=[0.1", "nosuch(tau=1)"):
        with pytest.raises(PolicyError):
            sweep_points([GRID, bad])
    lenient = sweep_points([GRID, "nosuch(tau=1)", "margin(tau=[0.1"], strict=False)
    assert [p.spec for p in lenient] == [*POINTS, "nosuch(tau=1)", "margin(tau=[0.1"]
    assert lenient[2].error.startswith("PolicyError: ") and "unknown policy" in lenient[2].error
    assert lenient[3].error and lenient[3].policy is None and lenient[0].error is None
    assert sweep_points(lenient, strict=False) == lenient  # points given as points are kept as they are


@pytest.mark.slow  # three sweeps end to end; tests/test_cli_eval.py sweeps in the fast tier
async def test_serial_and_concurrent_sweeps_make_the_records_evaluate_makes(servers, records_dir, monkeypatch):  # noqa: F811
    seen = {"baselines": 0, "points": [], "phases": set()}

    def on_point(p):
        seen["points"].append(p.spec)

    def on_baselines(base):
        seen["baselines"] += 1
        assert base.complete

    async with make_setup(servers) as setup:
        serial = await sweep(GRID, PROMPTS, setup, SETTINGS, progress=False, on_point=on_point,
                             on_baselines=on_baselines, on_progress=lambda ph, *_: seen["phases"].add(ph))  # fmt: skip
        assert seen == {"baselines": 1, "points": POINTS, "phases": {"reference", "weak", "weak_preference",
                                                                     "generation", "preference"}}  # fmt: skip
        hits = {r: sum(s.hits.values()) for r, s in servers.items()}
        alone = [await evaluate(p, PROMPTS, setup, SETTINGS, progress=False) for p in POINTS]
        assert {r: sum(s.hits.values()) for r, s in servers.items()} == hits  # read back: the same records
    assert [p.id for p in serial] == [p.evaluation.id for p in serial] == [e.id for e in alone]
    assert [numbers(p.evaluation) for p in serial] == [numbers(e) for e in alone]

    monkeypatch.setenv("CDW_RECORDS_DIR", str(records_dir.parent / "records-concurrent"))  # made afresh, at once
    async with make_setup(servers) as setup:
        concurrent = await sweep(GRID, PROMPTS, setup, SETTINGS, progress=False, concurrent=True, strict=False)
    assert [p.evaluation.id for p in concurrent] == [p.id for p in serial]
    assert [numbers(p.evaluation) for p in concurrent] == [numbers(p.evaluation) for p in serial]
