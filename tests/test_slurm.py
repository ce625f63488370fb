"""The `slurm` tier: a real one-node SLURM cluster on this machine (`servers/slurm/local-cluster.sh`: Debian's
slurm-wlm and munge), driven through `cdw` exactly as on a cluster's login node.

- the `tiny-bpe` preset as SLURM jobs (two weak replicas and the strong server, which also serves the judge: three
  jobs, the fewest that show replicas and a role served by another's job; on this 2-core machine, alternated, four
  `tiny` jobs were up in 120 and 109 s, three `tiny-bpe` jobs in 72 and 76 s), a decode through them, a 5-problem
  HumanEval evaluation submitted as a job, a pre-empted replica reported and replaced with --resume, and `--stop`
  leaving no job in squeue;
- research agents as one job each (the scripted tool-calling model of test_agents), and `cdw agents stop`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from servers.runtime import process_started
from servers.settings import PROJECT_ROOT, paths
from tests.conftest import write_test_presets
from tests.test_agents import SCRIPT, model_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slurm

# Ports of their own, so these servers never meet the vllm tier's (18111…) or a user's (8111…).
SLURM_PORTS = {"port = 18113": "port = 28113", "port = 18114": "port = 28114"}


@pytest.fixture(scope="module")
def cluster() -> str:
    """The local cluster, set up (or found up) by the project's own script."""
    r = subprocess.run([str(PROJECT_ROOT / "servers" / "slurm" / "local-cluster.sh")], capture_output=True,
                       text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def slurm_env(cluster, tmp_path_factory, test_signing_key) -> dict[str, str]:
    home = tmp_path_factory.mktemp("slurm-home")
    if paths().data.is_dir():  # the AlpacaEval prompts, as the vllm tier shares them
        shutil.copytree(paths().data, home / "data")
    presets = write_test_presets(home / "presets.toml", **SLURM_PORTS)
    return {**os.environ, "CDW_HOME": str(home), "CDW_MODELS_DIR": str(paths().models), "CDW_PRESETS": str(presets),
            "CDW_RECORDS_DIR": str(home / "records"), "CDW_FINDINGS_DIR": str(home / "findings")}  # fmt: skip


def cdw(env, *args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workspace.cli", *map(str, args)], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def queued_ids() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


def left_in_queue(ids, timeout=120.0) -> set[str]:
    """Which of `ids` are still in squeue once they have had `timeout` seconds to leave it: a job whose program
    has written its last line is still RUNNING, then COMPLETING, for a moment while its processes exit."""
    deadline = time.monotonic() + timeout
    while (left := set(ids) & queued_ids()) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def runtime(env) -> dict:
    return json.loads((Path(env["CDW_HOME"]) / "run" / "servers.json").read_text())


def test_tiny_bpe_preset_as_slurm_jobs_serves_evaluates_survives_a_preemption_and_stops(slurm_env):
    env = slurm_env
    subprocess.run([sys.executable, "-m", "workspace.cli", "models", "fetch", "tiny-bpe"], env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    try:
        _serve_evaluate_preempt_stop(env)
    finally:  # whatever failed, leave no job behind
        cdw(env, "serve", "--stop")


def _serve_evaluate_preempt_stop(env):
    t0 = time.monotonic()
    up = cdw(env, "serve", "--preset", "tiny-bpe", "--slurm", "--replicas", "weak=2", "--time", "60", "--timeout", 600)
    assert up.returncode == 0, up.stdout + up.stderr
    print(f"\n3 tiny-bpe servers as SLURM jobs healthy in {time.monotonic() - t0:.0f} s:\n{up.stdout}")
    state = runtime(env)
    jobs = {j["name"]: j["job_id"] for j in state["jobs"]}
    assert sorted(jobs) == ["cdw-tiny-bpe-strong-0", "cdw-tiny-bpe-weak-0", "cdw-tiny-bpe-weak-1"]
    assert set(jobs.values()) <= queued_ids()
    weak_urls = [s["url"] for s in state["servers"] if s["role"] == "weak"]
    assert len(weak_urls) == 2 and len(set(weak_urls)) == 2, weak_urls  # two replicas on one node: two ports
    assert all(s["job_id"] in jobs.values() and s["node"] for s in state["servers"])

    st = cdw(env, "status", "--json")
    assert st.returncode == 0, st.stdout + st.stderr
    rows = {r["role"]: r for r in json.loads(st.stdout)}
    assert all(r["healthy"] for r in rows.values())
    assert len(rows["weak"]["replicas"]) == 2 and [j["state"] for j in rows["weak"]["jobs"]] == ["RUNNING"] * 2

    dec = cdw(env, "decode", "Name three colours.", "--policy", "random(rate=0.2, span=tokens:4)", "--max-tokens", 48,
              "--json")  # fmt: skip
    assert dec.returncode == 0, dec.stderr
    segments = json.loads(dec.stdout)["segments"]
    assert {s["author"] for s in segments} == {"weak", "strong"}, segments

    # HumanEval: its answers are scored by tests in the sandbox, inside the job (tiny-bpe's random strong model
    # cannot judge; every answer fails its tests, which is a result).
    ev = cdw(env, "eval", "--benchmark", "humaneval", "--policy", "margin(tau=0.3, span=words:2)", "--n", 5,
             "--max-tokens", 32, "--json", "--slurm", "--wait", "--time", 30)  # fmt: skip
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert re.search(r"submitted SLURM job \d+: cdw eval --policy .* --benchmark humaneval", ev.stderr), ev.stderr
    out = json.loads(ev.stdout[ev.stdout.index("{") :])
    assert out["benchmark"] == "humaneval" and out["prompts"] == "humaneval[:5]"
    assert out["n"] == 5 and out["judged"] == 5 and out["errors"] == [] and out["verified"] is True
    assert (Path(env["CDW_RECORDS_DIR"]) / "evaluations" / f"{out['evaluation_id']}.jsonl").exists()

    # A pre-empted replica: its job ends under us. Status reports it with its log; a plain restart refuses; --resume
    # replaces exactly that job.
    lost = "cdw-tiny-bpe-weak-1"
    gone = jobs[lost]
    subprocess.run(["scancel", gone], check=True)
    deadline = time.monotonic() + 120
    while gone in queued_ids() and time.monotonic() < deadline:
        time.sleep(1)
    st = cdw(env, "status")
    assert st.returncode == 1 and f"job {gone} ({lost}) ended: CANCELLED" in st.stdout, st.stdout
    assert "stopping: asked to end" in st.stdout and "--resume" in st.stdout  # the job log's tail
    again = cdw(env, "serve", "--preset", "tiny-bpe", "--slurm", "--replicas", "weak=2")
    assert again.returncode == 1 and "--resume" in again.stdout + again.stderr
    resumed = cdw(env, "serve", "--preset", "tiny-bpe", "--slurm", "--replicas", "weak=2", "--resume", "--time", "60",
                  "--timeout", 600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("already running") == 2
    after = {j["name"]: j["job_id"] for j in runtime(env)["jobs"]}
    assert after[lost] != gone
    assert {k: v for k, v in after.items() if k != lost} == {k: v for k, v in jobs.items() if k != lost}
    assert cdw(env, "status").returncode == 0

    servers = runtime(env)["servers"]
    stop = cdw(env, "serve", "--stop")
    assert stop.returncode == 0, stop.stderr
    assert not (set(after.values()) | set(jobs.values())) & queued_ids()
    assert runtime(env)["jobs"] == [] and runtime(env)["servers"] == []
    for s in servers:  # the vLLM processes the jobs started (one node: their pids are on this machine)
        try:
            alive = abs(process_started(s["pid"]) - s["since_boot"]) < 1.0
        except psutil.NoSuchProcess:
            alive = False
        assert not alive, f"{s['role']} server (pid {s['pid']}) left running after --stop"


@pytest.fixture
def agents_env(slurm_env, tmp_path):
    env = {**slurm_env, "CDW_HOME": str(tmp_path / "home"), "CDW_FINDINGS_DIR": str(tmp_path / "findings"),
           "CDW_RECORDS_DIR": str(tmp_path / "records"), "OPENAI_API_KEY": "sk-test-not-a-key"}  # fmt: skip
    for role in ("WEAK", "STRONG", "JUDGE"):
        env[f"CDW_{role}_URL"] = "http://127.0.0.1:9"  # the scripted agents never need a model server
    yield env
    for run in (tmp_path / "home" / "agents").glob("*/run.json"):  # whatever failed, leave no job behind
        ids = [a["job_id"] for a in json.loads(run.read_text())["agents"] if a.get("job_id")]
        subprocess.run(["scancel", *ids], capture_output=True)


def wait_agents(env, run_id, timeout=300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(cdw(env, "agents", "status", run_id, "--json").stdout)["agents"]
        if not any(a["state"] in ("queued", "starting", "running") for a in st) or time.monotonic() > deadline:
            return st
        time.sleep(2)


def test_agents_as_slurm_jobs_research_and_end(agents_env, model_server):  # noqa: F811
    url, model = model_server
    env = agents_env
    run = cdw(env, "agents", "run", "--slurm", "--backend", "openai", "--model", "scripted", "--model-url", url,
              "--agents", 2, "--max-turns", 12, "--hours", 0.05, "--brief", "full")  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    run_id = re.search(r"run (\S+):", run.stdout).group(1)
    ids = re.findall(r"SLURM job (\d+)", run.stdout)
    assert len(ids) == 2
    info = json.loads((Path(env["CDW_HOME"]) / "agents" / run_id / "run.json").read_text())
    assert [a["job_id"] for a in info["agents"]] == ids
    st = wait_agents(env, run_id)
    assert [a["state"] for a in st] == ["done", "done"], st
    assert [a["findings"] for a in st] == [1, 1] and [a["tool_errors"] for a in st] == [5, 5]
    assert all(a["turns"] == len(SCRIPT) + 1 for a in st)
    assert not left_in_queue(ids)


def test_agents_stop_cancels_their_jobs(agents_env, model_server):  # noqa: F811
    url, model = model_server
    model.hang = re.compile(r"agent-")  # every agent waits on its model
    env = agents_env
    run = cdw(env, "agents", "run", "--slurm", "--model", "scripted", "--model-url", url, "--agents", 2,
              "--hours", 1, "--brief", "short")  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    ids = re.findall(r"SLURM job (\d+)", run.stdout)
    assert model.wait_for_requests(2, timeout=180), "the agents' jobs never asked their model"
    stopped = cdw(env, "agents", "stop")
    assert stopped.returncode == 0, stopped.stderr
    st = json.loads(cdw(env, "agents", "status", "--json").stdout)["agents"]
    assert [a["state"] for a in st] == ["stopped", "stopped"], st
    assert not left_in_queue(ids)
