"""SLURM plumbing without a cluster: job plans, batch scripts, reading SLURM's answers, the command a job re-runs,
and the launcher's guards. SLURM's tools are stand-in scripts here that print what the real ones printed on the
local cluster; `tests/test_slurm.py` runs the same code against real SLURM."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from servers import cluster, control, launcher, sbatch
from servers.presets import load_catalog
from servers.runtime import JobRecord, RuntimeState, ServerRecord, locked_state, process_started, read_state
from servers.sbatch import SlurmError, SlurmOptions
from servers.startup import LaunchError

# What the local cluster's tools printed (slurm-wlm 22.05, Debian 12).
SCONTROL_CANCELLED = (
    "JobId=14 JobName=cdw-tiny-judge-0 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901746 Nice=0 "
    "Account=(null) QOS=(null) JobState=CANCELLED Reason=None Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 "
    "Reboot=0 ExitCode=0:0 RunTime=00:02:29 TimeLimit=01:00:00 TimeMin=N/A Partition=debug NodeList=vm BatchHost=vm "
    "NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 Command=/work/main/.cdw/slurm/cdw-tiny-judge-0.sbatch "
    "WorkDir=/work/main StdOut=/work/main/.cdw/slurm/cdw-tiny-judge-0-14.log Power= "
)
SCONTROL_FAILED = (
    SCONTROL_CANCELLED.replace("JobId=14", "JobId=21")
    .replace("JobState=CANCELLED Reason=None", "JobState=FAILED Reason=NonZeroExitCode")
    .replace("ExitCode=0:0", "ExitCode=1:0")
)


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch/squeue/scontrol/scancel stand-ins: squeue prints `queue.txt`, scontrol prints `job-<id>.txt` (or says
    the id is invalid), sbatch hands out ids from 100, scancel records what it was asked to cancel and takes those
    jobs off the queue."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    state = tmp_path / "slurm-state"
    state.mkdir()
    scripts = {
        "squeue": f'cat "{state}/queue.txt" 2>/dev/null; exit 0',
        "scontrol": f'f="{state}/job-$4.txt"; [ -f "$f" ] && cat "$f" && exit 0; '
        'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1',
        "sbatch": f'n=$(cat "{state}/next" 2>/dev/null || echo 100); echo $((n+1)) > "{state}/next"; '
        f'echo "$2" >> "{state}/submitted"; echo $n',
        "scancel": f'echo "$@" >> "{state}/cancelled"; for j in "$@"; do sed -i "/^$j|/d" "{state}/queue.txt"; done',
    }
    for name, body in scripts.items():
        (bin_ / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setenv("CDW_HOME", str(tmp_path / "home"))
    return state


def catalog():
    return load_catalog()


# ---------------------------------------------------------------- plans and scripts


def test_plan_one_job_per_server_and_replica():
    tiny = catalog().preset("tiny")
    jobs = cluster.plan(tiny, replicas={"weak": 2})
    assert [(j.name, j.roles, j.replica, j.gpus, j.cpus) for j in jobs] == [
        ("cdw-tiny-weak-0", ("weak",), 0, 0, 1), ("cdw-tiny-weak-1", ("weak",), 1, 0, 1),
        ("cdw-tiny-strong-0", ("strong",), 0, 0, 1), ("cdw-tiny-judge-0", ("judge",), 0, 0, 1),
    ]  # fmt: skip
    assert [j.name for j in cluster.plan(tiny, ["weak"])] == ["cdw-tiny-weak-0"]


def test_plan_gpu_presets_one_job_or_one_per_role_with_data_parallelism():
    paper = cluster.plan(catalog().preset("paper"))
    assert [(j.roles, j.gpus, j.cpus) for j in paper] == [(("weak", "strong", "judge"), 1, 12)]
    with pytest.raises(LaunchError, match="paper-multi-gpu"):
        cluster.plan(catalog().preset("paper"), replicas={"weak": 2})
    multi = cluster.plan(catalog().preset("paper-multi-gpu"), data_parallel={"strong": 2}, replicas={"weak": 3})
    assert [(j.name, j.gpus, j.data_parallel) for j in multi] == [
        ("cdw-paper-multi-gpu-weak-0", 1, {}), ("cdw-paper-multi-gpu-weak-1", 1, {}),
        ("cdw-paper-multi-gpu-weak-2", 1, {}), ("cdw-paper-multi-gpu-strong-0", 2, {"strong": 2}),
        ("cdw-paper-multi-gpu-judge-0", 1, {}),
    ]  # fmt: skip


def test_plan_refuses_roles_without_a_server_of_their_own():
    with pytest.raises(LaunchError, match="served by strong"):
        cluster.plan(catalog().preset("cpu"), replicas={"judge": 2})
    with pytest.raises(LaunchError, match="at least 1"):
        cluster.plan(catalog().preset("cpu"), replicas={"weak": 0})


def test_server_script_asks_for_what_the_job_needs_and_runs_the_launcher(tmp_path, monkeypatch):
    preset = catalog().preset("paper-multi-gpu")
    monkeypatch.setenv("CDW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CDW_PRESETS", "my-presets.toml")
    monkeypatch.setenv("CDW_RUN_DIR", "/must/not/leak")
    job = cluster.plan(preset, ["strong"], data_parallel={"strong": 2})[0]
    options = SlurmOptions(partition="gpu", account="lab", time="04:00:00", extra=("--qos=high",))
    text = cluster.server_script(job, preset, options, None, 900)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for d in ("--job-name=cdw-paper-multi-gpu-strong-0", "--partition=gpu", "--account=lab", "--time=04:00:00",
              "--gres=gpu:2", "--cpus-per-task=8", "--export=ALL", "--qos=high"):  # fmt: skip
        assert f"#SBATCH {d}" in lines, d
    assert f"export CDW_PRESETS={Path('my-presets.toml').resolve()}" in lines
    assert f"export CDW_HOME={(tmp_path / 'home').resolve()}" in lines
    assert "/must/not/leak" not in text  # the job gets its own runtime folder
    assert f'export CDW_RUN_DIR={(tmp_path / "home" / "slurm").resolve()}/"$SLURM_JOB_ID"' in lines
    assert lines[-1].startswith("exec ") and lines[-1].endswith(
        "-m workspace.cli serve --foreground --preset paper-multi-gpu --roles strong --timeout 900 "
        "--data-parallel strong=2"
    )


def test_an_sbatch_argument_must_be_one_option():
    for bad in ("qos=high", "--qos=high\n#SBATCH --uid=0"):
        with pytest.raises(SlurmError, match="one sbatch option per flag"):
            SlurmOptions(extra=(bad,)).directives()


# ---------------------------------------------------------------- SLURM's answers


def test_states_come_from_squeue_then_scontrol_then_gone(fake_slurm):
    (fake_slurm / "queue.txt").write_text("15|RUNNING|vm|None\n16|PENDING||Resources\n99|RUNNING|vm|None\n")
    (fake_slurm / "job-14.txt").write_text(SCONTROL_CANCELLED)
    (fake_slurm / "job-21.txt").write_text(SCONTROL_FAILED)
    st = sbatch.states(["15", "16", "14", "21", "7"])
    assert (st["15"].state, st["15"].node, st["15"].active) == ("RUNNING", "vm", True)
    assert (st["16"].state, st["16"].reason, st["16"].describe()) == ("PENDING", "Resources", "PENDING (Resources)")
    assert (st["14"].state, st["14"].active, st["14"].node) == ("CANCELLED", False, "vm")
    assert st["21"].describe() == "FAILED on vm (NonZeroExitCode), exit 1:0"
    assert (st["7"].state, st["7"].active) == ("GONE", False)
    assert "99" not in st  # only the jobs asked about


def test_without_slurm_the_error_says_how_to_get_a_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SlurmError, match="local-cluster.sh"):
        sbatch.require()


def test_exit_status_of_a_job():
    from servers.jobs import exit_status

    S = sbatch.JobState
    assert exit_status(S("1", "COMPLETED", exit_code="0:0")) == 0
    assert exit_status(S("1", "FAILED", exit_code="2:0")) == 2
    assert exit_status(S("1", "CANCELLED", exit_code="0:15")) == 143
    assert exit_status(S("1", "TIMEOUT", exit_code="0:0")) == 1


# ---------------------------------------------------------------- serve --slurm's bookkeeping


def _job(job_id: str, name: str, tmp_path: Path, roles=("weak",)) -> JobRecord:
    log = tmp_path / f"{name}-{job_id}.log"
    log.write_text("job 21 on vm\nthe weak server exited. Last lines of weak.log:\nCUDA out of memory\n")
    return JobRecord(job_id, name, "tiny", roles, 0, "s.sbatch", str(log), str(tmp_path / job_id), 0.0)


def test_an_ended_job_is_reported_with_its_log_and_needs_resume(fake_slurm, tmp_path, cpu_build):
    (fake_slurm / "queue.txt").write_text("")
    (fake_slurm / "job-21.txt").write_text(SCONTROL_FAILED)
    with locked_state() as box:
        box[0] = RuntimeState(active="tiny", servers=(), jobs=(_job("21", "cdw-tiny-weak-0", tmp_path),))
    with pytest.raises(LaunchError) as e:
        cluster.serve_slurm("tiny", ["weak"])
    msg = str(e.value)
    assert "job 21 (cdw-tiny-weak-0) ended: FAILED on vm (NonZeroExitCode), exit 1:0" in msg
    assert "CUDA out of memory" in msg and "--resume" in msg
    assert not (fake_slurm / "submitted").exists()  # nothing submitted without --resume
    rep = control.status().jobs
    assert [(r.job.job_id, r.state.state) for r in rep] == [("21", "FAILED")] and "CUDA out of memory" in rep[0].log


def test_stop_cancels_exactly_the_recorded_jobs(fake_slurm, tmp_path):
    (fake_slurm / "queue.txt").write_text("21|RUNNING|vm|None\n22|RUNNING|vm|None\n")
    rec = ServerRecord("tiny", "weak", ("weak",), "http://vm:1", "m", "p", "s", 1, 0.0, "l", 0.0, job_id="21",
                       node="vm")  # fmt: skip
    with locked_state() as box:
        box[0] = RuntimeState(active="tiny", servers=(rec,), jobs=(_job("21", "cdw-tiny-weak-0", tmp_path),))
    stopped = control.stop("tiny")
    assert [r.job_id for r in stopped.servers] == ["21"] and [j.job_id for j in stopped.jobs] == ["21"]
    assert (fake_slurm / "cancelled").read_text().split() == ["21"]  # job 22 is not ours
    assert read_state().jobs == () and read_state().servers == ()


def test_local_serve_refuses_a_preset_running_as_jobs(fake_slurm, tmp_path):
    with locked_state() as box:
        box[0] = RuntimeState(active="tiny", servers=(), jobs=(_job("21", "cdw-tiny-weak-0", tmp_path),))
    with pytest.raises(LaunchError, match="runs as SLURM jobs here"):
        control.start("tiny", ["weak"])  # without slurm=True: the local launcher, which sees the jobs
    with pytest.raises(LaunchError, match="replicas: for SLURM jobs only"):
        control.start("tiny", ["weak"], replicas={"weak": 2})


def test_runtime_files_written_before_jobs_existed_still_read(tmp_path, monkeypatch):
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    old = {"active": "cpu", "servers": [{"preset": "cpu", "role": "weak", "serves": ["weak"], "url": "http://x:1",
           "model": "m", "model_path": "p", "source": "s", "pid": 1, "create_time": 0.0, "log": "l",
           "started_at": 0.0}]}  # fmt: skip
    (tmp_path / "run" / "servers.json").write_text(json.dumps(old))
    st = read_state()
    assert st.jobs == () and st.servers[0].job_id is None and st.for_role("weak")[0].url == "http://x:1"


def test_port_claims_hold_while_the_claimant_lives(tmp_path, monkeypatch):
    import psutil

    monkeypatch.setattr(launcher.tempfile, "gettempdir", lambda: str(tmp_path))
    me = psutil.Process()
    with launcher._port_claims() as claims:
        claims[28111] = [me.pid, process_started(me.pid)]
        claims[28112] = [me.pid, process_started(me.pid) - 100]  # a reused pid: not the claimant any more
    with launcher._port_claims() as claims:
        assert list(claims) == [28111]


# ---------------------------------------------------------------- the client side as jobs


def test_eval_with_slurm_submits_the_same_command(fake_slurm, monkeypatch):
    from workspace.cli import main

    args = ["eval", "--policy", "margin(tau=0.1, span=sentence)", "--n", "5", "--json", "--slurm", "--time", "30",
            "--partition", "cpu", "--weak-url", "http://a:1"]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    script = Path((fake_slurm / "submitted").read_text().split()[0]).read_text()
    assert "#SBATCH --time=30" in script and "#SBATCH --partition=cpu" in script
    cmd = script.splitlines()[-1]
    assert cmd.endswith(
        "-m workspace.cli eval --policy 'margin(tau=0.1, span=sentence)' --json --n 5 --weak-url http://a:1"
    )
    assert f"cd {Path.cwd()}" in script  # relative paths on the command line mean the same in the job
    bad = CliRunner().invoke(main, ["eval", "--policy", "never", "--wait"])
    assert bad.exit_code == 1 and "need --slurm" in bad.output


def test_sweep_and_agents_accept_slurm_options():
    from workspace.cli import main

    for args in (["sweep", "--help"], ["agents", "run", "--help"]):
        out = CliRunner().invoke(main, args).output
        assert "--slurm" in out and "--partition" in out and "--sbatch-arg" in out, args


def test_gpu_pinning_is_the_presets_except_in_a_server_job_of_ours(monkeypatch):
    """A shell: the preset's GPUs. An interactive allocation (`salloc`: SLURM_JOB_ID set, SLURM's
    CUDA_VISIBLE_DEVICES naming the allocated GPUs): the preset's indexes among the allocated GPUs, so the three
    roles of paper-multi-gpu get three GPUs, not all the first. A server job `cdw serve --slurm` submitted (its
    script sets CDW_SERVER_JOB): SLURM gave the job its own GPUs and the server inherits them."""
    preset = catalog().preset("paper-multi-gpu")
    strong, judge = preset.roles["strong"], preset.roles["judge"]
    assert launcher._environment(preset, strong)["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("SLURM_JOB_ID", "5")  # salloc --gres=gpu:3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert [launcher._environment(preset, preset.roles[r])["CUDA_VISIBLE_DEVICES"]
            for r in ("weak", "strong", "judge")] == ["4", "5", "6"]  # fmt: skip
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # salloc --gres=gpu:2
    with pytest.raises(LaunchError, match="pinned to GPU 2 .* only 2 GPU"):
        launcher._environment(preset, judge)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # an allocation without GPUs named: the preset's
    assert launcher._environment(preset, judge)["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a server job of ours, given one GPU by SLURM
    monkeypatch.setenv("CDW_SERVER_JOB", "5")
    assert "CUDA_VISIBLE_DEVICES" not in launcher._environment(preset, strong)
    script = cluster.scripts("paper-multi-gpu", ["strong"])[0][1]
    assert 'export CDW_SERVER_JOB="$SLURM_JOB_ID"' in script


def test_local_cluster_script_is_valid_bash():
    import subprocess

    script = Path(__file__).parent.parent / "servers" / "slurm" / "local-cluster.sh"
    assert os.access(script, os.X_OK)
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert textwrap.dedent("SlurmdParameters=config_overrides") in script.read_text()


def test_dry_run_prints_the_paper_plan_and_submits_nothing(fake_slurm):
    from workspace.cli import main

    r = CliRunner().invoke(main, ["serve", "--preset", "paper", "--slurm", "--dry-run", "--partition", "gpu"])
    assert r.exit_code == 0, r.output
    assert r.output.count("#!/bin/bash") == 1  # one job: the three servers share one GPU's memory plan
    assert "#SBATCH --gres=gpu:1" in r.output and "--roles weak,strong,judge" in r.output
    assert not (fake_slurm / "submitted").exists()
    r = CliRunner().invoke(main, ["serve", "--preset", "paper-multi-gpu", "--slurm", "--dry-run"])
    assert r.output.count("#!/bin/bash") == 3 and r.output.count("#SBATCH --gres=gpu:1") == 3


def test_jobs_run_the_python_they_are_told_and_ask_for_the_presets_memory(fake_slurm):
    paper = catalog().preset("paper")
    job = cluster.plan(paper)[0]
    text = cluster.server_script(job, paper, SlurmOptions(), None, 900, python="/x/.venv-gpu/bin/python")
    assert "#SBATCH --mem=96G" in text.splitlines()
    assert text.splitlines()[-1].startswith("exec /x/.venv-gpu/bin/python -m workspace.cli serve --foreground")
    mine = cluster.server_script(job, paper, SlurmOptions(mem="200G"), None, 900)
    assert "#SBATCH --mem=200G" in mine and "--mem=96G" not in mine
    assert "--mem" not in cluster.server_script(cluster.plan(catalog().preset("tiny"))[0], catalog().preset("tiny"),
                                                SlurmOptions(), None, 900)  # fmt: skip
    r = CliRunner().invoke(main_cli(), ["serve", "--preset", "paper", "--slurm", "--dry-run", "--python", "/p/python"])
    assert r.exit_code == 0 and "exec /p/python -m workspace.cli" in r.output


def main_cli():
    from workspace.cli import main

    return main


def test_queue_time_is_not_start_up_time(fake_slurm, tmp_path, monkeypatch):
    """A queued job is not a server that failed to start: only --queue-timeout limits the queue, and --timeout
    counts from the job's start."""
    monkeypatch.setattr(cluster, "POLL_S", 0.1)  # a few looks at the queue within the queue timeout, not one in 2 s
    (fake_slurm / "queue.txt").write_text("31|PENDING||Priority\n")
    job = _job("31", "cdw-tiny-weak-0", tmp_path)
    events = []
    with pytest.raises(LaunchError, match=r"still queued after \d+ s \(PENDING \(Priority\)\).*--queue-timeout"):
        cluster._wait(catalog().preset("tiny"), [job], 0.0, events.append, queue_timeout=0.3)
    assert len(events) > 1 and {e.state for e in events} == {"queued"}  # queued past --timeout 0, not failed
    (fake_slurm / "queue.txt").write_text("31|RUNNING|vm|None\n")
    with pytest.raises(LaunchError, match="not healthy 0 s after the job started"):
        cluster._wait(catalog().preset("tiny"), [job], 0.0, lambda e: None)
