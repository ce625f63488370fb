"""Evaluations end to end against in-test servers: weak, strong and a scripted judge (ARCHITECTURE.md “What is
measured”, “Records and findings”)."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from workspace.benchmarks import Prompt, PromptSet
from workspace.cache import CallCache
from workspace.client import ClientSettings, ModelClient
from workspace.endpoints import Endpoint
from workspace.engine import EngineSettings
from workspace.evaluate import EvalSettings, Setup, ensure_baselines, evaluate, load_evaluation

FAST = ClientSettings(attempts=2, backoff_initial=0.01, backoff_max=0.02, request_timeout=10)
SETTINGS = EvalSettings(EngineSettings(chunk_tokens=7, top_k=5, max_tokens=400, max_span_tokens=24, max_deferrals=400),
                        n_boot=200)  # fmt: skip
MODEL_PATHS = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
PROMPTS = PromptSet("toy", tuple(Prompt(f"toy/{i}", f"Question {i}: explain something.") for i in range(8)))


@pytest.fixture
def servers(toys):
    """The toy trio; the scripted judge knows the strong model's answers to PROMPTS."""
    toys.learn_references([p.instruction for p in PROMPTS], max_tokens=400)
    return toys


def make_setup(servers, cache=None) -> Setup:
    def client(role):
        return ModelClient(Endpoint(role, (servers[role].url,), role), FAST, cache)

    return Setup(client("weak"), client("strong"), client("judge"))


async def run(servers, policy, prompts=PROMPTS, cache=None):
    async with make_setup(servers, cache) as setup:
        return await evaluate(policy, prompts, setup, SETTINGS, progress=False)


def numbers(ev) -> dict:
    d = ev.to_json()
    d.pop("timings")
    d.pop("requests")  # how the run was answered (servers, call cache, known continuations), like its timings
    d.pop("created")
    return d


async def test_always_defer_recovers_exactly_one_and_never_defer_exactly_zero(servers, records_dir):
    always = await run(servers, "always(span=sentence)")
    never = await run(servers, "never")
    assert always.complete and never.complete
    assert always.summary.u_weak < 0.5  # a real gap
    assert always.summary.recovery == 1.0
    assert always.summary.f_weak == 0.0 and always.summary.utility == 0.5
    assert never.summary.recovery == 0.0
    assert never.summary.f_weak == 1.0
    assert not always.certified and not always.canonical  # toy prompts and toy models


async def test_a_middle_policy_lands_between_and_has_intervals(servers, records_dir):
    ev = await run(servers, "top1(tau=0.3, span=punct)")
    s = ev.summary
    assert ev.complete and s.n == len(PROMPTS)
    assert 0.0 < s.f_weak < 1.0
    for k in ("f_weak", "utility", "u_weak", "recovery"):
        assert s.ci[k].low <= getattr(s, k) <= s.ci[k].high, k
    # f_weak is recomputed from the recorded segments, pooled over prompts
    weak = sum(len(seg.text) for e in ev.examples for seg in e.candidate.segments if seg.author == "weak")
    assert s.f_weak == weak / sum(len(e.candidate.text) for e in ev.examples)


@pytest.mark.slow  # three evaluations; test_judge checks a failed call is an error in the fast tier
async def test_judge_outage_gives_an_uncertified_resumable_evaluation_never_a_silent_half(servers, records_dir):
    async with make_setup(servers) as setup:  # the baselines first: the outage below hits the candidate's verdicts
        await ensure_baselines(PROMPTS, setup, SETTINGS, progress=False)
    servers["judge"].faults.down_after = 13  # enough for 6 of the 8 candidates, then an outage
    broken = await run(servers, "top1(tau=0.3, span=punct)")
    servers["judge"].faults.down_after = None
    assert not broken.complete and not broken.certified
    failed = {pid for pid, _ in broken.errors}
    assert failed and len(failed) < len(PROMPTS)
    assert all("judge" in err and "503" in err for _, err in broken.errors)
    for e in broken.examples:
        if e.prompt_id in failed:
            assert e.preference is None or e.preference.preference is None  # an error, not 0.5
    assert broken.summary.n == len(PROMPTS) - len(failed)
    # resume: only the failed examples are judged again, and the result equals an uninterrupted run
    before = servers["judge"].hits.get("/v1/chat/completions", 0)
    resumed = await run(servers, "top1(tau=0.3, span=punct)")
    assert resumed.complete and resumed.id == broken.id
    assert servers["judge"].hits["/v1/chat/completions"] - before <= 2 * len(failed) + 2
    os.environ["CDW_RECORDS_DIR"] = str(records_dir.parent / "fresh")  # the conftest's monkeypatch restores it
    clean = await run(servers, "top1(tau=0.3, span=punct)")
    assert numbers(clean) == numbers(resumed)


