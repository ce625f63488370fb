"""Tamper-evident records: real evaluation records (in-test servers) verify; forged ones — a preference, an author,
a text, a hand-written record — are refused by `cdw verify` and shown as unverified by the leaderboard."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.test_evaluate import PROMPTS, SETTINGS, run
from workspace.cli import main
from workspace.evaluate import load_evaluation
from workspace.leaderboard import get_leaderboard
from workspace.records import signing
from workspace.records.verify import check


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def rewrite(path, objs: list[dict], key: Ed25519PrivateKey | None = None) -> None:
    """Write the lines back; with `key`, drop the old signatures and sign the result (a forger's own key)."""
    objs = [o for o in objs if key is None or o["type"] != "signature"]
    data = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)
    if key is not None:
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        sig = {"type": "signature", "key": signing.PREFIX + base64.b64encode(raw).decode(),
               "sha256": signing.digest(data), "signature": base64.b64encode(key.sign(data)).decode()}  # fmt: skip
        data += json.dumps(sig).encode() + b"\n"
    path.write_bytes(data)


def verify_cli(eid: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["verify", eid])
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def made(start_toys, tmp_path_factory) -> tuple:
    """One evaluation on the toy trio, made once: (its records folder, the evaluation)."""
    toys = start_toys()
    toys.learn_references([p.instruction for p in PROMPTS], max_tokens=SETTINGS.engine.max_tokens)
    folder = tmp_path_factory.mktemp("records")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDW_RECORDS_DIR", str(folder))
        ev = asyncio.run(run(toys, "top1(tau=0.3, span=punct)"))
    assert ev.complete
    return folder, ev


@pytest.fixture
def evaluation(made, records_dir):
    """The evaluation, its records (and baselines) copied into this test's records folder, which it may forge."""
    folder, ev = made
    shutil.copytree(folder, records_dir)
    return ev


async def test_an_untouched_record_verifies(evaluation, records_dir):
    c = check("evaluation", evaluation.id)
    assert c.valid and c.verified and c.trusted_by == "the test suite", c.reason
    code, out = verify_cli(evaluation.id)
    assert code == 0 and "verifies" in out
    entry = next(e for e in get_leaderboard([]).evaluations if e.evaluation == evaluation.id)
    assert entry.verified and entry.to_json()["verified"] is True


def _forge_preference(objs):
    v = next(o for o in objs if o["type"] == "preference" and o["calls"] == 2)
    v["preference"] = 0.5  # the classic: every verdict a tie, so the candidate looks as good as the reference
    return "preference"


def _forge_author(objs):
    g = next(o for o in objs if o["type"] == "generation" and any(s[0] == "strong" for s in o["decode"]["segments"]))
    for s in g["decode"]["segments"]:
        s[0] = "weak"  # credit the strong model's text to the weak one: f_weak goes up
    return "author"


def _forge_text(objs):
    g = next(o for o in objs if o["type"] == "generation")
    g["decode"]["text"] = g["decode"]["text"] + " and a better ending"
    return "text"


# In the fast tier: an edit without a new signature (the signature check does not depend on what was edited), and
# each re-signed forgery whose content checks differ (a preference caught by them, an author only by the key); the
# rest in the slow tier (test_content_checks_catch_each_forgery_without_the_signature covers the text in fast).
FORGERIES = [
    pytest.param(forge, resign, id=f"{'edited-and-re-signed' if resign else 'edited'}-{forge.__name__}",
                 marks=() if (forge, resign) in {(_forge_text, False), (_forge_preference, True),
                                                 (_forge_author, True)} else pytest.mark.slow)
    for resign in (False, True)
    for forge in (_forge_preference, _forge_author, _forge_text)
]  # fmt: skip


