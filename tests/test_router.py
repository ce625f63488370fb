"""The learned-router workflow against in-test servers: traces on byte-level BPE models (leading spaces, characters
split across tokens), labels (disagreement and test outcomes) reproducible from the call cache, training that
refuses leaking splits, weights that load without running code, and the probe as an ordinary policy."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tests.bytetoy import ByteToy
from tests.fakeserver import FakeServer, ToyModel
from workspace import sandbox
from workspace.benchmarks import Prompt, PromptSet, humaneval
from workspace.cache import CallCache
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings, Models, decode
from workspace.policies import load_policy
from workspace.policies.features import FEATURES, vector
from workspace.policies.probe import ProbeFileError, load
from workspace.router import labels, traces, train

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=20)
PROMPTS = PromptSet("toy", tuple(Prompt(f"toy/{i}", f"Explain item {i} in a few words, café style.") for i in range(5)))
SETTINGS = EngineSettings(max_tokens=120, top_k=5)


def _models(ws, ss, cache=None) -> Models:
    return Models(ModelClient(Endpoint("weak", (ws.url,), ws.model.name), FAST, cache),
                  ModelClient(Endpoint("strong", (ss.url,), ss.model.name), FAST, cache))  # fmt: skip


@pytest.fixture
async def bpe():
    ws = await FakeServer(ByteToy("weak", seed=11, split_text="empty")).start()
    ss = await FakeServer(ByteToy("strong", seed=12, split_text="empty", alt_eos=True)).start()
    yield ws, ss
    await ws.stop()
    await ss.stop()


def check_rows_tile_the_text(t: traces.Traces, d_by_problem: dict) -> None:
    for problem, d in d_by_problem.items():
        answer = t.decodes[problem].answer
        assert answer == d.text
        rows = t.rows_of(problem)
        assert [r.position for r in rows] == sorted({r.position for r in rows})
        kept = [r for r in rows if not r.deferred]
        weak_text = "".join(s.text for s in d.segments if s.author == "weak")
        assert "".join(answer[r.char_start : r.char_end] for r in kept) == weak_text
        for r in kept:
            if "\ufffd" not in r.token and r.char_end > r.char_start:
                assert answer[r.char_start : r.char_end] == r.token, (problem, r)
        starts, at = set(), 0
        for seg in d.segments:
            if seg.author == "strong":
                starts.add(at)
            at += len(seg.text)
        assert {r.char_start for r in rows if r.deferred} <= starts
        assert sum(r.deferred for r in rows) == d.num_deferrals  # each handoff is at a traced token


@pytest.mark.parametrize("policy", ["never", pytest.param("margin(tau=0.3, span=words:2)", marks=pytest.mark.slow)])
async def test_traces_line_up_with_the_decoded_text(bpe, tmp_path, policy):
    ws, ss = bpe
    m = _models(ws, ss)
    decodes = {}
    t = await traces.collect(PROMPTS, m, tmp_path / "t", policy=policy, settings=SETTINGS, progress=False,
                             on_problem=lambda p, d: decodes.__setitem__(p, d))  # fmt: skip
    await m.close()
    assert len(t.decodes) == 5 and all(d.error is None for d in decodes.values())
    assert any(any(ch in d.text for ch in "éü—’😀中") for d in decodes.values())  # split characters really happen
    check_rows_tile_the_text(t, decodes)
    if policy != "never":
        assert sum(r.deferred for r in t.tokens) > 0
    # a row's signal is what the policy saw: features computed from the file equal the live ones
    r = t.tokens[7]
    assert r.signal(t.decodes[r.problem].answer).text_so_far == t.decodes[r.problem].answer[: r.char_start]
    assert len(r.top_logprobs) == SETTINGS.top_k and t.meta["top_k"] == SETTINGS.top_k


async def test_collect_resumes_after_a_crash_and_refuses_other_settings(bpe, tmp_path):
    ws, ss = bpe
    m = _models(ws, ss)
    full = await traces.collect(PROMPTS, m, tmp_path / "a", settings=SETTINGS, progress=False)
    out = tmp_path / "b"
    await traces.collect(PROMPTS, m, out, settings=SETTINGS, progress=False)
    # a crash: the last two problems' decode lines lost, one torn line left, their token rows written twice later
    lines = (out / "decodes.jsonl").read_bytes().splitlines(keepends=True)
    (out / "decodes.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:20])
    assert len(traces.read(out).decodes) == 3
    before = len(ws.requests)
    again = await traces.collect(PROMPTS, m, out, settings=SETTINGS, progress=False)
    assert len(ws.requests) > before  # the two missing problems were decoded again, not the others
    assert again.decodes == full.decodes and sorted(again.tokens, key=lambda r: (r.problem, r.position)) == sorted(
        full.tokens, key=lambda r: (r.problem, r.position))  # fmt: skip
    with pytest.raises(traces.TraceError, match="other .*top_k"):
        await traces.collect(PROMPTS, m, out, settings=EngineSettings(max_tokens=120, top_k=3), progress=False)
    await m.close()


async def test_disagreement_labels_are_reproducible_from_the_cache(bpe, tmp_path):
    ws, ss = bpe
    cache = CallCache(tmp_path / "calls.sqlite")
    m = _models(ws, ss, cache)
    t = await traces.collect(PROMPTS, m, tmp_path / "t", settings=SETTINGS, progress=False)
    first = await labels.label(t, "disagreement", m, per_problem=12, progress=False)
    assert len(first) == 5 * 12
    assert {lab.stratum for lab in first} >= {0, 3}  # confident tokens are sampled, not only hesitant ones
    assert sum(lab.label for lab in first) > 0  # two unrelated toy models: they mostly disagree
    for lab in first:  # the label is what its two pieces say
        assert lab.label == int(lab.weak != lab.strong)
    # the same labels with both servers gone: every request is answered from the cache
    await ws.stop()
    await ss.stop()
    labels.label_path(t, "disagreement").unlink()
    again = await labels.label(t, "disagreement", m, per_problem=12, progress=False)
    key = lambda r: (r.problem, r.position)  # noqa: E731
    assert sorted(again, key=key) == sorted(first, key=key)
    # resumable: labels on file are not asked for again
    assert await labels.label(t, "disagreement", m, per_problem=12, progress=False) == again
    # the words-only variant asks the same questions: answered by the cache, whitespace ignored
    words = await labels.label(t, "disagreement_words", m, per_problem=12, progress=False)
    assert len(words) == 60 and all(lab.label == int(lab.weak.strip() != lab.strong.strip()) for lab in words)
    assert {(r.problem, r.position) for r in words} == {(r.problem, r.position) for r in first}
    await m.close()
    cache.close()


async def test_a_strong_model_identical_to_the_weak_one_never_disagrees(tmp_path):
    """The strong continuation is asked at exactly the traced prefix: with the same model on both sides (other
    requests, other endpoints: chat continuation vs completion from ids) every label is 0."""
    ws = await FakeServer(ByteToy("weak", seed=11, split_text="empty")).start()
    twin = await FakeServer(ByteToy("weak", seed=11, split_text="empty")).start()
    m = _models(ws, twin)
    t = await traces.collect(PROMPTS, m, tmp_path / "t", settings=SETTINGS, progress=False)
    got = await labels.label(t, "disagreement", m, per_problem=12, progress=False)
    assert len(got) == 60 and [lab for lab in got if lab.label] == []
    await m.close()
    await ws.stop()
    await twin.stop()


def test_sampling_is_stratified_and_seeded():
    rows = []
    for i in range(200):
        p1 = 0.3 + 0.7 * i / 200
        top = [math.log(p1), math.log(max(1e-6, (1 - p1) / 2))]
        rows.append(traces.TokenRow("x", i, i, i + 1, i, "a", top[0], top, i, 10))
    t = traces.Traces(Path("."), {}, {"x": traces.DecodeRow("x", "q", "a" * 200, "length", 1.0)}, tuple(rows))
    a, b = labels.sample(t, 20), labels.sample(t, 20)
    assert a == b and len(a) == 20
    counts = [sum(labels.stratum(r) == k for r in a) for k in range(4)]
    assert min(counts) >= 4, counts  # every confidence level, although most tokens are confident
    assert labels.sample(t, 20, seed=1) != a


# ---------------------------------------------------------------- outcome labels (humaneval, unit tests)


@dataclass
class Scripted(ToyModel):
    """One character per token, confident; follows the first of its answers that extends the text so far."""

    answers: list[str] = field(default_factory=list)

    def logprobs(self, context: list[int]) -> list[float]:
        text = self.decode(context, skip_special=False)
        so_far = text.rsplit("<s>assistant\n", 1)[-1]
        logits = [0.0] * len(self.vocab)
        nxt = next((a[len(so_far)] for a in self.answers if a.startswith(so_far) and len(a) > len(so_far)), None)
        logits[self.ids[nxt] if nxt is not None else self.eos_id] = 9.0
        z = math.log(sum(math.exp(x) for x in logits))
        return [x - z for x in logits]


@pytest.mark.slow  # a decode and a sandboxed test per label
@pytest.mark.skipif(sandbox.shutil.which("bwrap") is None, reason="needs bubblewrap (make sandbox)")
async def test_outcome_labels_mark_the_tokens_whose_line_handoff_fixes_the_program(tmp_path):
    p = humaneval.problems()[0]
    good = humaneval.canonical_answer(p)
    assert good.count("    return False\n") == 1
    bad = good.replace("    return False\n", "    return True\n")
    weak = await FakeServer(Scripted(name="weak", seed=1, answers=[bad, good])).start()
    strong = await FakeServer(Scripted(name="strong", seed=2, reverse=True, answers=[good])).start()
    m = _models(weak, strong)
    settings = EngineSettings(max_tokens=1200, top_k=3, chunk_tokens=64)
    ps = PromptSet("he", (Prompt(p.task_id, humaneval.instruction(p)),))
    t = await traces.collect(ps, m, tmp_path / "t", settings=settings, benchmark="humaneval", progress=False)
    assert t.decodes[p.task_id].answer == bad
    line = bad.rindex("    return True\n")
    diverge = line + len("    return ")
    window = range(line - 3, diverge + 4)
    pos = {r.char_start: r.position for r in t.tokens}
    got = await labels.label(t, "outcome", m, positions=[(p.task_id, pos[c]) for c in window], progress=False)
    by_char = {next(c for c, q in pos.items() if q == lab.position): lab for lab in got}
    for c in window:
        want = int(line <= c <= diverge)  # the weak line is replaced before it goes wrong: the program passes
        assert by_char[c].label == want, (c, bad[c], by_char[c])
        assert by_char[c].weak == "failed"
    await m.close()
    await weak.stop()
    await strong.stop()


# ---------------------------------------------------------------- training and weights


def synthetic_traces(tmp_path: Path, n_problems: int = 40, prompts: str = "humaneval:train") -> traces.Traces:
    """Traces whose label is 'the weak model hesitated' plus noise: a probe must find it; margin nearly does."""
    rng = np.random.default_rng(0)
    out = tmp_path / "syn"
    out.mkdir()
    meta = {"format": "cdw-traces/1", "prompts": prompts, "top_k": 3, "benchmark": "humaneval", "policy": "never"}
    (out / "meta.json").write_text(json.dumps(meta))
    enc = msgspec.json.Encoder()
    dec_lines, tok_lines, lab_lines = [], [], []
    for j in range(n_problems):
        problem = f"P/{j}"
        answer = "x" * 60
        dec_lines.append(enc.encode(traces.DecodeRow(problem, "q", answer, "length", 1.0)))
        for i in range(60):
            p1 = float(rng.uniform(0.34, 1.0))
            p2 = float(rng.uniform(0, 1 - p1)) / 1.01
            top = [math.log(p1), math.log(max(p2, 1e-9)), math.log(max((1 - p1 - p2) / 2, 1e-9))]
            tok_lines.append(enc.encode(traces.TokenRow(problem, i, i, i + 1, 7, "x", top[0], top, i, 30)))
            harmful = int((p1 - p2 < 0.3) ^ (rng.random() < 0.1))
            lab_lines.append(enc.encode(labels.LabelRow(problem, i, "disagreement", harmful, 0)))
    for name, lines in (("decodes", dec_lines), ("tokens", tok_lines), ("labels-disagreement", lab_lines)):
        (out / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return traces.read(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(synthetic traces, kind -> (weights, report)): each kind trained on them once for this module's tests (each
    fit is seconds of CPU: a probe's report fits every kind), every call a fresh copy of the weights to change."""
    import copy

    t = synthetic_traces(tmp_path_factory.mktemp("router"))
    done: dict[str, tuple] = {}

    def get(kind: str) -> tuple[dict, train.Report]:
        if kind not in done:
            done[kind] = train.train(t, "disagreement", kind)
        return copy.deepcopy(done[kind][0]), done[kind][1]

    return t, get


