"""A run of N research agents: its folder, its workers, their budgets, and how to watch and stop it.

`.cdw/agents/<run>/` (under CDW_HOME) holds:
- `run.json` — the run's settings, each agent's author, direction and process id, the supervisor's pid, the deadline
- `agent-<i>/policies/` — the agent's own policy folder (a copy of `policies/`): the only place its `write_policy`
  calls write to and the only folder its evaluations load policy files from
- `agent-<i>/usage.json` — evaluations and prompts spent (the MCP tools count and enforce them)
- `agent-<i>.jsonl` — the transcript (`workspace/agents/transcript.py`), `agent-<i>.log` — the worker's stderr
- `stop` — present once `cdw agents stop` asked the run to end

Each agent is its own process (`python -m workspace.agents.worker`), with its own MCP server subprocess (stdio),
so an agent that crashes or hangs is ended alone: the supervisor kills a worker that outlives the time budget and
writes the `end` line it could not write. The MCP servers share the model servers' capacity (each gets an equal
share of `max_in_flight`) and the call cache.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import psutil

from servers import sbatch
from servers.sbatch import JobState, SlurmError, SlurmOptions
from servers.settings import PROJECT_ROOT, paths

from .budget import Budget
from .transcript import END_STATES, Transcript, is_tool_error, read, summary

BACKENDS = ("openai", "claude")
FAMILIES = (
    "margin gates and their span rules (sentence, newline, agree:N): where does a hesitation signal pay off?",
    "entropy and surprisal gates: do they catch confident mistakes that margin misses?",
    "wrappers (hysteresis, window, warmup): fewer, better-placed handoffs from the same signal",
    "budget-calibrated gates (budget(margin(...), rate=...)): a fixed deferral rate per answer",
    "lookahead: ask the strong model's next word before handing over, defer only on disagreement",
    "a learned probe (probe(path=..., tau=...)): thresholds on predicted harm instead of one signal",
    "position schedules: should the strong model write the opening lines (warmup(k=...))?",
    "refutation: re-run the best result on the leaderboard with other prompts and look for where it breaks",
)


class AgentsError(RuntimeError):
    """A run that cannot start or be found (bad settings, no such run)."""


@dataclass(frozen=True)
class RunConfig:
    agents: int = 1
    backend: str = "openai"
    model: str | None = None  # None: the one model the server at model_url serves (GET /v1/models)
    model_url: str | None = None  # an OpenAI-compatible base URL (…/v1); None: the backend's default service
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key (a local server needs none)
    max_turns: int = 20
    hours: float = 1.0
    budget_evals: int = 5
    budget_prompts: int = 200
    directions: tuple[str, ...] = ()  # one per agent (cycled); empty: spread over FAMILIES
    brief: str = "full"  # "full": AGENTS.md; "short": a paragraph (small local models with short contexts)
    benchmark: str = "humaneval"  # what the brief suggests evaluating on
    temperature: float | None = None  # the agents' sampling temperature (None: the model server's default)
    text_tool_calls: bool = False  # openai backend: read tool calls a small model writes as JSON text

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise AgentsError(f"unknown backend {self.backend!r}; one of {', '.join(BACKENDS)}")
        if self.agents < 1 or self.max_turns < 1 or self.hours <= 0:
            raise AgentsError("--agents and --max-turns must be >= 1 and --hours > 0")
        if self.budget_evals < 0 or self.budget_prompts < 0:
            raise AgentsError("budgets cannot be negative")
        if self.brief not in ("full", "short"):
            raise AgentsError("--brief is full or short")
        if self.model is None and (self.backend != "openai" or self.model_url is None):
            raise AgentsError("name the agents' model with --model (only a --model-url server can be asked for it)")


def served_model(base_url: str, timeout: float = 30.0) -> str:
    """The model an OpenAI-compatible server serves (the first of GET <base_url>/models)."""
    import urllib.request

    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout) as r:
            models = [m["id"] for m in json.loads(r.read())["data"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AgentsError(f"cannot ask {base_url} which model it serves ({type(e).__name__}: {e}); pass --model") from e
    if not models:
        raise AgentsError(f"{base_url} serves no model")
    return models[0]


@dataclass(frozen=True)
class AgentInfo:
    index: int
    author: str
    direction: str
    folder: str
    pid: int | None = None
    job_id: str | None = None  # the SLURM job running it (`cdw agents run --slurm`)


@dataclass(frozen=True)
class Run:
    id: str
    path: Path
    config: RunConfig
    agents: tuple[AgentInfo, ...]
    started: float
    deadline: float
    supervisor: int | None = None

    def transcript(self, i: int) -> Transcript:
        return Transcript(self.path / f"agent-{i}.jsonl")

    def budget(self, i: int) -> Budget:
        c = self.config
        return Budget(self.path / f"agent-{i}" / "usage.json", c.budget_evals, c.budget_prompts)

    def to_json(self) -> dict:
        return {"id": self.id, "config": asdict(self.config), "agents": [asdict(a) for a in self.agents],
                "started": self.started, "deadline": self.deadline, "supervisor": self.supervisor}  # fmt: skip

    def save(self) -> None:
        tmp = self.path / ".run.json.partial"
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        tmp.replace(self.path / "run.json")


def agents_dir() -> Path:
    return paths().home / "agents"


def load(run_id: str | None = None) -> Run:
    """A run by id (None: the newest)."""
    root = agents_dir()
    if run_id is None:
        runs = sorted((p.parent.name for p in root.glob("*/run.json")), reverse=True) if root.is_dir() else []
        if not runs:
            raise AgentsError(f"no agent runs in {root}; start one with `cdw agents run`")
        run_id = runs[0]
    path = root / run_id
    try:
        d = json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        raise AgentsError(f"no agent run {run_id!r} in {root}") from None
    cfg = d["config"]
    cfg["directions"] = tuple(cfg.get("directions") or ())
    return Run(d["id"], path, RunConfig(**cfg), tuple(AgentInfo(**a) for a in d["agents"]), d["started"],
               d["deadline"], d.get("supervisor"))  # fmt: skip


def read_directions(path: str | Path) -> tuple[str, ...]:
    """Research directions from a file: one per non-empty line (lines starting with # are comments)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = tuple(x.strip() for x in lines if x.strip() and not x.strip().startswith("#"))
    if not out:
        raise AgentsError(f"{path}: no directions (one per line)")
    return out


SHORT_BRIEF = """\
You research deferral policies for collaborative decoding. A weak model writes an answer; a policy reads its
token probabilities and hands one span to a strong model when unsure. Goal: keep f_weak (the weak model's share
of the text) high while recovery (quality regained, 1.0 = as good as the strong model) stays high.
Use the tools: get_findings (read what others found), evaluate_policy (e.g. policy="margin(tau=0.05, span=newline)",
prompts=5, benchmark="{benchmark}"), share_finding (kind "hypothesis", "negative", "result" or "insight"; a result
names its evaluation_id). Built-in policies: margin(tau), entropy(tau), top1(tau), never, always."""


def brief(config: RunConfig, author: str, direction: str, folder: Path) -> str:
    """What an agent is told: the project's brief (AGENTS.md, or a paragraph for small models), then its session."""
    if config.brief == "short":
        head = SHORT_BRIEF.format(benchmark=config.benchmark)
    else:
        head = (PROJECT_ROOT / "AGENTS.md").read_text(encoding="utf-8")
    return f"""{head}

## Your session
- You are {author}. Findings you share are signed with this name by the server; you cannot post as anyone else.
- Your research direction: {direction}
- Your policy folder is your own: {
        'write files there with write_policy(filename, source) and evaluate them as "file.py:Class(arg=value)". '
        if config.brief == "full"
        else ""
    }list_policies shows your files and your budget.
- Budgets (the tools enforce them): {config.budget_evals} evaluations, {config.budget_prompts} prompts in all,
  {config.max_turns} turns, {config.hours:g} hours. Suggested benchmark: {config.benchmark}; start with few prompts.
- Read the forum first (get_findings), then act. End with share_finding: what you tried and what it showed,
  negative results included."""


def new_run(config: RunConfig) -> Run:
    """Create the run's folder, each agent's policy folder and the run file (no process started yet)."""
    config.check()
    if config.model is None:
        config = replace(config, model=served_model(config.model_url))
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    path = agents_dir() / run_id
    path.mkdir(parents=True)
    directions = config.directions or FAMILIES
    agents = []
    for i in range(config.agents):
        folder = path / f"agent-{i}" / "policies"
        shutil.copytree(PROJECT_ROOT / "policies", folder, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        agents.append(AgentInfo(i, f"agent-{run_id}-{i}", directions[i % len(directions)], str(folder)))
    started = time.time()
    run = Run(run_id, path, config, tuple(agents), started, started + config.hours * 3600)
    run.save()
    return run


def _start_worker(run: Run, i: int) -> subprocess.Popen:
    log = (run.path / f"agent-{i}.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "workspace.agents.worker", str(run.path), str(i)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                            start_new_session=True)  # fmt: skip


GRACE_S = 20.0  # after the deadline (or a stop), how long a worker has to end itself before it is killed


def submit_jobs(run: Run, options: SlurmOptions) -> Run:
    """Run each agent as its own SLURM job (the same worker a local run starts) and record the job ids.

    Without a --time, each job's limit is the run's hours plus a grace period: the worker ends itself at the
    deadline, and SLURM ends a hung one a little later (`status` then reports it as time_budget)."""
    from servers.jobs import submit

    if options.time is None:
        options = replace(options, time=str(math.ceil(run.config.hours * 60 + GRACE_S / 60) + 1))
    agents = []
    try:
        for a in run.agents:
            command = [sys.executable, "-m", "workspace.agents.worker", str(run.path), str(a.index)]
            job = submit(f"cdw-agent-{a.index}", command, options, workdir=PROJECT_ROOT,
                         log=run.path / f"agent-{a.index}.log")  # fmt: skip
            agents.append(replace(a, job_id=job.job_id))
    finally:  # what was submitted is recorded, even if a later submission failed
        run = replace(run, agents=tuple(agents) + run.agents[len(agents) :])
        run.save()
    return run


def supervise(run: Run, on_tick: Callable[[Run], None] | None = None, tick_s: float = 1.0) -> Run:
    """Start every agent's worker and wait for all of them: the deadline, a stop request or each agent's end.
    A worker that has not ended GRACE_S after the deadline (a hung agent) is killed and its end written here."""
    procs = {a.index: _start_worker(run, a.index) for a in run.agents}
    run = replace(run, agents=tuple(replace(a, pid=procs[a.index].pid) for a in run.agents), supervisor=os.getpid())
    run.save()
    stop_asked: float | None = None
    try:
        while any(p.poll() is None for p in procs.values()):
            now = time.time()
            if stop_asked is None and (run.path / "stop").exists():
                stop_asked = now
                for p in procs.values():
                    _signal(p, signal.SIGTERM)
            limit = min(run.deadline, stop_asked or run.deadline) + GRACE_S
            if now > limit:
                for i, p in procs.items():
                    if p.poll() is None:
                        _kill(p)
                        if run.transcript(i).ended() is None:
                            status = "stopped" if stop_asked else "time_budget"
                            run.transcript(i).append("end", status=status, detail="killed by the supervisor: it "
                                                     "did not end by itself")  # fmt: skip
            if on_tick is not None:
                on_tick(run)
            time.sleep(tick_s)
    except KeyboardInterrupt:
        (run.path / "stop").touch()
        for p in procs.values():
            _signal(p, signal.SIGTERM)
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(GRACE_S)
            _kill(p)
    for i, p in procs.items():  # a worker that died without its end line (a crash of the process itself)
        p.wait()
        if run.transcript(i).ended() is None:
            run.transcript(i).append("end", status="crashed", detail=f"the worker exited with status {p.returncode}"
                                     f" (see agent-{i}.log)")  # fmt: skip
    return run


def _signal(p: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def _kill(p: subprocess.Popen) -> None:
    """Kill a worker and everything it started (its MCP server, the model SDK's subprocesses)."""
    _signal(p, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(10)


@dataclass(frozen=True)
class AgentStatus:
    index: int
    author: str
    state: str  # queued | starting | running | one of END_STATES
    turns: int
    tool_calls: int
    tool_errors: int
    evaluations: int
    findings: int
    budget_left: dict = field(default_factory=dict)
    last: str = ""


def status(run: Run) -> list[AgentStatus]:
    """Per agent: turns, tool calls (and refused ones), evaluations, findings, budget left, last action."""
    from .. import forum

    try:
        authors = [f.author for f in forum.get_findings()]
    except Exception:  # a damaged forum must not hide the agents' state
        authors = []
    out = []
    jobs = _job_states(run)
    for a in run.agents:
        events = read(run.path / f"agent-{a.index}.jsonl")
        end = next((e for e in reversed(events) if e.get("kind") == "end"), None)
        if end:
            state = end["status"]
        elif a.job_id:
            job = jobs.get(a.job_id)
            state = ("unknown" if job is None else "running" if job.state == "RUNNING" else "queued" if job.active
                     else JOB_ENDS.get(job.state, "crashed"))  # fmt: skip
        else:
            alive = a.pid is not None and _alive(a.pid)
            state = "running" if alive else "starting" if a.pid is None else "crashed"
        budget = run.budget(a.index)
        used = budget.usage()
        left = {**budget.left(), "minutes": max(0.0, round((run.deadline - time.time()) / 60, 1))}
        out.append(AgentStatus(
            a.index, a.author, state,
            turns=len({e.get("turn") for e in events if e.get("kind") in ("message", "tool_call")}),
            tool_calls=sum(e.get("kind") == "tool_call" for e in events),
            tool_errors=sum(e.get("kind") == "tool_result" and bool(e.get("error")) for e in events),
            evaluations=used.evaluations, findings=authors.count(a.author), budget_left=left,
            last=summary(events[-1]) if events else "",
        ))  # fmt: skip
    return out


# How an agent's job that ended without its `end` line ended, in the transcript's words.
JOB_ENDS = {"TIMEOUT": "time_budget", "CANCELLED": "stopped", "DEADLINE": "time_budget"}


def _job_states(run: Run) -> dict[str, JobState]:
    ids = [a.job_id for a in run.agents if a.job_id]
    if not ids:
        return {}
    try:
        return sbatch.states(ids)
    except SlurmError:  # SLURM unreachable: the transcripts still say what they say
        return {}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stop(run: Run, wait_s: float = 60.0) -> None:
    """Ask a run to end: the stop file (the supervisor ends its workers), and SIGTERM to workers still alive; an
    agent running as a SLURM job is cancelled (SIGTERM, so it writes its end line), and if its job ended without
    one, the line is written here."""
    (run.path / "stop").touch()
    ids = [a.job_id for a in run.agents if a.job_id]
    if ids:
        sbatch.cancel(ids)
        sbatch.wait_ended(ids, timeout=wait_s)
        for a in run.agents:
            if a.job_id and run.transcript(a.index).ended() is None:
                run.transcript(a.index).append("end", status="stopped", detail=f"SLURM job {a.job_id} cancelled "
                                               "by cdw agents stop before the agent wrote its end")  # fmt: skip
    for a in run.agents:
        if a.pid is not None and _alive(a.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(a.pid, signal.SIGTERM)
    deadline = time.time() + wait_s
    while time.time() < deadline and any(a.pid is not None and _alive(a.pid) for a in run.agents):
        time.sleep(0.5)


__all__ = ["BACKENDS", "END_STATES", "AgentsError", "Run", "RunConfig", "is_tool_error", "load", "new_run",
           "status", "stop", "submit_jobs", "supervise"]  # fmt: skip
