"""Every setting the workspace reads from its environment (the `CDW_*` variables), typed, with their defaults.

This is the only module that reads a `CDW_*` variable; everything else asks it. Settings are read anew on each
call, because tests (and SLURM jobs) change the environment.

Local state lives under one ignored folder, `CDW_HOME` (default: `.cdw/` in the project checkout, or
`~/.cache/cdw` for a non-editable install). `CDW_MODELS_DIR` moves only the model cache, so tests can keep their
own runtime state while sharing models already built. `CDW_RUN_DIR` and `CDW_LOGS_DIR` move the runtime file and
the server logs: a SLURM job's servers keep theirs in the job's own folder (`servers/cluster.py`), so jobs sharing
one CDW_HOME never write each other's files. The shared folders (records, findings, policies) default to the
project's own; `CDW_RECORDS_DIR`, `CDW_FINDINGS_DIR` and `CDW_POLICIES_DIR` move them.
"""

from __future__ import annotations

import functools
import getpass
import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ROLES = ("weak", "strong", "judge")  # the roles a server answers

# The settings a SLURM job must carry to see what the side that submitted it sees (`job_environment`). The run
# and log folders are not among them (a job's servers get their own), nor is the MCP token (a secret: jobs get it,
# like API keys, from SLURM's --export=ALL rather than from a script on disk).
JOB_PATH_VARIABLES = ("CDW_HOME", "CDW_MODELS_DIR", "CDW_PRESETS", "CDW_RECORDS_DIR", "CDW_FINDINGS_DIR",
                      "CDW_POLICIES_DIR", "CDW_KEYS_DIR", "CDW_TRUSTED_KEYS")  # fmt: skip
JOB_VARIABLES = (*JOB_PATH_VARIABLES, "CDW_AUTHOR", "CDW_REUSE",
                 *(f"CDW_{r.upper()}_{k}" for r in ROLES for k in ("URL", "MODEL")))  # fmt: skip


def _get(name: str) -> str | None:
    """A variable's value; unset and empty are the same."""
    return os.environ.get(name) or None


def _path(name: str) -> Path | None:
    value = _get(name)
    return Path(value).expanduser() if value else None


def in_checkout() -> bool:
    """True when running from the project checkout (an editable install), not from an installed wheel."""
    return (PROJECT_ROOT / "pyproject.toml").exists()


@dataclass(frozen=True)
class Paths:
    home: Path
    models: Path
    run: Path  # runtime files: which servers this workspace started (pids, endpoints, SLURM jobs)
    logs: Path  # server logs
    records: Path  # the record logs
    findings: Path  # the findings agents and people share
    policies: Path  # policy files agents load and write
    keys: Path  # this workspace's private signing key
    trusted_keys: Path  # the committed list of public keys the group trusts (never from CDW_RECORDS_DIR)
    aliases: Path  # the committed aliases of re-keyed evaluation ids (never from CDW_RECORDS_DIR)
    presets: Path | None  # a presets file replacing the packaged `servers/presets.toml` (None: the packaged one)

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
        """The call cache and the known continuations (SQLite files): greedy requests answered once."""
        return self.home / "cache"


# What `paths()` depends on: the variables that move folders (and HOME, for `~`).
_PATH_VARIABLES = ("CDW_HOME", "CDW_MODELS_DIR", "CDW_RUN_DIR", "CDW_LOGS_DIR", "CDW_RECORDS_DIR", "CDW_FINDINGS_DIR",
                   "CDW_POLICIES_DIR", "CDW_KEYS_DIR", "CDW_TRUSTED_KEYS", "CDW_PRESETS", "HOME")  # fmt: skip


def paths() -> Paths:
    """The current folders, read from the environment each call (tests change it)."""
    # Made once per distinct environment: record checks ask for a folder per answer, thousands of times.
    return _paths(tuple(os.environ.get(k) for k in _PATH_VARIABLES))