@pytest.mark.slow  # fits gradient-boosted trees and a logistic model (seconds)
@pytest.mark.parametrize("kind", train.KINDS)
def test_training_reports_held_out_aucs_and_exports_exact_weights(tmp_path, trained, kind):
    t, get = trained
    obj, report = get(kind)
    assert report.train_problems == 30 and report.test_problems == 10
    assert set(report.held_out) == {"probe", *[k for k in train.KINDS if k != kind], "margin", "entropy", "top1"}
    assert report.held_out["probe"].roc_auc > 0.8 and report.held_out["margin"].roc_auc > 0.8
    assert set(obj["meta"]["train_problems"]).isdisjoint(obj["meta"]["held_out_problems"])
    path = train.save(obj, tmp_path / "w.json")
    model = load(path)
    ds = train.dataset(t, "disagreement")
    ours = [model.predict(x) for x in ds.X[:50].tolist()]
    assert all(0 <= v <= 1 for v in ours) and max(ours) - min(ours) > 0.5


def test_training_refuses_a_split_that_leaks_problems(tmp_path):
    t = synthetic_traces(tmp_path)
    problems = sorted(t.decodes)
    with pytest.raises(train.ProbeError, match="in both train and test"):
        train.train(t, "disagreement", split=(problems[:25], problems[20:]))
    with pytest.raises(train.ProbeError, match="in both"):
        train.check_split({"a", "b"}, {"b"})
    train.check_split({"a"}, {"b"})  # disjoint: fine
    held = synthetic_traces(tmp_path / "h", prompts="humaneval:test") if (tmp_path / "h").mkdir() is None else None
    with pytest.raises(train.ProbeError, match="held-out half"):
        train.train(held, "disagreement")


