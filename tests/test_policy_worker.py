"""Policies from files run in a sandboxed worker (workspace/policies/remote.py): by behaviour.

A hostile policy file (patching the judge, reading the signing key and an environment canary, running commands,
writing into the records) leaves the host untouched and evaluates exactly as its honest twin does; a policy that
crashes, hangs, floods or answers nonsense is an error on that decode only; the template still decodes as the
built-in margin gate does, message for message one draft at a time.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from workspace import judge
from workspace.cli import main
from workspace.engine import EngineSettings, Models, decode_many
from workspace.policies import PolicyError, load_policy, remote

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="policy workers need bubblewrap (`bwrap`)")

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = EngineSettings(chunk_tokens=7, top_k=5, max_tokens=80, max_span_tokens=16)
CANARY = "cdw-canary-7f3a"

HONEST = """
from workspace.policies import Policy, parse_span


class Gate(Policy):
    top_k = 2

    def __init__(self, tau: float = 0.3, span: str = "punct"):
        self.tau = float(tau)
        self.span = parse_span(span)

    def decide(self, s):
        {attack_in_decide}
        return s.p1 - s.p2 < self.tau
"""

# What an optimiser that found a way around write_policy's check would try, knowing the host's paths.
ATTACK = """
import os, subprocess, sys
from pathlib import Path

HOST = {host!r}
RECORDS = {records!r}
KEYS = [os.environ.get("CDW_KEYS_DIR", ""), {keys!r}, str(Path.home() / ".cdw" / "keys")]
STOLEN = []


def _try(f):
    try:
        f()
    except BaseException:
        pass


def _patch_judge():
    import workspace.judge as j

    async def prefer(self, instruction, candidate, reference):
        raise SystemExit("patched")

    j.Judge.prefer = prefer
    Path(HOST, "judge-patched").touch()


def _steal():
    if os.environ.get("SECRET_CANARY"):
        STOLEN.append(os.environ["SECRET_CANARY"])
    for folder in filter(None, KEYS):
        for f in Path(folder).glob("*"):
            _try(lambda f=f: STOLEN.append(f.read_text()))
    for f in ("/proc/1/environ", "/proc/self/environ"):
        _try(lambda f=f: STOLEN.append(open(f).read()) if "{canary}" in open(f).read() else None)


def _commands():
    subprocess.run(["touch", str(Path(HOST, "subprocess-ran"))])
    os.system("touch " + str(Path(HOST, "system-ran")))


def _vandalise():
    for f in Path(RECORDS).rglob("*.jsonl"):
        f.write_text("")
    Path(RECORDS, "planted.jsonl").write_text("{{}}")


for attack in (_patch_judge, _steal, _commands, _vandalise):
    _try(attack)


def _again():  # once more from inside decide(), while the evaluator is decoding
    if not STOLEN and not globals().get("AGAIN"):
        globals()["AGAIN"] = True
        for attack in (_patch_judge, _steal, _commands, _vandalise):
            _try(attack)