@pytest.mark.slow
async def test_killing_and_resuming_gives_the_same_record_as_an_uninterrupted_run(servers, records_dir, monkeypatch):
    policy = "top1(tau=0.3, span=punct)"
    servers["weak"].faults.delay = 0.02
    servers["strong"].faults.delay = 0.02
    task = asyncio.create_task(run(servers, policy))
    path = None
    for _ in range(500):  # kill it once some candidate generations are on disk
        await asyncio.sleep(0.02)
        files = list((records_dir / "evaluations").glob("*.jsonl")) if (records_dir / "evaluations").exists() else []
        if files and sum('"generation"' in line for line in files[0].read_text().splitlines()) >= 2:
            path = files[0]
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert path is not None, "the run never wrote a generation"
    with open(path, "ab") as f:  # and the kill tore the line being written
        f.write(b'{"type": "generation", "prompt_id": "toy/7", "dec')
    servers["weak"].faults.delay = servers["strong"].faults.delay = 0.0
    resumed = await run(servers, policy)
    assert resumed.complete
    monkeypatch.setenv("CDW_RECORDS_DIR", str(records_dir.parent / "fresh"))
    clean = await run(servers, policy)
    assert numbers(clean) == numbers(resumed)
    assert [e.candidate.text for e in clean.examples] == [e.candidate.text for e in resumed.examples]


@pytest.mark.slow  # two evaluations; the call-cache test below reruns one in the fast tier
async def test_a_rerun_of_a_finished_evaluation_makes_no_server_calls(servers, records_dir):
    first = await run(servers, "entropy(tau=1.0, span=words:2)")
    hits = {r: sum(s.hits.values()) for r, s in servers.items()}
    again = await run(servers, "entropy(tau=1.0, span=words:2)")
    assert {r: sum(s.hits.values()) for r, s in servers.items()} == hits
    assert numbers(again) == numbers(first)


async def test_the_call_cache_answers_a_repeated_evaluation_without_the_servers(
    servers, records_dir, tmp_path, monkeypatch
):
    def model_calls():  # a new record still asks each server its version (/health, /v1/models, /version)
        return {r: sum(n for p, n in s.hits.items() if p in MODEL_PATHS) for r, s in servers.items()}

    cache = CallCache(tmp_path / "calls.sqlite")
    first = await run(servers, "top1(tau=0.3, span=punct)", cache=cache)
    monkeypatch.setenv("CDW_RECORDS_DIR", str(tmp_path / "other-records"))  # records gone: only the cache helps
    hits = model_calls()
    assert all(hits.values())
    again = await run(servers, "top1(tau=0.3, span=punct)", cache=cache)
    assert model_calls() == hits
    assert numbers(again) == numbers(first)
    cache.close()


@pytest.mark.slow  # an evaluation end to end
async def test_editing_a_stored_summary_does_not_change_what_is_read_back(servers, records_dir):
    ev = await run(servers, "top1(tau=0.3, span=punct)")
    path = records_dir / "evaluations" / f"{ev.id}.jsonl"
    lines = path.read_text().splitlines()
    edited = []
    for line in lines:
        obj = json.loads(line)
        if obj["type"] == "summary":
            obj.update(recovery=1.0, f_weak=0.99, utility=0.9, certified=True)
        edited.append(json.dumps(obj))
    path.write_text("\n".join(edited) + "\n")
    back = load_evaluation(ev.id, SETTINGS)
    assert numbers(back) == numbers(ev)
    assert back.summary.recovery != 1.0 and not back.certified


@pytest.mark.slow  # an evaluation end to end
async def test_too_few_prompts_for_length_control_is_readable_with_a_reason(servers, records_dir):
    ev = await run(servers, "top1(tau=0.3, span=punct)", prompts=PROMPTS.head(3))
    assert ev.complete and ev.summary is None and "at least 5" in ev.note
    assert load_evaluation(ev.id, SETTINGS).note == ev.note


async def test_model_generation_defaults_never_reach_an_evaluation_and_the_record_says_how_it_decoded(
    servers, records_dir
):
    """Servers that would apply a model's sampling defaults to silent requests (as vLLM's `--generation-config auto`
    does): every request of a whole evaluation (references, drafts, spans, rankings, verdicts) states greedy decoding,
    so nothing is filled in, and both records' headers carry the decoding."""
    from workspace.client import GREEDY
    from workspace.records.log import read_record

    for s in servers.values():
        s.generation_defaults = {"repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8}
    ev = await run(servers, "top1(tau=0.3, span=punct)")
    assert ev.complete
    generating = [r for s in servers.values() for r in s.requests if r["path"] in ("/v1/completions",
                                                                                   "/v1/chat/completions")]  # fmt: skip
    assert generating and all({k: r[k] for k in GREEDY} == GREEDY for r in generating)
    assert all(a == {} for s in servers.values() for a in s.applied)
    for kind, rid in (("evaluations", ev.id), ("baselines", ev.header.baselines)):
        assert read_record(kind, rid).header["decoding"]["request"] == GREEDY
