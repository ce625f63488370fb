"""AlpacaEval: its instructions, the canonical and confirmation sets, and the benchmark that judges answers to them.

- `alpaca_eval()` — the 805 AlpacaEval instructions. Sources, in order: the Hugging Face hub
  (`tatsu-lab/alpaca_eval`, `alpaca_eval.json`); else the PyPI source distribution of `alpaca-eval==0.6.6`,
  whose `example/outputs.json` carries the same 805 instructions (sha256-pinned). Either way the result must
  match a pinned content hash, and it is cached once under `paths().data` (atomic write: a half-written
  cache cannot look complete; a corrupt one is detected and fetched again).
- `canonical()` — the canonical 100 (ARCHITECTURE.md “What is measured”): the 100 indices i of the 805 with the smallest
  sha256(f"20260101:{i}"), in that (pseudo-random) order, so the first n of it are themselves a random sample
  (the 805 are grouped by source dataset; an index-sorted subset's head would be all `helpful_base`).
  The ids and the PromptSet hash are committed in `workspace/benchmarks/canonical.json` (read only by
  `definition`); loading re-derives both and refuses a mismatch. Regenerate with
  `python -m workspace.benchmarks.alpaca_eval --write-canonical`.
- `confirmation()` — 300 more, disjoint from the canonical 100 (`confirmation.json`), that confirm a result.
- `AlpacaEval` — the benchmark: answers judged pairwise against the strong model's own answer; canonical: the
  canonical 100 with the `[canonical]` models of `servers/presets.toml` and the default judge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from servers.presets import load_catalog
from servers.settings import paths

from ..fileio import atomic_write, sha256_file
from ..judge import JudgeSettings
from .base import Canonical, Conditions, JudgedBenchmark, register
from .prompts import DataError, Log, Prompt, PromptSet, _canonical_json, _log

HUB_REPO = "tatsu-lab/alpaca_eval"
HUB_FILE = "alpaca_eval.json"
SDIST = "alpaca-eval==0.6.6"
# sha256 of alpaca_eval-0.6.6.tar.gz as served by PyPI; anything else is not used.
SDIST_SHA256 = "94db28994674800f59de9983a275bab6c543c8f0478a039b421dd9456a9e43de"
SDIST_MEMBER = "alpaca_eval-0.6.6/example/outputs.json"
ALPACA_EVAL_N = 805
# sha256 of the canonical JSON of the 805 [id, instruction, dataset] triples (see `_records_sha256`): the
# definition of "the AlpacaEval set", whichever source it came from.
ALPACA_EVAL_SHA256 = "73be643c017f8722fec1c0665e08da5c649a446c33d175661ca300b168951a42"

CACHE_NAME = "alpaca_eval.json"
CANONICAL_FILE = Path(__file__).with_name("canonical.json")
CANONICAL_SEED = 20260101
CANONICAL_N = 100
CANONICAL_METHOD = (
    f"the {CANONICAL_N} indices i in range({ALPACA_EVAL_N}) with the smallest sha256(f'{{seed}}:{{i}}') hex digests, "
    "in that order"
)
# The confirmation set: 300 more prompts, disjoint from the canonical 100, that confirm a certified result at
# n = 400 (ARCHITECTURE.md “Benchmarks and certification”). The same ordering, continued.
CONFIRMATION_FILE = Path(__file__).with_name("confirmation.json")
CONFIRMATION_N = 300
CONFIRMATION_METHOD = (
    f"the next {CONFIRMATION_N} indices in the canonical set's order (ranks {CANONICAL_N}..{CANONICAL_N + 299} of "
    "sha256(f'{seed}:{i}'), same seed): disjoint from the canonical set"
)

HUB_PROBE_TIMEOUT_S = 3.0
PIP_TIMEOUT_S = 600


# ---------------------------------------------------------------------------------------------------------
# AlpacaEval 805


def alpaca_eval(log: Log = None) -> PromptSet:
    """All 805 AlpacaEval instructions, ids "alpaca_eval/000" … "alpaca_eval/804" in AlpacaEval's order.

    The first call fetches them (hub, else the pinned PyPI sdist: ~10 s) and caches them under
    `paths().data`; later calls read the cache. Raises DataError if no source works.
    """
    cache = paths().data / CACHE_NAME
    records = _read_cache(cache, log)
    if records is None:
        t0 = time.monotonic()
        records, source = _fetch(log)
        _write_cache(cache, records, source, time.monotonic() - t0)
        _log(log, f"alpaca_eval: {len(records)} instructions cached at {cache} ({source})")
    return PromptSet("alpaca_eval", tuple(Prompt(i, text, ds) for i, text, ds in records))


def _records_sha256(records) -> str:
    return hashlib.sha256(_canonical_json([list(r) for r in records])).hexdigest()


def _records_from_alpaca(rows, origin: str) -> list[tuple[str, str, str]]:
    """AlpacaEval-format rows (dicts with `instruction`, `dataset`) → verified (id, instruction, dataset)."""
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("instruction"), str) for r in rows
    ):
        raise DataError(f"{origin}: not a list of objects with an 'instruction' string")
    records = [(f"alpaca_eval/{i:03d}", r["instruction"], str(r.get("dataset") or "")) for i, r in enumerate(rows)]
    _verify(records, origin)
    return records


def _verify(records, origin: str) -> None:
    if len(records) != ALPACA_EVAL_N:
        raise DataError(f"{origin}: {len(records)} instructions, expected {ALPACA_EVAL_N}")
    digest = _records_sha256(records)
    if digest != ALPACA_EVAL_SHA256:
        raise DataError(f"{origin}: content sha256 {digest} differs from the pinned {ALPACA_EVAL_SHA256}")


def _read_cache(cache: Path, log: Log) -> list[tuple[str, str, str]] | None:
    """The cached records, or None if there is no cache or it fails verification (then it is fetched again)."""
    if not cache.exists():
        return None
    try:
        doc = json.loads(cache.read_text(encoding="utf-8"))
        records = [tuple(r) for r in doc["prompts"]]
        if not all(len(r) == 3 and all(isinstance(x, str) for x in r) for r in records):
            raise DataError("malformed records")
        _verify(records, str(cache))
    except (OSError, ValueError, KeyError, TypeError, DataError) as e:
        _log(log, f"alpaca_eval: ignoring the cache at {cache} ({type(e).__name__}: {str(e)[:200]}); fetching again")
        return None
    return records


def _write_cache(cache: Path, records, source: str, seconds: float) -> None:
    doc = {
        "source": source,
        "sha256": _records_sha256(records),
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "fields": ["id", "instruction", "dataset"],
        "prompts": [list(r) for r in records],
    }
    atomic_write(cache, json.dumps(doc, ensure_ascii=False, indent=0))


def _fetch(log: Log) -> tuple[list[tuple[str, str, str]], str]:
    """Fetch and verify the 805 records; returns them and a provenance string."""
    records = _from_hub(log)
    if records is not None:
        return records, f"hub:{HUB_REPO}/{HUB_FILE}"
    return _from_sdist(log), f"pypi:{SDIST} sdist ({SDIST_MEMBER}, sha256 {SDIST_SHA256})"


def _hub_offline() -> bool:
    # Read at call time (huggingface_hub reads it once at import), so a caller or test can set it later.
    return any(
        os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A quick TCP probe: huggingface_hub retries a failed connection for ~25 s before giving up."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxied route; let the hub client try
    u = urlparse(endpoint)
    host, port = u.hostname, u.port or (80 if u.scheme == "http" else 443)
    ok: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    # In a thread because name resolution has no timeout of its own.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _from_hub(log: Log) -> list[tuple[str, str, str]] | None:
    """The 805 from the hub (or the local hub cache); None if unavailable, so the sdist is tried."""
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError:
        _log(log, "alpaca_eval: huggingface_hub is not installed; skipping the hub")
        return None
    local_only = _hub_offline() or not _hub_reachable(constants.ENDPOINT)
    where = "the local hub cache" if local_only else f"the hub ({HUB_REPO})"
    _log(log, f"alpaca_eval: {'hub offline or unreachable; ' if local_only else ''}trying {where}")
    try:
        f = hf_hub_download(HUB_REPO, HUB_FILE, repo_type="dataset", local_files_only=local_only)
        return _records_from_alpaca(json.loads(Path(f).read_text(encoding="utf-8")), f"hub:{HUB_REPO}/{HUB_FILE}")
    except Exception as e:  # the data is hash-checked, so any hub problem can safely fall through to the sdist
        last = str(e).strip().splitlines()[-1][:160] if str(e).strip() else ""
        _log(log, f"alpaca_eval: {where} failed ({type(e).__name__}: {last})")
        return None


def _from_sdist(log: Log) -> list[tuple[str, str, str]]:
    """The 805 from the pinned PyPI sdist of alpaca-eval (the wheel does not ship them)."""
    paths().downloads.mkdir(parents=True, exist_ok=True)
    dl = Path(tempfile.mkdtemp(prefix="alpaca-eval-", dir=paths().downloads))  # private: concurrent fetches are safe
    try:
        _log(log, f"alpaca_eval: downloading the {SDIST} source distribution from PyPI")
        _pip_download(dl)
        tarballs = sorted(dl.glob("*.tar.gz"))
        if len(tarballs) != 1:
            raise DataError(f"pip download of {SDIST} produced {[p.name for p in dl.iterdir()]}, expected one .tar.gz")
        digest = sha256_file(tarballs[0])
        if digest != SDIST_SHA256:
            raise DataError(
                f"sha256 mismatch for {tarballs[0].name}: expected {SDIST_SHA256}, got {digest}. "
                "The package contents changed; not using them."
            )
        try:
            with tarfile.open(tarballs[0], "r:gz") as tar, tar.extractfile(SDIST_MEMBER) as f:
                rows = json.load(f)
        except (KeyError, tarfile.TarError, ValueError) as e:
            raise DataError(f"{tarballs[0].name}: cannot read {SDIST_MEMBER}: {e}") from e
        return _records_from_alpaca(rows, f"{tarballs[0].name}:{SDIST_MEMBER}")
    finally:
        shutil.rmtree(dl, ignore_errors=True)


def _pip_download(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:", "-q", "-d", str(dest)]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise DataError(f"pip download of {SDIST} took over {PIP_TIMEOUT_S} s; check access to PyPI") from e
    if run.returncode != 0:
        raise DataError(
            f"cannot get the AlpacaEval instructions: the hub ({HUB_REPO}) is unavailable and "
            f"`pip download {SDIST} --no-binary :all:` failed:\n{run.stderr[-2000:]}\n"
            f"Give this machine access to huggingface.co or PyPI, or copy a {CACHE_NAME} from another "
            f"machine's {paths().data} into {paths().data}."
        )


# ---------------------------------------------------------------------------------------------------------
# Canonical 100


def canonical_indices(seed: int = CANONICAL_SEED, n: int = CANONICAL_N) -> list[int]:
    """Indices into the 805 of the canonical set, in selection order (the method recorded in canonical.json).

    A seeded sha256 ordering rather than `random.sample`: Python guarantees only `random.random()` across
    versions, and the selection must re-derive identically on any interpreter, forever.
    """
    return sorted(range(ALPACA_EVAL_N), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())[:n]


def definition(name: str, path: Path | None = None) -> dict:
    """The committed definition of the canonical or the confirmation set (ids, seed, hash): the one reader of
    canonical.json and confirmation.json."""
    path = path or {"canonical": CANONICAL_FILE, "confirmation": CONFIRMATION_FILE}[name]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the {name} set definition {path}: {e}") from e
    if not isinstance(doc, dict):
        raise DataError(f"cannot read the {name} set definition {path}: not a JSON object")
    return doc


def _committed_set(name: str, path: Path, indices, method: str, flag: str, log: Log) -> PromptSet:
    """A prompt set defined by a committed file of ids and a hash, checked against what its seed selects
    (`indices(seed)`) and against its hash, so every evaluation on it provably ran on the same prompts."""
    doc = definition(name, path)
    try:
        ids, committed_hash, seed = list(doc["ids"]), doc["hash"], doc["seed"]
    except (KeyError, TypeError) as e:
        raise DataError(f"cannot read the {name} set definition {path}: {e!r}") from e
    if ids != [f"alpaca_eval/{i:03d}" for i in indices(seed)] or seed != CANONICAL_SEED:
        raise DataError(
            f"{path}: its ids are not the ones seed {CANONICAL_SEED} selects ({method}); "
            "the file was edited. Restore it from git, or regenerate it with "
            f"`python -m workspace.benchmarks.alpaca_eval {flag}`."
        )
    by_id = {p.id: p for p in alpaca_eval(log)}
    ps = PromptSet(name, tuple(by_id[i] for i in ids))
    if ps.hash != committed_hash:
        raise DataError(
            f"{name} set hash {ps.hash} differs from the committed {committed_hash} in {path}: "
            f"these are not the {name} prompts. Restore the file from git."
        )
    return ps


def canonical(log: Log = None) -> PromptSet:
    """The canonical 100 prompts, checked against `workspace/benchmarks/canonical.json` (ids, seed and hash).

    Raises DataError if the committed file does not match what its seed selects or its hash, so every
    certified evaluation provably ran on the same prompts.
    """
    return _committed_set("canonical", CANONICAL_FILE, lambda seed: canonical_indices(seed, CANONICAL_N),
                          CANONICAL_METHOD, "--write-canonical", log)  # fmt: skip


def confirmation_indices(seed: int = CANONICAL_SEED) -> list[int]:
    """Indices into the 805 of the confirmation set: the canonical ordering continued past the canonical 100."""
    return canonical_indices(seed, CANONICAL_N + CONFIRMATION_N)[CANONICAL_N:]


def confirmation(log: Log = None) -> PromptSet:
    """The 300-prompt confirmation set, checked against `workspace/benchmarks/confirmation.json` as `canonical()` is."""
    return _committed_set("confirmation", CONFIRMATION_FILE, confirmation_indices, CONFIRMATION_METHOD,
                          "--write-confirmation", log)  # fmt: skip


def write_confirmation(path: Path | None = None, log: Log = None) -> dict:
    """(Re)generate confirmation.json from the seed: run once, commit the file."""
    path = path or CONFIRMATION_FILE
    full = alpaca_eval(log)
    ps = PromptSet("confirmation", tuple(full.prompts[i] for i in confirmation_indices()))
    doc = {
        "description": "The confirmation set (ARCHITECTURE.md, Benchmarks and certification): "
                       "300 AlpacaEval instructions disjoint from the canonical.",
        "seed": CANONICAL_SEED, "method": CONFIRMATION_METHOD, "n": len(ps), "hash": ps.hash,
        "hash_method": "sha256 of JSON [[id, instruction], ...] in order, separators (',', ':'), UTF-8",
        "ids": list(ps.ids),
    }  # fmt: skip
    atomic_write(path, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    return doc


def write_canonical(path: Path | None = None, log: Log = None) -> dict:
    """(Re)generate canonical.json from the seed: run once, commit the file. Returns what was written."""
    path = path or CANONICAL_FILE
    full = alpaca_eval(log)
    ps = PromptSet("canonical", tuple(full.prompts[i] for i in canonical_indices()))
    doc = {
        "description": "The canonical evaluation set (ARCHITECTURE.md, What is measured): "
        "100 of the 805 AlpacaEval instructions.",
        "source": f"alpaca_eval: hub {HUB_REPO}/{HUB_FILE}, or PyPI {SDIST} sdist {SDIST_MEMBER}",
        "source_sha256": ALPACA_EVAL_SHA256,
        "seed": CANONICAL_SEED,
        "method": CANONICAL_METHOD,
        "n": len(ps),
        "hash": ps.hash,
        "hash_method": "sha256 of JSON [[id, instruction], ...] in order, separators (',', ':'), UTF-8",
        "ids": list(ps.ids),
    }
    atomic_write(path, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    return doc


# ---------------------------------------------------------------------------------------------------------
# JSONL files and specs


# ---------------------------------------------------------------------------------------------------------
# The benchmark


@register
class AlpacaEval(JudgedBenchmark):
    name = "alpaca_eval"
    description = "AlpacaEval instructions, judged pairwise against the strong model's own answer"
    max_tokens = 256
    canonical_set = "canonical"
    confirmation_set = "confirmation"

    def sets(self):
        return {"canonical": canonical, "confirmation": confirmation, "alpaca_eval": alpaca_eval}

    def canonical(self) -> Canonical:
        doc = definition("canonical")
        return Canonical(doc["hash"], doc["n"], load_catalog().canonical)

    def canonical_problems(self, c: Conditions) -> list[str]:
        """Canonical: the canonical set (or the confirmation set, which confirms a canonical result), the
        `[canonical]` models, the default judge prompt and the default decoding settings."""
        out = []
        if c.prompts == self.confirmation_set:
            if c.prompts_hash != definition("confirmation")["hash"]:
                out.append("not the confirmation set's prompts")
        elif c.prompts != "canonical" or c.prompts_hash != definition("canonical")["hash"]:
            out.append(f"prompts {c.prompts!r} are not the canonical set")
        wanted = load_catalog().canonical
        if c.models != wanted:
            out.append(f"models {c.models} are not the canonical {wanted}")
        if c.settings["judge"]["digest"] != JudgeSettings().digest():
            out.append("not the default judge prompt")
        if c.settings["engine"] != self.engine_settings().identity():
            out.append("not the default decoding settings")
        return out

    def prompt_problems(self, name: str, ids: list[str], hash_: str) -> list[str]:
        doc = definition("canonical")
        if name == "canonical" and (hash_ != doc["hash"] or ids != doc["ids"]):
            return [f"named canonical, but not the canonical {len(doc['ids'])} prompts"]
        if name.startswith("canonical[:") and ids != doc["ids"][: len(ids)]:
            return [f"named {name}, but not the first {len(ids)} canonical prompts"]
        return []


def main(argv: list[str] | None = None) -> int:
    """`python -m workspace.benchmarks.alpaca_eval [--write-canonical]`: fetch the sets and show (or regenerate)
    canonical.json."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m workspace.benchmarks.alpaca_eval", description=main.__doc__)
    ap.add_argument("--write-canonical", action="store_true", help=f"regenerate {CANONICAL_FILE.name} from the seed")
    ap.add_argument("--write-confirmation", action="store_true", help=f"regenerate {CONFIRMATION_FILE.name}")
    args = ap.parse_args(argv)
    if args.write_canonical:
        doc = write_canonical(log=print)
        print(f"wrote {CANONICAL_FILE}: {doc['n']} prompts, hash {doc['hash']}")
    if args.write_confirmation:
        doc = write_confirmation(log=print)
        print(f"wrote {CONFIRMATION_FILE}: {doc['n']} prompts, hash {doc['hash']}")
    full = alpaca_eval(log=print)
    print(f"alpaca_eval: {len(full)} prompts, hash {full.hash}")
    try:
        ps = canonical(log=print)
    except DataError as e:
        print(f"canonical: {e}")
        return 1
    print(f"canonical: {len(ps)} prompts, hash {ps.hash}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
