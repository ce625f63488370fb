"""Every CLI table is readable at 80 columns and at 160: no line wider than the terminal, and the name a row is about
(a policy, a role, an agent, a finding's title) whole on one line, never dropped or broken (workspace/cli/tables.py).

Tables with toy servers behind them (eval, sweep, baselines) are checked in tests/test_cli_eval.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from rich.cells import cell_len
from rich.console import Console

from workspace.cli import main
from workspace.cli.tables import Column, table

PROJECT = Path(__file__).resolve().parents[1]
WIDTHS = (80, 160)
POLICIES = ["margin(tau=0.05, span=sentence)", "probe(path='probes/humaneval-logistic.json', tau=0.94, span=newline)"]


def cdw(width: int, *args, code: int = 0) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args], env={"COLUMNS": str(width)}, catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r.output


def assert_fits(output: str, width: int, whole=()) -> None:
    """No line wider than `width`; each of `whole` within one line (it may share it)."""
    lines = output.split("\n")
    assert not [x for x in lines if cell_len(x) > width], "\n".join(x for x in lines if cell_len(x) > width)
    for name in whole:
        assert any(name in x for x in lines), f"{name!r} is not whole on a line:\n{output}"


def test_a_table_that_cannot_fit_becomes_one_block_per_row_with_its_key_whole():
    rows = [[p, "0.512\n0.48–0.54", "0.937 [0.901, 0.968]", "a long note that wraps " * 4, "ab5664ef33b80921"]
            for p in POLICIES]  # fmt: skip
    columns = ["policy", Column("f_weak", wrap=False), Column("recovery", wrap=False), "note", Column("id", False)]
    for width in WIDTHS:
        console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
        console.print(table("sweep · alpaca_eval (n=100)", columns, rows, width))
        out = console.export_text()
        assert_fits(out, width, [*POLICIES, "0.937 [0.901, 0.968]", "ab5664ef33b80921", "sweep"])
        boxed = "┃ policy" in out
        assert boxed == (width == 160)  # 80 columns cannot show five readable columns beside the long policy
        if not boxed:  # the key alone on its line, the rest as `header value` items under it
            assert f"\n{POLICIES[1]}\n" in out and "  f_weak 0.512 0.48–0.54 · recovery 0.937" in out


def test_a_table_that_fits_stays_a_table_and_an_empty_one_keeps_its_headers():
    small = table(None, ["scorer", "ROC-AUC"], [["margin", "0.71"], ["probe", "0.83"]], 80)
    empty = table(None, ["created (UTC)", "kind", "title"], [], 80)
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(small, empty)
    out = console.export_text()
    assert "┃ scorer ┃ ROC-AUC ┃" in out and "│ probe  │ 0.83    │" in out and "┃ created (UTC) ┃ kind ┃ title ┃" in out


@pytest.fixture
def project_records(tmp_path, monkeypatch):
    """A copy of the project's own records and findings, trusted as the project trusts them."""
    for name in ("records", "findings"):
        shutil.copytree(PROJECT / name, tmp_path / name)
        monkeypatch.setenv(f"CDW_{name.upper()}_DIR", str(tmp_path / name))
    monkeypatch.setenv("CDW_TRUSTED_KEYS", str(tmp_path / "records" / "trusted_keys.txt"))


# Every committed record is loaded and checked per command (seconds each): the slow tier. The fast tier's tables are
# the unit tests above and the tables below.
@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_leaderboard_and_findings_fit_with_every_policy_whole(project_records, width):
    from workspace.forum import get_findings
    from workspace.leaderboard import get_leaderboard

    board = get_leaderboard()
    policies = {e.policy for e in board.evaluations + board.baselines}
    assert len(policies) > 5 and any(len(p) > 60 for p in policies)  # the records hold long probe specs
    assert_fits(cdw(width, "leaderboard"), width, policies)
    findings = get_findings()
    titles = [f.title for f in findings if len(f.title) <= width]  # a longer title cannot be on one line
    assert_fits(cdw(width, "findings", "list"), width, [*titles, *(f.policy for f in findings if f.policy)])
    cited = next(f for f in findings if f.evaluation)
    out = cdw(width, "findings", "show", cited.id)
    assert_fits(out, width, ["recovery, one-sided 95% lower bound", cited.evaluation])


@pytest.mark.parametrize("width", WIDTHS)
def test_status_fits_with_its_roles_urls_and_jobs(width, monkeypatch):
    from servers import control

    state = SimpleNamespace(state="PENDING", active=True, node="", describe=lambda: "PENDING (Resources)")
    job = SimpleNamespace(job=SimpleNamespace(job_id="4242", name="cdw-paper-multi-gpu-strong", roles=("strong",),
                                              log="/scratch/someone/cdw/logs/paper-multi-gpu-strong-4242.log"),
                          state=state, servers=[], log="")  # fmt: skip
    monkeypatch.setattr(control, "status", lambda preset=None: SimpleNamespace(jobs=(job,)))
    urls = {r: f"http://127.0.0.1:{p}" for r, p in (("weak", 9), ("strong", 11), ("judge", 13))}
    out = cdw(width, "status", *(f"--{r}-url={u}" for r, u in urls.items()), code=1)  # nothing answers
    assert_fits(out, width, ["weak", "strong", "judge", *urls.values(), "cdw-paper-multi-gpu-strong", "4242"])


@pytest.mark.parametrize("width", WIDTHS)
def test_models_list_fits(width):
    from servers.presets import load_catalog

    assert_fits(cdw(width, "models", "list"), width, list(load_catalog().models))


@pytest.mark.parametrize("width", WIDTHS)
def test_agents_status_fits_with_each_agent_whole(width, monkeypatch):
    import workspace.agents as agents
    from workspace.agents import RunConfig, new_run
    from workspace.agents.run import AgentStatus

    run = new_run(RunConfig(agents=2, model="Qwen/Qwen2.5-7B-Instruct-AWQ", model_url="http://127.0.0.1:8102/v1"))
    rows = [AgentStatus(a.index, a.author, "running", 14, 31, 2, 3, 1, {"evaluations": 2, "prompts": 140,
                        "minutes": 37}, "evaluate_policy(margin(tau=0.05, span=sentence), n=40)")
            for a in run.agents]  # fmt: skip
    monkeypatch.setattr(agents, "status", lambda r: rows)
    out = cdw(width, "agents", "status", run.id)
    assert_fits(out, width, [a.author for a in run.agents] + ["tool calls", "evaluate_policy(margin(tau=0.05,"])


@pytest.mark.parametrize("width", WIDTHS)
def test_traces_show_fits(width, tmp_path, monkeypatch):
    from workspace.router import labels, traces

    meta = {"prompts": "humaneval:train", "policy": POLICIES[1], "top_k": 20,
            "models": {"weak": "Qwen/Qwen2.5-0.5B-Instruct", "strong": "Qwen/Qwen2.5-7B-Instruct"}}  # fmt: skip
    monkeypatch.setattr(traces, "read", lambda path: SimpleNamespace(meta=meta, decodes=[0] * 82, tokens=[0] * 9000))
    monkeypatch.setattr(labels, "read_labels", lambda t, s: [SimpleNamespace(label=i % 3 == 0) for i in range(30)])
    out = cdw(width, "traces", "show", tmp_path)
    assert_fits(out, width, [POLICIES[1], "labels disagreement: 30, harmful 10 (33.3%)"])
