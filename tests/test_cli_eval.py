"""`cdw eval`, `sweep`, `baselines` and `judge-check` against in-test servers running in a background thread."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.fakeserver import prefers_longer
from tests.test_cli_width import assert_fits
from workspace.cli import main

# 80 columns (the rule) in the fast tier, wider in the slow one (each width runs the whole command again).
WIDTHS = (80, pytest.param(160, marks=pytest.mark.slow))


@pytest.fixture(scope="module")
def urls(start_toys):
    """The toy trio with a length-biased judge, as --weak-url/--strong-url/--judge-url flags (and the servers)."""
    toys = start_toys(judge=prefers_longer)
    return [f"--{role}-url={url}" for role, url in toys.urls.items()], toys


@pytest.fixture
def env(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Task {i}: do it."}) + "\n" for i in range(6)))
    return prompts


def cdw(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_eval_json_has_the_documented_fields_and_resumes_to_the_same_id(urls, env):
    flags, _ = urls
    args = ("eval", "--policy", "top1(tau=0.3, span=punct)", "--prompts", env, "--max-tokens", 120, "--json", *flags)
    r = cdw(*args)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in ("evaluation_id", "n", "f_weak", "utility", "u_weak", "recovery", "ci", "certified", "errors"):
        assert key in out
    assert out["n"] == 6 and out["errors"] == [] and out["certified"] is False
    assert set(out["ci"]) == {"f_weak", "utility", "u_weak", "recovery"}
    again = cdw(*args)
    assert json.loads(again.stdout)["evaluation_id"] == out["evaluation_id"]


def test_eval_table_says_why_it_is_not_certified(urls, env):
    flags, _ = urls
    r = cdw("eval", "--policy", "never", "--prompts", env, "--max-tokens", 120, *flags)
    assert r.exit_code == 0, r.output
    assert "recovery" in r.output and "not the canonical set" in r.output


@pytest.mark.slow  # the tables test below runs a sweep in the fast tier
def test_sweep_evaluates_each_point(urls, env):
    flags, _ = urls
    r = cdw("sweep", "--policy", "top1(tau=[0.1,0.3])", "--prompts", env, "--max-tokens", 120, "--json", *flags)
    assert r.exit_code == 0, r.output
    points = json.loads(r.stdout)
    assert [p["policy"] for p in points] == ["top1(tau=0.1)", "top1(tau=0.3)"]
    assert points[0]["evaluation_id"] != points[1]["evaluation_id"]


@pytest.mark.parametrize("width", WIDTHS)
def test_eval_sweep_and_baselines_tables_fit_the_terminal(urls, env, width):
    flags, _ = urls
    common = ("--prompts", env, "--max-tokens", 120, *flags)
    margins = ["margin(tau=0.05, span=sentence)", "margin(tau=0.1, span=sentence)"]
    for args, whole in (
        (("sweep", "--policy", "margin(tau=[0.05,0.1], span=sentence)"), margins),
        (("eval", "--policy", margins[0]), [margins[0], "recovery, one-sided 95% lower bound"]),
        (("baselines",), ["U_weak (weak only vs reference)", "U_strong (reference vs itself)"]),
    ):
        r = CliRunner().invoke(main, [str(a) for a in (*args, *common)], env={"COLUMNS": str(width)})
        assert r.exit_code == 0, r.output
        assert_fits(r.stdout, width, whole)  # stderr: the progress bars, redrawn in place


def test_baselines_and_judge_check(urls, env):
    flags, _ = urls
    r = cdw("baselines", "--prompts", env, "--max-tokens", 120, "--json", *flags)
    assert r.exit_code == 0, r.output
    b = json.loads(r.stdout)
    assert b["u_strong"] == 0.5 and b["gap"] == pytest.approx(0.5 - b["u_weak"]) and b["n"] == 6
    assert b["models"] == {"weak": "weak", "strong": "strong", "judge": "judge"}
    r = cdw("judge-check", "--baselines", b["baselines_id"], "--json", f"--judge-url={flags[2].split('=', 1)[1]}")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["n"] > 0 and d["max_abs_delta"] < 1e-9 and d["flipped"] == 0 and d["judge_changed"] == ""


def test_bad_arguments_are_clear_errors(urls, env):
    flags, _ = urls
    r = cdw("eval", "--policy", "nosuch(tau=1)", "--prompts", env, *flags)
    assert r.exit_code != 0 and "nosuch" in r.output
    r = cdw("eval", "--policy", "never", "--prompts", env, "--n", 3, *flags)
    assert r.exit_code != 0 and "choose one" in r.output
    r = cdw("eval", "--policy", "never", "--prompts", env.parent / "missing.jsonl", *flags)
    assert r.exit_code != 0 and "missing.jsonl" in r.output


@pytest.mark.slow  # a whole search through the CLI; tests/test_search.py runs searches in the fast tier
@pytest.mark.parametrize("width", (80, 160))
def test_search_shows_each_decision_and_reads_back(urls, tmp_path, width):
    flags, _ = urls
    for name, k in (("train", 10), ("test", 5)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"instruction": f"{name} {i}: do it."}) + "\n"
                                                        for i in range(k)))  # fmt: skip
    args = ["search", "--policy", "never", "--policy", "top1(tau=[0.1, 0.5], span=punct)", "--n0", 5, "--on",
            tmp_path / "train.jsonl", "--final", tmp_path / "test.jsonl", "--max-tokens", 120, *flags]  # fmt: skip
    r = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": str(width)})
    assert r.exit_code == 0, r.output
    assert_fits(r.stdout, width, ["rung 1 of 2 · train[:5] (n=5)", "rung 2 of 2 · train (n=10)"])
    assert "search of 3 candidates" in r.stdout and "at most 6 evaluations, 40 prompts" in r.stdout
    out = json.loads(cdw(*args, "--json").stdout)  # the same search: read back
    assert [len(x["candidates"]) for x in out["rungs"]] == [3, 2] and out["final"][0]["n"] == 5
    assert out["choice"] == out["rungs"][-1]["kept"][0] and f"choice {out['choice']}" in r.stdout
    assert out["record"] == f"records/searches/{out['search_id']}.jsonl"


def test_search_and_stop_arguments_are_clear_errors(urls, env):
    flags, _ = urls
    r = cdw("search", "--policy", "never", "--benchmark", "alpaca_eval", *flags)
    assert r.exit_code != 0 and "no fixed halves" in r.output
    r = cdw("search", "--policy", "never", "--on", env, "--final", env, *flags)
    assert r.exit_code != 0 and "held out" in r.output
    r = cdw("search", "--policy", "never", "--policy", "always", "--on", env, "--final", env.parent / "x.jsonl",
            "--n0", 3, *flags)  # fmt: skip
    assert r.exit_code != 0 and "x.jsonl" in r.output
    r = cdw("eval", "--policy", "never", "--prompts", env, "--stop-below", "nan", *flags)
    assert r.exit_code != 0 and "--stop-below" in r.output