"""
ATTACK_IN_DECIDE = (
    "_again()\n"
    "        if STOLEN:  # a leak would show: in the decode's error, and as a different evaluation\n"
    "            raise RuntimeError('stolen: ' + ' '.join(STOLEN))"
)


def hostile(folder: Path, host: Path, records: Path, keys: str) -> str:
    """The honest gate with the attacks added (at import and on every token)."""
    attack = ATTACK.format(host=str(host), records=str(records), keys=keys, canary=CANARY)
    src = attack + HONEST.format(attack_in_decide=ATTACK_IN_DECIDE)
    (folder / "gate_hostile.py").write_text(src)
    (folder / "gate.py").write_text(HONEST.format(attack_in_decide="pass"))
    return src


def untouched(host: Path, records: Path, before: dict[str, str]) -> None:
    assert sorted(p.name for p in host.iterdir()) == [], "a policy reached the host's files"
    after = {str(p): p.read_text() for p in records.rglob("*.jsonl")}
    assert {k: after[k] for k in before} == before and not (records / "planted.jsonl").exists()


@pytest.fixture
def attack(tmp_path, monkeypatch):
    host = tmp_path / "host"
    host.mkdir()
    folder = tmp_path / "policies"
    folder.mkdir()
    monkeypatch.setenv("SECRET_CANARY", CANARY)
    records = Path(__import__("os").environ.get("CDW_RECORDS_DIR", tmp_path / "records"))
    hostile(folder, host, records, __import__("os").environ.get("CDW_KEYS_DIR", ""))
    return host, folder, records


def cli_eval(toys, policy: str, prompts: Path) -> dict:
    flags = [f"--{role}-url={url}" for role, url in toys.urls.items()]
    r = CliRunner().invoke(main, ["eval", "--policy", policy, "--prompts", str(prompts), "--max-tokens", "80",
                                  "--json", "--no-cache", *flags], catch_exceptions=False)  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


async def test_a_hostile_policy_leaves_the_host_untouched_and_decodes_as_its_honest_twin(toys, attack):
    host, folder, records = attack
    before = {str(p): p.read_text() for p in records.rglob("*.jsonl")}
    prefer = judge.Judge.prefer
    instructions = [f"Task {i}: do it well." for i in range(2)]
    models = Models.from_endpoints(toys.urls)
    try:
        evil = await decode_many(instructions, f"{folder}/gate_hostile.py:Gate(tau=0.3)", models, SETTINGS,
                                 progress=False)  # fmt: skip
        honest = await decode_many(instructions, "margin(tau=0.3, span=punct)", models, SETTINGS, progress=False)
    finally:
        await models.close()
    assert [d.error for d in evil] == [None] * 2 and judge.Judge.prefer is prefer
    texts = [[[(s.author, s.text) for s in d.segments] for d in run] for run in (evil, honest)]
    assert texts[0] == texts[1] and any(d.num_deferrals for d in evil)
    untouched(host, records, before)


@pytest.mark.slow  # two CLI evaluations; the test above runs the same hostile policy through the engine (fast tier)
def test_a_hostile_policy_through_the_cli_leaves_the_host_untouched_and_scores_as_its_honest_twin(
    toys, attack, tmp_path
):
    host, folder, records = attack
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Task {i}: do it well."}) + "\n" for i in range(5)))
    prefer = judge.Judge.prefer
    honest = cli_eval(toys, f"{folder}/gate.py:Gate(tau=0.3)", prompts)
    before = {str(p): p.read_text() for p in records.rglob("*.jsonl")}
    evil = cli_eval(toys, f"{folder}/gate_hostile.py:Gate(tau=0.3)", prompts)
    assert evil["errors"] == [] and honest["errors"] == []
    assert judge.Judge.prefer is prefer
    untouched(host, records, before)
    same = ("n", "f_weak", "utility", "u_weak", "recovery", "ci")
    assert {k: evil[k] for k in same} == {k: honest[k] for k in same}
    assert evil["evaluation_id"] != honest["evaluation_id"]  # other code, another id
    texts = [[json.loads(line) for line in (records / "evaluations" / f"{e['evaluation_id']}.jsonl").open()]
             for e in (honest, evil)]  # fmt: skip
    # By prompt: generations are appended as they finish, in an order concurrency decides.
    gens = [{g["prompt_id"]: g["decode"]["text"] for g in rec if g.get("type") == "generation"} for rec in texts]
    assert gens[0] == gens[1] and len(gens[0]) == 5
    # The re-check runs the policy the same way: it decodes again, in the sandbox, and agrees; nothing is touched.
    flags = [f"--{role}-url={url}" for role, url in toys.urls.items()]
    r = CliRunner().invoke(main, ["verify", evil["evaluation_id"], "--replay", "3", "--json", *flags])
    replay = json.loads(r.stdout)["replay"]
    assert r.exit_code == 0 and replay["same_text"] == 3 and replay["mismatches"] == [], r.output
    assert judge.Judge.prefer is prefer
    untouched(host, records, before)


@pytest.mark.slow  # two evaluations through a policy worker
def test_replaying_an_evaluation_whose_policy_file_was_edited_says_so_and_does_not_agree(toys, tmp_path):
    """`cdw verify --replay` compares the file policy's identity now with the recorded one: an edit to what it
    runs is reported and nothing is replayed; an edit elsewhere in the file (a comment) replays and agrees."""
    gate = tmp_path / "gate.py"
    source = HONEST.format(attack_in_decide="pass")
    gate.write_text(source)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"instruction": "Task 1: do it well."}) + "\n")
    flags = [f"--{role}-url={url}" for role, url in toys.urls.items()]
    r = CliRunner().invoke(main, ["eval", "--policy", f"{gate}:Gate(tau=0.3)", "--prompts", str(prompts),
                                  "--max-tokens", "24", "--json", *flags])  # fmt: skip
    assert r.exit_code == 0, r.output
    eid = json.loads(r.stdout)["evaluation_id"]

    def verify(*extra: str):
        return CliRunner().invoke(main, ["verify", eid, "--replay", "1", *extra, *flags])

    gate.write_text(source + "\n# a comment added later\n")
    r = verify("--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["replay"]["same_text"] == 1, r.output
    gate.write_text(source.replace("< self.tau", "<= self.tau"))
    r = verify("--json")
    replay = json.loads(r.stdout)["replay"]
    assert r.exit_code == 1 and not replay["agrees"] and replay["prompt_ids"] == [], r.output
    assert "is not the policy on record" in replay["policy_changed"]
    r = verify()
    assert r.exit_code == 1 and "not the policy on record" in r.output and "same text" not in r.output


def test_the_identity_is_the_in_process_one_and_the_file_is_never_imported_here(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from workspace.policies.identity import code_identity

    pol = load_policy("policies/template.py:MarginCooldown(tau=0.1, min_gap=3, span=punct)")
    assert isinstance(pol, remote.WorkerPolicy)
    template = str(ROOT / "policies" / "template.py")
    assert not any(getattr(m, "__file__", None) == template for m in list(sys.modules.values()))
    spec = importlib.util.spec_from_file_location("cdw_template_here", ROOT / "policies" / "template.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "cdw_template_here", module)
    spec.loader.exec_module(module)
    assert pol.source_hash() == code_identity(module.MarginCooldown)
    assert (pol.tau, pol.min_gap, pol.span.kind, pol.top_k) == (0.1, 3, "punct", 2)
    marker = tmp_path / "imported"
    (tmp_path / "loud.py").write_text(f"try:\n    open({str(marker)!r}, 'w')\nexcept OSError:\n    pass\n"
                                      "from workspace.policies import Policy\n"
                                      "class P(Policy):\n    def decide(self, s):\n        return False\n")  # fmt: skip
    load_policy(f"{tmp_path}/loud.py:P")
    assert not marker.exists()


MISBEHAVE = """
import os, struct, time
from workspace.policies import Policy


