"""`cdw agents run|status|stop`: research agents over the MCP tools (`workspace/agents/`)."""

from __future__ import annotations

import json
import time

import click
from rich.console import Group
from rich.live import Live

from .options import console, fail, slurm_options, take_slurm_options
from .tables import Column, table


@click.group("agents")
def agents_group() -> None:
    """Launch a team of research agents, watch them, stop them (AGENTS.md)."""


def _table(run, rows) -> Group:
    """Per agent: state, counts, budget left and last action, at the terminal's width."""
    counts = [Column(c, wrap=False) for c in ("turns", "tool calls", "refused", "evals", "findings")]
    cells = []
    for r in rows:
        b = r.budget_left
        left = f"{b.get('evaluations')} ev · {b.get('prompts')} pr · {b.get('minutes')} min"
        cells.append([r.author, r.state, str(r.turns), str(r.tool_calls), str(r.tool_errors), str(r.evaluations),
                      str(r.findings), left, r.last])  # fmt: skip
    return table(f"agents run {run.id} · {run.config.backend} · {run.config.model}",
                 ["agent", "state", *counts, "left", "last action"], cells, console.width)  # fmt: skip


@agents_group.command("run")
@click.option("--backend", type=click.Choice(["openai", "claude"]), default="openai", show_default=True,
              help="openai: openai-agents on any OpenAI-compatible endpoint; claude: claude-agent-sdk")  # fmt: skip
@click.option("--model", default=None, help="the agents' model (default: the one the --model-url server serves)")
@click.option("--model-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8102/v1")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="variable holding the model's key")
@click.option("--agents", "n", default=1, show_default=True, help="how many agents")
@click.option("--max-turns", default=20, show_default=True, help="model turns per agent")
@click.option("--directions", type=click.Path(dir_okay=False, exists=True), default=None,
              help="file with one research direction per line (default: spread over policy families)")  # fmt: skip
@click.option("--budget-evals", default=5, show_default=True, help="evaluations per agent (enforced by the tools)")
@click.option("--budget-prompts", default=200, show_default=True, help="prompts evaluated per agent, in all")
@click.option("--hours", default=1.0, show_default=True, help="wall-time budget of the run")
@click.option("--brief", type=click.Choice(["full", "short"]), default="full", show_default=True,
              help="full: AGENTS.md; short: a paragraph, for small local models with short contexts")  # fmt: skip
@click.option("--benchmark", default="humaneval", show_default=True, help="the benchmark the brief suggests")
@click.option("--temperature", type=float, default=None, help="sampling temperature (default: the server's)")
@click.option("--text-tool-calls", is_flag=True,
              help="openai backend: a tool call written as JSON text counts as a call (small models)")  # fmt: skip
@click.option("--quiet", is_flag=True, help="no live table")
@click.option("--slurm", is_flag=True, help="run each agent as a SLURM job, and return once they are submitted")
@slurm_options
def agents_run(backend, model, model_url, api_key_env, n, max_turns, directions, budget_evals, budget_prompts, hours,
               brief, benchmark, temperature, text_tool_calls, quiet, slurm, **kw) -> None:  # fmt: skip
    """Start N agents, each a fresh session with the MCP tools, its own policy folder and author name, and wait
    for them (Ctrl-C or `cdw agents stop` ends the run cleanly). Transcripts: .cdw/agents/<run>/agent-<i>.jsonl.

    Example (the local Qwen as the agents' model):
    cdw agents run --model-url http://127.0.0.1:8102/v1 --brief short --agents 2

    With --slurm, each agent is a SLURM job (limit: --hours plus a grace period, unless --time says otherwise);
    watch them with `cdw agents status --watch`, end them with `cdw agents stop`.
    """
    from servers.sbatch import SlurmError

    from ..agents import AgentsError, RunConfig, new_run, read_directions, status, submit_jobs, supervise

    options = take_slurm_options(kw, slurm)

    try:
        config = RunConfig(n, backend, model, model_url, api_key_env, max_turns, hours, budget_evals, budget_prompts,
                           read_directions(directions) if directions else (), brief, benchmark,
                           temperature, text_tool_calls)  # fmt: skip
        run = new_run(config)
    except (AgentsError, OSError) as e:
        fail(str(e))
    click.echo(f"run {run.id}: {n} agent(s), transcripts in {run.path}")
    if slurm:
        try:
            run = submit_jobs(run, options)
        except SlurmError as e:
            fail(f"{e} (jobs submitted before this one are recorded in {run.path / 'run.json'})")
        for a in run.agents:
            click.echo(f"  {a.author}: SLURM job {a.job_id}, output {run.path / f'agent-{a.index}.log'}")
        click.echo(f"watch: cdw agents status --watch {run.id}    stop: cdw agents stop {run.id}")
        return
    if quiet:
        run = supervise(run)
    else:
        with Live(_table(run, status(run)), console=console, refresh_per_second=1, transient=False) as live:
            run = supervise(run, on_tick=lambda r: live.update(_table(r, status(r))), tick_s=2.0)
    console.print(_table(run, status(run)))


@agents_group.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.option("--watch", is_flag=True, help="refresh every 2 s until every agent has ended")
def agents_status(run_id: str | None, as_json: bool, watch: bool) -> None:
    """Per agent: state, turns, tool calls (refused ones), evaluations, findings, budget left, last action."""
    from dataclasses import asdict

    from ..agents import AgentsError, load, status

    try:
        run = load(run_id)
    except AgentsError as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps({"run": run.id, "agents": [asdict(r) for r in status(run)]}, indent=2))
        return
    if not watch:
        console.print(_table(run, status(run)))
        return
    with Live(_table(run, status(run)), console=console, refresh_per_second=1) as live:
        while any(r.state in ("running", "starting", "queued") for r in status(run)):
            time.sleep(2)
            live.update(_table(run, status(run)))


@agents_group.command("stop")
@click.argument("run_id", required=False)
def agents_stop(run_id: str | None) -> None:
    """End a run cleanly: each agent writes its `end` line (stopped) and its MCP server exits."""
    from ..agents import AgentsError, load, status, stop

    try:
        run = load(run_id)
    except AgentsError as e:
        fail(str(e))
    stop(run)
    console.print(_table(run, status(run)))