class _Payload:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/cdw-probe-pwned"), "ran"))


@pytest.mark.slow  # needs trained weights (seconds)
def test_weights_file_loads_without_executing_code(tmp_path, trained):
    Path("/tmp/cdw-probe-pwned").unlink(missing_ok=True)
    evil = tmp_path / "evil.json"
    evil.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ProbeFileError, match="not a JSON weights file"):
        load(evil)
    assert not Path("/tmp/cdw-probe-pwned").exists()
    with pytest.raises(ProbeFileError, match=r"\.json"):
        load(tmp_path / "weights.pkl")
    obj, _ = trained[1]("trees")
    bad = json.loads(json.dumps(obj))
    bad["params"]["trees"][0]["left"][0] = 0  # a node pointing at itself: an endless loop if trusted
    with pytest.raises(ProbeFileError, match="malformed"):
        train.save(bad, tmp_path / "cycle.json") and load(tmp_path / "cycle.json")
    bad = json.loads(json.dumps(obj))
    bad["features"] = ["hidden_state_17", *bad["features"][1:]]
    with pytest.raises(ProbeFileError, match="other features"):
        train.save(bad, tmp_path / "feat.json") and load(tmp_path / "feat.json")
    bad = json.loads(json.dumps(obj))
    bad["params"]["trees"][0]["value"][0] = "__import__('os')"
    with pytest.raises(ProbeFileError, match="numbers"):
        train.save(bad, tmp_path / "str.json") and load(tmp_path / "str.json")


