"""Findings and the leaderboard (workspace/forum.py, workspace/leaderboard.py; ARCHITECTURE.md “Records and findings”).

Evaluation records are real: `evaluate(...)` runs against the in-test servers of tests/test_evaluate.py. Fake
servers cannot be the canonical models and prompt set, so tests that need certified entries patch
`Evaluation.canonical` for chosen record ids; certification itself (complete, recovery ≥ bar) is left real.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import time
import warnings

import pytest
from click.testing import CliRunner

from tests.test_evaluate import PROMPTS, SETTINGS, make_setup
from workspace.cli import main
from workspace.evaluate import Evaluation, evaluate, load_evaluation
from workspace.forum import FindingError, FindingWarning, get_finding, get_findings, share_finding
from workspace.leaderboard import get_leaderboard

# On the toy servers (tests/test_evaluate.py), 8 prompts: margin → f_weak ≈ 0.035 at recovery ≈ 1.9, but its one-sided
# lower bound is ≈ -0.3 (8 prompts cannot show it is not noise): below the bar; top1(0.5) and always write nothing
# weak (f_weak 0) with recoveries ≈ 2.2 and 1.0, both certified (a real tie on f_weak); never and top1(0.3) ~0.
POLICIES = {
    "margin": "margin(tau=0.2, span=sentence)",
    "top1_high": "top1(tau=0.5, span=sentence)",
    "always": "always(span=sentence)",
    "never": "never",
    "top1_low": "top1(tau=0.3, span=punct)",
}


async def _produce(servers) -> dict[str, str]:
    ids = {}
    async with make_setup(servers) as setup:
        for key, spec in POLICIES.items():
            ids[key] = (await evaluate(spec, PROMPTS, setup, SETTINGS, progress=False)).id
    return ids


@pytest.fixture(scope="session")
def made(tmp_path_factory, start_toys) -> tuple:
    """The POLICIES evaluations on the toy trio, once per session (this file's tests and test_site's read them):
    (their records folder, {key: evaluation id})."""
    toys = start_toys()
    toys.learn_references([p.instruction for p in PROMPTS], max_tokens=SETTINGS.engine.max_tokens)
    folder = tmp_path_factory.mktemp("forum-records")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDW_RECORDS_DIR", str(folder))
        return folder, asyncio.run(_produce(toys))


@pytest.fixture
def evals(made, monkeypatch):
    """{key: evaluation id}, with CDW_RECORDS_DIR pointing at their records."""
    folder, ids = made
    monkeypatch.setenv("CDW_RECORDS_DIR", str(folder))
    return ids


def canonical_for(monkeypatch, ids) -> None:
    """Fake servers cannot be canonical: declare these records canonical (certification is still computed)."""
    chosen = set(ids)
    monkeypatch.setattr(Evaluation, "canonical_problems",
                        lambda self: [] if self.id in chosen else ["not the canonical set (test)"])  # fmt: skip


# ---------------------------------------------------------------- writing and reading findings


def _post(i: int, barrier) -> None:
    barrier.wait()  # every process writes at the same instant, under the same title: names clash
    share_finding("Same title for all", "insight", f"process {i}\n\n" + f"line {i}\n" * 400, f"p{i}", tags=[str(i)])


def _no_hard_links(*args, **kw):
    raise PermissionError("this filesystem has no hard links")


@pytest.mark.parametrize("hard_links", [True, False], ids=["link", "o_excl"])
@pytest.mark.slow
def test_twenty_processes_posting_at_once_lose_nothing(findings_dir, monkeypatch, hard_links):
    if not hard_links:
        monkeypatch.setattr(os, "link", _no_hard_links)  # inherited by the forked writers
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(20)
    procs = [ctx.Process(target=_post, args=(i, barrier)) for i in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(list(findings_dir.glob("*.md"))) == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error", FindingWarning)  # every file must be intact
        found = get_findings()
    assert sorted(f.author for f in found) == sorted(f"p{i}" for i in range(20))
    for f in found:
        i = int(f.author[1:])
        assert f.body == (f"process {i}\n\n" + f"line {i}\n" * 400).strip() and f.tags == (str(i),)
    assert not list(findings_dir.glob(".*"))  # no temporary file left behind


@pytest.mark.slow  # needs the five evaluations of `made` (seconds)
def test_a_result_must_name_an_evaluation_that_exists(evals, findings_dir):
    with pytest.raises(FindingError, match="'0123456789abcdef'.*cannot be read"):
        share_finding("Great margins", "result", "f_weak 0.9!", "mallory", evaluation="0123456789abcdef")
    with pytest.raises(FindingError, match="must name the evaluation"):
        share_finding("Great margins", "result", "f_weak 0.9!", "mallory")
    with pytest.raises(FindingError, match="not the policy of evaluation"):
        share_finding("Mislabelled", "result", "text", "mallory", policy="never", evaluation=evals["margin"])
    assert not findings_dir.exists() or not list(findings_dir.glob("*.md"))
    fid = share_finding("Margin at 0.1", "result", "It works.", "alice", evaluation=evals["margin"])
    f = get_finding(fid)
    assert f.evaluation == evals["margin"] and f.policy == POLICIES["margin"]  # the policy comes from the record


def test_bad_arguments_are_refused(findings_dir):
    with pytest.raises(FindingError, match="kind must be one of"):
        share_finding("t", "rumour", "b", "a")
    with pytest.raises(FindingError, match="needs a body"):
        share_finding("t", "insight", "  \n", "a")
    with pytest.raises(FindingError, match="not a finding id"):
        get_finding("../secrets")


def test_findings_come_back_newest_first_and_filter(findings_dir):
    a = share_finding("Margins help", "hypothesis", "Gate on p1 - p2.", "alice", policy="margin(tau=0.05)")
    time.sleep(0.01)
    b = share_finding("Entropy gates do not help", "negative", "Tried tau in 1..3.", "bob", tags=["entropy"])
    time.sleep(0.01)
    c = share_finding("Deferral clusters", "insight", "Spans bunch at sentence starts.", "carol")
    assert [f.id for f in get_findings()] == [c, b, a]
    assert [f.id for f in get_findings(kind="negative")] == [b]
    assert [f.id for f in get_findings(policy="margin")] == [a]  # a family name matches its specs
    assert [f.id for f in get_findings(text="ENTROPY")] == [b]
    assert [f.id for f in get_findings(since=get_finding(b).created)] == [c, b]
    assert get_finding(a).created.tzinfo is not None


def test_a_malformed_finding_is_skipped_with_a_warning_naming_it(findings_dir):
    good = share_finding("Fine", "insight", "All good.", "alice")
    bad = {
        "broken-yaml.md": "---\ntitle: [unclosed\nkind: insight\n---\nbody\n",
        "no-front-matter.md": "just some text\n",
        "bad-kind.md": "---\ntitle: x\nkind: rumour\nauthor: a\ncreated: 2025-01-01T00:00:00Z\n---\nbody\n",
        "no-date.md": "---\ntitle: x\nkind: insight\nauthor: a\n---\nbody\n",
        "result-without-evaluation.md": "---\ntitle: x\nkind: result\nauthor: a\ncreated: 2025-01-01\n---\nb\n",
    }
    for name, text in bad.items():
        (findings_dir / name).write_text(text)
    (findings_dir / "binary.md").write_bytes(b"---\ntitle: \xff\xfe\n---\n")
    with pytest.warns(FindingWarning) as caught:
        found = get_findings()
    assert [f.id for f in found] == [good]
    messages = "\n".join(str(w.message) for w in caught)
    for name in [*bad, "binary.md"]:
        assert name in messages


# ---------------------------------------------------------------- the leaderboard


@pytest.mark.slow  # needs the five evaluations of `made` (seconds)
def test_leaderboard_ranks_certified_by_f_weak_then_recovery_and_lists_the_rest_apart(evals, findings_dir, monkeypatch):
    canonical_for(monkeypatch, [evals[k] for k in ("margin", "top1_high", "always", "never")])
    board = get_leaderboard()
    assert [e.evaluation for e in board.certified] == [evals["top1_high"], evals["always"]]
    assert [e.rank for e in board.certified] == [1, 2]
    assert board.certified[0].f_weak == board.certified[1].f_weak  # the tie, broken by recovery
    assert board.certified[0].recovery > board.certified[1].recovery
    # below the bar, ranked by f_weak: margin clears the bar on its point but not on its lower bound
    assert [e.evaluation for e in board.below_bar] == [evals["never"], evals["margin"]]
    assert "below the bar" in board.below_bar[0].note and "below the floor" in board.below_bar[1].note
    assert [e.evaluation for e in board.non_canonical] == [evals["top1_low"]]
    for e in board.evaluations:  # every number is the record's
        ev = load_evaluation(e.evaluation)
        s, c = ev.summary, ev.certification
        assert (e.f_weak, e.recovery, e.f_weak_ci, e.recovery_ci) == (s.f_weak, c.recovery, s.ci["f_weak"],
                                                                       c.ci["recovery"])  # fmt: skip
        assert e.verified and e.recovery_lower == c.recovery_lower
    assert [(b.f_weak, b.recovery) for b in board.baselines] == [(1.0, 0.0), (0.0, 1.0)]


def test_the_baselines_row_is_there_with_no_records_at_all(findings_dir):
    board = get_leaderboard()
    assert not board.evaluations and board.best is None
    assert [(b.policy.split()[0], b.f_weak, b.recovery) for b in board.baselines] == [
        ("weak", 1.0, 0.0),
        ("strong", 0.0, 1.0),
    ]


@pytest.mark.slow  # needs the five evaluations of `made` (seconds)
def test_tampered_numbers_in_a_finding_do_not_change_the_leaderboard(evals, findings_dir, monkeypatch):
    canonical_for(monkeypatch, evals.values())
    fid = share_finding("Never is great", "result", "f_weak 1.0 at recovery 0.0.", "mallory", evaluation=evals["never"])
    before = get_leaderboard()
    assert before.below_bar[0].finding == fid  # the finding is credited ...
    path = findings_dir / f"{fid}.md"
    text = path.read_text()
    tampered = text.replace("kind: result\n", "kind: result\nf_weak: 0.99\nrecovery: 1.5\ncertified: true\n")
    tampered = tampered.replace("f_weak 1.0 at recovery 0.0.", "**Certified: f_weak 0.99, recovery 1.00, rank 1.**")
    tampered = tampered.replace(f"policy: {POLICIES['never']}", "policy: margin(tau=0.99)")
    assert tampered.count("0.99") == 3
    path.write_text(tampered)
    after = get_leaderboard()
    assert after.to_json() == before.to_json()  # ... but its numbers, status and policy are the record's
    assert [e.evaluation for e in after.certified] == [evals["top1_high"], evals["always"]]


# ---------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_cli_add_list_show_and_leaderboard(evals, findings_dir, tmp_path, monkeypatch):
    run = CliRunner().invoke
    body = tmp_path / "body.md"
    body.write_text("Margin at 0.1 keeps recovery at 1.0 on the toy set.\n")
    r = run(main, ["findings", "add", "--title", "Toy margin", "--kind", "result", "--author", "alice",
                   "--evaluation", evals["margin"], "--tag", "toy", "--body-file", str(body)])  # fmt: skip
    assert r.exit_code == 0, r.output
    fid = r.output.split("posted ")[1].strip()
    # no --body-file: $EDITOR writes the body
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'a').write('Written in the editor.')\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    r = run(main, ["findings", "add", "--title", "Edited", "--kind", "hypothesis", "--author", "bob"])
    assert r.exit_code == 0, r.output
    assert get_findings(kind="hypothesis")[0].body.strip() == "Written in the editor."
    r = run(main, ["findings", "add", "--title", "x", "--kind", "result", "--evaluation", "nope", "--body-file",
                   str(body)])  # fmt: skip
    assert r.exit_code == 1 and "'nope'" in r.output
    (findings_dir / "junk.md").write_text("no front matter")
    r = run(main, ["findings", "list"])
    assert r.exit_code == 0 and "Toy margin" in r.output and "Edited" in r.output and "junk.md" in r.output
    r = run(main, ["findings", "show", fid])
    assert r.exit_code == 0 and "keeps recovery" in r.output
    assert f"{load_evaluation(evals['margin']).summary.f_weak:.3f}" in r.output  # numbers from the record
    r = run(main, ["leaderboard"])
    assert r.exit_code == 0 and "certified" in r.output and "weak only" in r.output
    r = run(main, ["leaderboard", "--json"])
    board = json.loads(r.output[r.output.index("{") :])  # after the warning about junk.md
    assert len(board["baselines"]) == 2 and not board["certified"]  # nothing is canonical here
    mine = next(e for e in board["non_canonical"] if e["evaluation"] == evals["margin"])
    assert mine["finding"] == fid and mine["f_weak"] == load_evaluation(evals["margin"]).summary.f_weak