@pytest.mark.parametrize(("forge", "resign"), FORGERIES)
async def test_a_forged_record_is_refused_and_shown_unverified(evaluation, records_dir, forge, resign):
    path = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    objs = lines(path)
    what = forge(objs)
    rewrite(path, objs, Ed25519PrivateKey.generate() if resign else None)
    c = check("evaluation", evaluation.id)
    assert not c.verified
    if resign:  # the forger's own signature holds, but the key is not trusted...
        assert c.signed_by and c.trusted_by is None
        if what != "author":  # ...and the content checks catch a preference or a text that does not add up
            assert not c.valid and c.problems
    else:
        assert any("signature" in p for p in c.problems)
    code, out = verify_cli(evaluation.id)
    assert code == 1 and "does not verify" in out
    board = get_leaderboard([])
    entry = next(e for e in board.evaluations if e.evaluation == evaluation.id)
    assert entry.status == "unverified" and not entry.verified and entry.note
    assert entry.to_json()["verified"] is False and entry not in board.certified


async def test_content_checks_catch_each_forgery_without_the_signature(evaluation, records_dir, monkeypatch):
    """With the signature checks aside, the offline checks still refuse a forged preference and a forged text."""
    path = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    original = lines(path)
    for forge, expect in ((_forge_preference, "mean of its two one-order verdicts"),
                          (_forge_text, "not its segments joined")):  # fmt: skip
        objs = json.loads(json.dumps(original))
        forge(objs)
        rewrite(path, objs)
        problems = check("evaluation", evaluation.id).problems
        assert any(expect in p for p in problems), problems
    rewrite(path, original)
    assert check("evaluation", evaluation.id).verified


async def test_a_hand_written_record_is_not_certified(evaluation, records_dir):
    """The issue's case: strong text credited to the weak model and every preference 0.5, written by hand (no
    signature) next to real baselines. It is read, numbers and all, but it is never verified or certified."""
    path = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    objs = [o for o in lines(path) if o["type"] != "signature"]
    for o in objs:
        if o["type"] == "generation":
            for s in o["decode"]["segments"]:
                s[0] = "weak"
        if o["type"] == "preference":
            o.update(preference=0.5, candidate_first=0.5, reference_first=0.5)
    rewrite(path, objs)
    ev = load_evaluation(evaluation.id)
    assert ev.summary.f_weak == 1.0  # the numbers it claims...
    assert not ev.verified and not ev.certified and any("not verified" in r for r in ev.reasons())
    assert "unsigned" in ev.check.reason or "signature" in ev.check.reason


async def test_a_record_moved_under_another_id_is_refused(evaluation, records_dir):
    src = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    dst = records_dir / "evaluations" / "0123456789abcdef.jsonl"
    dst.write_bytes(src.read_bytes())
    assert any("its id is not the hash" in p for p in check("evaluation", "0123456789abcdef").problems)


async def test_records_as_data_frames(evaluation, records_dir):
    from workspace.frames import evaluations_frame, examples_frame

    ev = load_evaluation(evaluation.id)
    evals = evaluations_frame()  # every evaluation on record
    (row,) = evals.filter(evals["evaluation"] == ev.id).to_dicts()
    assert row["f_weak"] == ev.summary.f_weak and row["recovery"] == ev.certification.recovery
    assert row["verified"] is True and row["certified"] is False and row["reasons"] == ev.reasons()
    ex = examples_frame([ev])
    assert ex.height == ev.n and set(ex["prompt_id"]) == {e.prompt_id for e in ev.examples}
    by_id = {e.prompt_id: e for e in ev.examples}
    for r in ex.to_dicts():
        e = by_id[r["prompt_id"]]
        assert r["candidate"] == e.candidate.text and r["preference"] == e.preference.preference
        assert "".join(s["text"] for s in r["segments"]) == r["candidate"]


def _signed(objs: list[dict]) -> bytes:
    """The lines, with a signature (this workspace's key: the suite's, trusted) after each None in `objs`."""
    data = b""
    for o in objs:
        if o is None:
            key, sig = signing.sign(data)
            o = {"type": "signature", "key": key, "sha256": signing.digest(data), "signature": sig}
        data += json.dumps(o, ensure_ascii=False).encode() + b"\n"
    return data