@pytest.mark.slow  # needs trained weights (seconds)
async def test_probe_policy_passes_the_engine_invariants(bpe, tmp_path, trained):
    ws, ss = bpe
    obj, _ = trained[1]("logistic")
    obj["top_k"] = SETTINGS.top_k
    # The synthetic traces have one prompt length: that feature's scale is float noise (~1e-13), which saturates
    # the probe to 0 on any other prompt; a unit scale leaves the probe's output a real range here.
    obj["params"]["scale"][FEATURES.index("prompt_tokens")] = 1.0
    path = train.save(obj, tmp_path / "probe.json")
    m = _models(ws, ss)
    scored, shares = [], []  # the middle probe's deferral scores and weak shares, all prompts
    for instr in (p.instruction for p in PROMPTS.prompts):
        never = await decode(instr, "never", m, SETTINGS)
        quiet = await decode(instr, f"probe(path='{path}', tau=1.0)", m, SETTINGS)  # p > 1 never happens
        assert quiet.text == never.text and quiet.f_weak == 1.0
        always = await decode(instr, "always(span=sentence)", m, SETTINGS)
        eager = await decode(instr, f"probe(path='{path}', tau=-1, span=sentence)", m, SETTINGS)
        assert eager.text == always.text and eager.f_weak == 0.0
        mid = await decode(instr, f"probe(path='{path}', tau=0.9, span=sentence)", m, SETTINGS)
        assert mid.error is None and "".join(s.text for s in mid.segments) == mid.text
        scored += [s.score for s in mid.segments if s.author == "strong"]
        shares.append(mid.f_weak)
    await m.close()
    assert scored and all(0.9 < x <= 1 for x in scored)  # it deferred, each time on a probability above tau
    assert any(0 < f < 1 for f in shares)  # and wrote some of the text itself
    pol = load_policy(f"probe(path='{path}', tau=0.25, span=newline)")
    assert load_policy(pol.describe()).describe() == pol.describe()
    h = pol.source_hash()
    obj["params"]["intercept"] += 1
    train.save(obj, path)
    assert load_policy(pol.describe()).source_hash() != h  # other weights: another policy