@functools.lru_cache(maxsize=32)
def _paths(environment: tuple[str | None, ...]) -> Paths:
    """The folders for this environment (the argument is the cache's key: the body reads the same variables)."""
    home = _path("CDW_HOME") or (PROJECT_ROOT / ".cdw" if in_checkout() else Path.home() / ".cache" / "cdw")
    records = _path("CDW_RECORDS_DIR") or (PROJECT_ROOT / "records" if in_checkout() else home / "records")
    return Paths(
        home=home,
        models=_path("CDW_MODELS_DIR") or home / "models",
        run=_path("CDW_RUN_DIR") or home / "run",
        logs=_path("CDW_LOGS_DIR") or home / "logs",
        records=records,
        findings=_path("CDW_FINDINGS_DIR") or PROJECT_ROOT / "findings",
        policies=_path("CDW_POLICIES_DIR") or PROJECT_ROOT / "policies",
        keys=_path("CDW_KEYS_DIR") or home / "keys",
        # The project's own list (or a wheel's user's), never one inside a records folder CDW_RECORDS_DIR names:
        # a folder of records must not bring the keys that make them trusted.
        trusted_keys=_path("CDW_TRUSTED_KEYS")
        or (PROJECT_ROOT / "records" if in_checkout() else home) / "trusted_keys.txt",
        # Likewise: an alias decides which record a command reads back, so a folder of records cannot bring its own.
        aliases=(PROJECT_ROOT / "records" if in_checkout() else home) / "aliases.json",
        presets=_path("CDW_PRESETS"),
    )


def author() -> str:
    """Who is writing findings: `CDW_AUTHOR`, else the login name."""
    return _get("CDW_AUTHOR") or getpass.getuser()


def reuse() -> bool:
    """Whether greedy requests that continue a known answer are answered without the server (`CDW_REUSE`: on
    unless 0, off, no or false; `--no-reuse` turns it off for one command). See workspace/reuse.py."""
    value = (_get("CDW_REUSE") or "on").strip().lower()
    if value not in ("1", "on", "yes", "true", "0", "off", "no", "false"):
        raise ValueError(f"CDW_REUSE={value!r}: say on or off")
    return value in ("1", "on", "yes", "true")


def mcp_token() -> str | None:
    """The bearer token `cdw mcp --http` asks for (`CDW_MCP_TOKEN`); None: the caller generates one."""
    return _get("CDW_MCP_TOKEN")


def url_variable(role: str) -> str:
    """The variable naming a role's server URL(s), for messages (`CDW_WEAK_URL`)."""
    return f"CDW_{role.upper()}_URL"


def server_url(role: str) -> str | None:
    """The role's server URL(s) from the environment (comma-separated replicas), or None."""
    return _get(url_variable(role))


def server_model(role: str) -> str | None:
    """The model name to ask the role's server for (`CDW_WEAK_MODEL` etc.); None: ask the server."""
    return _get(f"CDW_{role.upper()}_MODEL")


def job_environment() -> dict[str, str]:
    """What a SLURM job must see of this side's settings: the folders (made absolute, since a job may start
    elsewhere), the home and model folders always, and every other setting in `JOB_VARIABLES` that is set."""
    p = paths()
    env = {k: v for k in JOB_VARIABLES if (v := _get(k))}
    env |= {k: str(Path(env[k]).expanduser().resolve()) for k in JOB_PATH_VARIABLES if k in env}
    return env | {"CDW_HOME": str(p.home.resolve()), "CDW_MODELS_DIR": str(p.models.resolve())}


def policies_environment(folder: Path) -> dict[str, str]:
    """The setting that points a child process (an agent's MCP server) at its own policy folder."""
    return {"CDW_POLICIES_DIR": str(folder)}


def job_runtime_setup(run_dir: str) -> list[str]:
    """Shell lines that give a server job its own runtime and log folder (`run_dir`, already quoted for the
    shell), so jobs sharing one CDW_HOME never write each other's files, and mark it as a server job of ours."""
    return [f"export CDW_RUN_DIR={run_dir}", 'export CDW_LOGS_DIR="$CDW_RUN_DIR"', 'mkdir -p "$CDW_RUN_DIR"',
            'export CDW_SERVER_JOB="$SLURM_JOB_ID"']  # fmt: skip


def server_job() -> str | None:
    """The SLURM job id when this process runs in a server job `cdw serve --slurm` submitted (`CDW_SERVER_JOB`,
    set by its script): there SLURM's GPU allocation, not the preset's pinning, decides which GPUs a server uses."""
    return _get("CDW_SERVER_JOB")
