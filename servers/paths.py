"""Where the workspace keeps its local state: models, server logs, runtime files, caches.

Everything lives under one ignored folder, `CDW_HOME` (default: `.cdw/` in the project checkout, or
`~/.cache/cdw` for a non-editable install). `CDW_MODELS_DIR` moves only the model cache, so tests can
keep their own runtime state while sharing models already built. `CDW_RUN_DIR` and `CDW_LOGS_DIR` move the
runtime file and the server logs: a SLURM job's servers keep theirs in the job's own folder
(`servers/cluster.py`), so jobs sharing one CDW_HOME never write each other's files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / ".cdw"
    return Path.home() / ".cache" / "cdw"


@dataclass(frozen=True)
class Paths:
    home: Path
    models: Path
    run: Path  # runtime files: which servers this workspace started (pids, endpoints, SLURM jobs)
    logs: Path  # server logs

    @property
    def slurm(self) -> Path:
        """SLURM job scripts, job logs, and each job's own runtime folder (`<job id>/`)."""
        return self.home / "slurm"

    @property
    def vllm_cache(self) -> Path:
        return self.home / "vllm-cache"

    @property
    def downloads(self) -> Path:
        return self.home / "downloads"

    @property
    def data(self) -> Path:
        """Prompt sets fetched from the hub or a package registry."""
        return self.home / "data"

    @property
    def cache(self) -> Path:
        """The call cache (an SQLite file): greedy requests answered once."""
        return self.home / "cache"


def paths() -> Paths:
    """The current paths, read from the environment each call (tests change it)."""
    home = Path(os.environ.get("CDW_HOME") or _default_home()).expanduser()
    models = Path(os.environ.get("CDW_MODELS_DIR") or home / "models").expanduser()
    run = Path(os.environ.get("CDW_RUN_DIR") or home / "run").expanduser()
    logs = Path(os.environ.get("CDW_LOGS_DIR") or home / "logs").expanduser()
    return Paths(home=home, models=models, run=run, logs=logs)
