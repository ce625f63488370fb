"""servers/settings.py: the one reader of `CDW_*` variables, and what SLURM jobs carry of them."""

from __future__ import annotations

import re
from pathlib import Path

from servers import settings
from servers.settings import PROJECT_ROOT, job_environment, paths


def test_folders_follow_the_environment_each_call(tmp_path, monkeypatch):
    monkeypatch.setenv("CDW_HOME", str(tmp_path / "home"))
    for k in ("CDW_MODELS_DIR", "CDW_RUN_DIR", "CDW_LOGS_DIR", "CDW_KEYS_DIR", "CDW_TRUSTED_KEYS", "CDW_RECORDS_DIR"):
        monkeypatch.delenv(k, raising=False)
    p = paths()
    assert (p.models, p.run, p.logs, p.keys) == tuple(tmp_path / "home" / n for n in ("models", "run", "logs", "keys"))
    assert p.records == PROJECT_ROOT / "records" and p.trusted_keys == p.records / "trusted_keys.txt"
    monkeypatch.setenv("CDW_RECORDS_DIR", str(tmp_path / "r"))
    monkeypatch.setenv("CDW_RUN_DIR", str(tmp_path / "run"))
    # a records folder someone points at never brings its own trusted keys or aliases: they stay the project's
    assert paths().records == tmp_path / "r" and paths().trusted_keys == PROJECT_ROOT / "records" / "trusted_keys.txt"
    assert paths().aliases == PROJECT_ROOT / "records" / "aliases.json"
    assert paths().run == tmp_path / "run"


def test_a_job_carries_the_settings_with_absolute_folders_but_not_the_run_folder_or_secrets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CDW_HOME", "home")
    monkeypatch.setenv("CDW_RECORDS_DIR", "recs")
    monkeypatch.setenv("CDW_WEAK_URL", "http://node1:8000")
    monkeypatch.setenv("CDW_RUN_DIR", "/mine/only")
    monkeypatch.setenv("CDW_MCP_TOKEN", "secret")
    env = job_environment()
    assert env["CDW_HOME"] == str(tmp_path / "home") and env["CDW_RECORDS_DIR"] == str(tmp_path / "recs")
    assert env["CDW_MODELS_DIR"] == str(tmp_path / "home" / "models")
    assert env["CDW_WEAK_URL"] == "http://node1:8000"
    assert "CDW_RUN_DIR" not in env and "CDW_MCP_TOKEN" not in env
    assert set(env) <= set(settings.JOB_VARIABLES)


def test_no_other_module_reads_a_cdw_variable():
    reads = re.compile(r"""(environ(\.get)?\s*[\[(]|getenv\()\s*f?["']CDW_""")
    found = [
        f"{f.relative_to(PROJECT_ROOT)}:{n}"
        for root in ("workspace", "servers")
        for f in sorted((PROJECT_ROOT / root).rglob("*.py"))
        if f != Path(settings.__file__)
        for n, line in enumerate(f.read_text().splitlines(), 1)
        if reads.search(line)
    ]
    assert not found, f"read CDW_* through servers/settings.py instead: {found}"