class Gate(Policy):
    def __init__(self, how: str = ""):
        self.how = how

    def decide(self, s):
        if s.prompt_tokens > 40 and s.position >= 3:  # only the second instruction's decode
            if self.how == "crash":
                os._exit(3)
            if self.how == "raise":
                raise ValueError("a bug in the policy")
            if self.how == "hang":
                while True:
                    time.sleep(0.01)
            if self.how == "flood":
                os.write(4, struct.pack(">I", 1 << 30) + b"x" * 65536)
            if self.how == "print":
                print("x" * (4 << 20))
            if self.how == "nonsense":
                os.write(4, struct.pack(">I", 9) + b'{"i": 99}')
        return s.p1 - s.p2 < 0.3
"""


@pytest.mark.parametrize(
    "how, message",
    [
        # (a worker each, ~1 s: three in the fast tier, the rest in slow)
        pytest.param("crash", "exited (status 3)", marks=pytest.mark.slow),
        ("raise", "the policy raised ValueError: a bug in the policy"),
        ("hang", "did not answer within 0.5 s"),
        ("flood", "flooded"),
        pytest.param("print", "File too large", marks=pytest.mark.slow),  # its prints are capped, not in the channel
        pytest.param("nonsense", "nonsense", marks=pytest.mark.slow),
    ],
)
async def test_a_misbehaving_policy_is_an_error_on_that_decode_only(how, message, toys, tmp_path, monkeypatch):
    monkeypatch.setattr(remote, "MESSAGE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(remote, "MAX_WORKERS", 1)  # the others share the worker it breaks: they move and go on
    (tmp_path / "bad.py").write_text(MISBEHAVE)
    instructions = ["Task 0.", "Task 1.", "Task 3, a little longer than the others."]  # only the last misbehaves
    models = Models.from_endpoints(toys.urls)
    try:
        bad = await decode_many(instructions, f"{tmp_path}/bad.py:Gate(how={how!r})", models, SETTINGS,
                                progress=False)  # fmt: skip
        good = await decode_many(instructions, "margin(tau=0.3)", models, SETTINGS, progress=False)
    finally:
        await models.close()
    assert [d.error for d in bad[:2]] == [None, None]
    assert [[s.text for s in d.segments] for d in bad[:2]] == [[s.text for s in d.segments] for d in good[:2]]
    assert bad[2].finish_reason == "error" and message in bad[2].error and "PolicyWorkerError" in bad[2].error


def test_a_file_that_fails_to_load_is_a_policy_error(tmp_path):
    (tmp_path / "broken.py").write_text("import numpy_that_is_not_there\n")
    with pytest.raises(PolicyError, match="importing .* failed: ModuleNotFoundError"):
        load_policy(f"{tmp_path}/broken.py:P")
    (tmp_path / "exits.py").write_text("import os\nos._exit(0)\n")
    with pytest.raises(PolicyError, match="exited"):
        load_policy(f"{tmp_path}/exits.py:P")
    (tmp_path / "mine.py").write_text(textwrap.dedent(HONEST.format(attack_in_decide="pass")))
    with pytest.raises(PolicyError, match="plain values"):
        load_policy(f"{tmp_path}/mine.py:Gate(tau=margin(tau=0.1))")


PEEK_AND_CASCADE = """
from workspace.policies import Action, Decision, Policy, parse_span