async def test_a_record_cut_at_an_earlier_sessions_signature_is_reported_incomplete(evaluation, records_dir):
    """Written in two sessions, then cut after the first one's signature: every signature left holds, and
    `cdw verify` says how many prompts are left and which sessions, and fails."""
    path = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    objs = [o for o in lines(path) if o["type"] != "signature"]
    scored = [i for i, o in enumerate(objs) if o["type"] in ("preference", "test")]
    cut = scored[1] + 1  # the first session ends after two prompts were scored
    path.write_bytes(_signed([*objs[:cut], None, *objs[cut:], None]))
    c = check("evaluation", evaluation.id)
    assert c.verified and c.coverage.complete and c.coverage.sessions == (cut - 1, len(objs) - cut), c.coverage
    assert verify_cli(evaluation.id)[0] == 0
    path.write_bytes(_signed([*objs[:cut], None]))  # the second session's lines are gone
    c = check("evaluation", evaluation.id)
    assert c.valid and c.verified, c.reason  # the signatures alone cannot tell
    assert not c.coverage.complete and c.coverage.sessions == (cut - 1,)
    assert c.coverage.scored + c.coverage.errors == 2 and c.coverage.prompts == len(PROMPTS)
    code, out = verify_cli(evaluation.id)
    assert code == 1 and f"incomplete: 2 of {len(PROMPTS)} prompts have results" in out and "1 writer session" in out
    r = CliRunner().invoke(main, ["verify", evaluation.id, "--json"])
    assert r.exit_code == 1 and json.loads(r.output)["coverage"]["missing"] == len(PROMPTS) - 2


async def test_a_records_folder_does_not_bring_its_own_trusted_keys(evaluation, records_dir, monkeypatch):
    """A folder CDW_RECORDS_DIR points at, with a trusted_keys.txt naming the key that signed its records: that
    list is never read; the trusted list is the project's (or CDW_TRUSTED_KEYS)."""
    path = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    forger = Ed25519PrivateKey.generate()
    rewrite(path, lines(path), forger)
    raw = forger.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (records_dir / "trusted_keys.txt").write_text(f"{signing.PREFIX}{base64.b64encode(raw).decode()} the forger\n")
    monkeypatch.delenv("CDW_TRUSTED_KEYS")
    c = check("evaluation", evaluation.id)
    assert c.signed_by and c.trusted_by is None and not c.verified
    assert signing.trusted_keys_file() != records_dir / "trusted_keys.txt"


async def test_baselines_signed_by_another_trusted_key_verify(evaluation, records_dir, monkeypatch, tmp_path):
    """An evaluation made on a new machine (its own key) over baselines another trusted key signed verifies; the same
    evaluation is refused once that other key leaves the trusted list."""
    path = records_dir / "evaluations" / f"{evaluation.id}.jsonl"
    second = Ed25519PrivateKey.generate()
    rewrite(path, lines(path), second)
    raw = second.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    listed = signing.trusted_keys_file().read_text()
    both = tmp_path / "trusted_keys.txt"
    both.write_text(listed + f"{signing.PREFIX}{base64.b64encode(raw).decode()} a second machine\n")
    monkeypatch.setenv("CDW_TRUSTED_KEYS", str(both))
    c = check("evaluation", evaluation.id)
    assert c.verified and c.trusted_by == "a second machine", c.reason
    only_second = tmp_path / "only_second.txt"
    only_second.write_text(f"{signing.PREFIX}{base64.b64encode(raw).decode()} a second machine\n")
    monkeypatch.setenv("CDW_TRUSTED_KEYS", str(only_second))
    c = check("evaluation", evaluation.id)
    assert not c.verified and any("another key" in p for p in c.problems)