def test_features_are_computed_from_a_signal_alone():
    from workspace.policies import TokenSignal

    s = TokenSignal(5, "\n    return", math.log(0.6), (math.log(0.6), math.log(0.3)), 40, "def f():", 3, 50)
    x = dict(zip(FEATURES, vector(s), strict=True))
    assert x["margin"] == pytest.approx(0.3) and x["tok_newline"] == 1.0 and x["tok_space_start"] == 1.0
    assert x["line_start"] == 0.0 and x["prompt_tokens"] == pytest.approx(math.log1p(50))


# ---------------------------------------------------------------- the commands


@pytest.fixture
def bpe_thread():
    """The BPE pair on a loop of their own (the CLI runs its own loop with asyncio.run)."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    ws = on_loop(FakeServer(ByteToy("weak", seed=11, split_text="empty")).start())
    ss = on_loop(FakeServer(ByteToy("strong", seed=12, split_text="empty", alt_eos=True)).start())
    yield ws, ss
    on_loop(ws.stop())
    on_loop(ss.stop())
    loop.call_soon_threadsafe(loop.stop)


@pytest.mark.slow  # the whole pipeline through the CLI; each step has its own test above
def test_cli_collect_label_show_train(bpe_thread, tmp_path, cdw_env):
    """`cdw traces collect|label|show` and `cdw probe train`, as a user runs them (CliRunner, in-test servers)."""
    from click.testing import CliRunner

    from workspace.cli import main

    ws, ss = bpe_thread
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": p.id, "instruction": p.instruction}) + "\n" for p in PROMPTS.prompts))
    urls = [f"--weak-url={ws.url}", f"--strong-url={ss.url}", f"--judge-url={ss.url}"]

    def cdw(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    r = cdw("traces", "collect", "--prompts", prompts, "--max-tokens", 60, *urls)
    assert r.exit_code == 0, r.output
    folder = cdw_env / "home" / "traces" / "alpaca_eval-p"
    assert "5 problems" in r.output and (folder / "tokens.jsonl").is_file()
    from workspace.cli.router import SOURCES

    assert SOURCES == labels.SOURCES  # the command's choices are the label sources (kept apart for start-up time)
    r = cdw("traces", "label", "--traces", folder, "--per-problem", 4, *urls)
    assert r.exit_code == 0 and "20 disagreement labels" in r.output, r.output
    r = cdw("traces", "show", folder)
    assert "labels disagreement: 20" in r.output
    # two unrelated toy models disagree everywhere: one class, a clear refusal rather than a meaningless probe
    r = cdw("probe", "train", "--traces", folder, "--out", tmp_path / "w.json")
    assert r.exit_code != 0 and "one class only" in r.output and not (tmp_path / "w.json").exists()
    assert cdw("probe", "train", "--traces", folder, "--out", tmp_path / "w.pkl").exit_code != 0
    syn = synthetic_traces(tmp_path)
    r = cdw("probe", "train", "--traces", syn.path, "--model", "logistic", "--out", tmp_path / "w.json", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["held_out"]["probe"]["roc_auc"] > 0.8 and set(out["tau_for_rate"]) == {"0.005", "0.01", "0.02",
                                                                                     "0.05", "0.1"}  # fmt: skip
    assert load(tmp_path / "w.json").kind == "logistic"
