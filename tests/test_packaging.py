"""The wheel: built from the sources, installed (not editable) into a fresh venv, and run from outside the checkout.

The fresh venv borrows this environment's dependencies through a `.pth` line naming its site-packages (a `.pth`
inside a folder added that way is not executed, so the checkout's editable finder stays off); only the wheel is
installed into it. So what runs is the wheel's `workspace` and `servers`, with the wheel's data files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from servers.settings import PROJECT_ROOT
from workspace.cli import main

pytestmark = pytest.mark.slow

PACKAGES = ("workspace", "servers")
NOT_SHIPPED = {"servers/slurm/local-cluster.sh"}  # a tool for setting up a cluster from a checkout, not package data


def _sources() -> set[str]:
    """Every file of the packages in the checkout, as the wheel should name it."""
    return {
        p.relative_to(PROJECT_ROOT).as_posix()
        for pkg in PACKAGES
        for p in (PROJECT_ROOT / pkg).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    } - NOT_SHIPPED


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without the checkout on PYTHONPATH (pip would take it for an installed cdw) or any
    CDW_* setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CDW_") and k != "PYTHONPATH"} | extra


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> str:
    r = subprocess.run(args, cwd=cwd, env=env or _clean_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (an in-tree build would reuse a stale `build/` folder)."""
    src = tmp_path_factory.mktemp("src")
    for pkg in PACKAGES:
        shutil.copytree(PROJECT_ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / f, src / f)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
         cwd=dist)  # fmt: skip
    (whl,) = dist.glob("cdw-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel, seeing this environment's dependencies through a `.pth` line."""
    root = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)], cwd=root)
    python = root / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).strip())
    # The wheel first: with the borrowed folder in view, pip would take its editable cdw for this one.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=root)
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root


def test_the_wheel_holds_every_module_and_data_file_of_the_packages(wheel):
    names = {n for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("cdw-")}
    assert names == _sources()


def test_the_installed_wheel_runs_from_outside_the_checkout(venv, toys, tmp_path):
    env = _clean_env(CDW_HOME=str(tmp_path / "home"), COLUMNS="200")
    cdw = str(venv / "bin" / "cdw")
    where = _run([str(venv / "bin" / "python"), "-c", "import servers, workspace; print(workspace.__file__); "
                  "print(servers.__file__)"], cwd=tmp_path, env=env)  # fmt: skip
    for line in where.split():
        assert Path(line).is_relative_to(venv) and not Path(line).is_relative_to(PROJECT_ROOT), line
    assert "decode" in _run([cdw, "--help"], cwd=tmp_path, env=env)
    assert "smollm2" in _run([cdw, "models", "list"], cwd=tmp_path, env=env)  # presets.toml, read from the wheel

    args = ["decode", "Name three colours.", "--policy", "always", "--max-tokens", "40", "--json",
            f"--weak-url={toys.urls['weak']}", f"--strong-url={toys.urls['strong']}"]  # fmt: skip
    installed = json.loads(_run([cdw, *args], cwd=tmp_path, env=env))
    assert installed["text"] and {s["author"] for s in installed["segments"]} == {"strong"}
    here = CliRunner().invoke(main, args, catch_exceptions=False)
    assert json.loads(here.output) == installed  # the wheel decodes exactly as the checkout does