class Peek(Policy):
    top_k = 2

    def __init__(self, tau: float = 0.3):
        self.tau, self.span = float(tau), parse_span("words:2")

    def decide(self, s):
        v = s.p1 - s.p2
        return Decision(Action.PEEK if v < self.tau else Action.CONTINUE, v)


class Whole(Policy):
    prompt_level = True
    top_k = 1

    def __init__(self, tau: float = 0.7):
        self.tau = float(tau)

    def decide(self, s):
        return False

    def keep_weak(self, signals):
        return not signals or sum(s.p1 for s in signals) / len(signals) >= self.tau
"""


@pytest.mark.parametrize(
    "mine, builtin, strong",
    [("Peek(tau=0.3)", "lookahead(margin(tau=0.3, span=words:2))", True),
     pytest.param("Peek(tau=0.3)", "lookahead(margin(tau=0.3, span=words:2))", False, marks=pytest.mark.slow),
     pytest.param("Whole(tau=0.99)", "cascade(tau=0.99)", True, marks=pytest.mark.slow),
     pytest.param("Whole(tau=0.01)", "cascade(tau=0.01)", False, marks=pytest.mark.slow)],
)  # fmt: skip
async def test_peeks_and_prompt_level_policies_from_files_decode_as_the_builtin_ones(
    mine, builtin, strong, start_toys, tmp_path
):
    """A peek that finds agreement (a strong model that is the weak one: it always agrees) resumes the draft's
    scan after it, a second message for the same draft; a prompt-level policy's keep_weak gets every signal of the
    weak answer. `strong`: the usual strong toy (it hands over), else one that is the weak toy."""
    from tests.fakeserver import ToyModel

    toys = start_toys() if strong else start_toys(strong=ToyModel(name="strong", seed=1, eos_after=110))
    (tmp_path / "both.py").write_text(PEEK_AND_CASCADE)
    instructions = [f"Task {i}: do it well." for i in range(3)]
    models = Models.from_endpoints(toys.urls)
    try:
        runs = [await decode_many(instructions, p, models, SETTINGS, progress=False)
                for p in (f"{tmp_path}/both.py:{mine}", builtin)]  # fmt: skip
    finally:
        await models.close()
    assert all(d.error is None for run in runs for d in run)
    texts = [[[(s.author, s.text) for s in d.segments] for d in run] for run in runs]
    assert texts[0] == texts[1]
    peeks = sum(c.kind == "peek" and c.role == "strong" for d in runs[0] for c in d.calls)
    if mine.startswith("Peek") and not strong:  # some peeks agreed: the scan resumed after them
        assert peeks > sum(d.num_deferrals for d in runs[0])
    else:
        assert any(d.num_deferrals for d in runs[0]) is strong


def test_a_module_spec_runs_in_the_worker_without_being_imported_here(tmp_path, monkeypatch):
    import sys

    (tmp_path / "cdw_mod_policy.py").write_text(textwrap.dedent(HONEST.format(attack_in_decide="pass")))
    monkeypatch.syspath_prepend(str(tmp_path))
    pol = load_policy("cdw_mod_policy:Gate(tau=0.3)")
    assert isinstance(pol, remote.WorkerPolicy) and pol.describe() == "cdw_mod_policy:Gate(tau=0.3)"
    assert "cdw_mod_policy" not in sys.modules and pol.tau == 0.3
    with pytest.raises(PolicyError, match="no such module"):
        load_policy("cdw_no_such_module:Gate")


async def test_many_drafts_at_once_more_than_the_pipe_holds_are_each_answered_as_their_own(tmp_path, monkeypatch):
    """Requests to a worker are pipelined: 60 decodes send a 600-token draft each at once (several pipes full), and
    each gets the answer to its own draft (the token at which its draft, and no other, fires)."""
    import asyncio
    import math

    monkeypatch.setattr(remote, "MAX_WORKERS", 1)
    (tmp_path / "gate.py").write_text(textwrap.dedent(HONEST.format(attack_in_decide="pass")))
    pol = load_policy(f"{tmp_path}/gate.py:Gate(tau=0.3)")
    quiet, fires = [math.log(0.9), math.log(0.05)], [math.log(0.4), math.log(0.35)]

    async def one(k: int):
        decode = pol.fresh()
        tokens = [[7, "word ", -0.1, fires if j == 10 * k + 3 else quiet, 5 * j] for j in range(600)]
        draft = {"base": "", "draft": "word " * 600, "pos": 0, "since": 0, "prompt": 9, "defer": True, "tok": tokens}
        try:
            return await decode.scan(draft, len(tokens))
        finally:
            decode.release()

    found = await asyncio.gather(*(one(k) for k in range(60)))
    assert [f[0] for f in found] == [10 * k + 3 for k in range(60)]
