"""Is each role answering? `status()` asks every replica for health, model and version; `check()` sends one
real request per role (a weak completion with logprobs, a strong chat continuation, a one-token judge
verdict) and shows what came back."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from servers.presets import ROLES

from .client import ClientError, ModelClient, ReplicaStatus
from .endpoints import Endpoint, EndpointError, resolve_endpoint


@dataclass(frozen=True)
class RoleStatus:
    role: str
    endpoint: Endpoint | None
    replicas: tuple[ReplicaStatus, ...] = ()
    error: str | None = None  # no endpoint known for the role

    @property
    def healthy(self) -> bool:
        return bool(self.replicas) and any(r.healthy for r in self.replicas)


@dataclass(frozen=True)
class RoleCheck:
    role: str
    ok: bool
    request: str  # what was asked, in words
    answer: str  # what came back (text, or the error)
    detail: str = ""  # e.g. top-1 probability, judge label probabilities
    seconds: float = 0.0
    note: str = ""


async def status(urls: dict[str, str | None] | None = None, roles: tuple[str, ...] = ROLES) -> list[RoleStatus]:
    """Per role: where its endpoint came from and each replica's health, served models and vLLM version."""
    urls = urls or {}

    async def one(role: str) -> RoleStatus:
        try:
            ep = resolve_endpoint(role, urls.get(role))
        except EndpointError as e:
            return RoleStatus(role, None, error=str(e))
        async with ModelClient(ep) as c:
            return RoleStatus(role, ep, tuple(await c.status()))

    return list(await asyncio.gather(*(one(r) for r in roles)))


QUESTION = "What is the capital of France? Answer in one sentence."
JUDGE_PROMPT = (
    "Which answer to the question is better? Reply with one letter, A or B.\n\n"
    f"Question: {QUESTION}\n\nAnswer A: The capital of France is Paris.\n\n"
    "Answer B: The capital of France is Berlin.\n\nThe better answer is:"
)


async def _check_weak(c: ModelClient) -> tuple[str, str, str]:
    ids = await c.tokenize(messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True)
    out = await c.complete(ids, max_tokens=32, logprobs=5)
    p1 = [math.exp(t.logprob) for t in out.tokens]
    detail = f"{len(out.token_ids)} tokens from a {len(ids)}-token id prompt; mean top-1 prob {sum(p1) / len(p1):.2f}"
    return f"completion from token ids with top-5 logprobs: {QUESTION!r}", out.text, detail


async def _check_strong(c: ModelClient) -> tuple[str, str, str]:
    partial = "The capital of France"
    msgs = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": partial}]
    out = await c.chat(msgs, max_tokens=24, continue_final=True)
    return f"chat continuation of the assistant text {partial!r}", partial + out.text, f"finish: {out.finish_reason}"


async def _check_judge(c: ModelClient) -> tuple[str, str, str]:
    out = await c.chat([{"role": "user", "content": JUDGE_PROMPT}], max_tokens=1, logprobs=10)
    top = dict(out.tokens[0].top) if out.tokens else {}
    pa, pb = (math.exp(top[k]) if k in top else 0.0 for k in ("A", "B"))
    detail = f"P(A)={pa:.3f} P(B)={pb:.3f} (A is right)" if pa + pb else "neither label in the top-10"
    return "one-token pairwise verdict with top-10 logprobs", out.text, detail


async def check(urls: dict[str, str | None] | None = None, roles: tuple[str, ...] = ROLES) -> list[RoleCheck]:
    """Send one real request to each role's server and report what it answered."""
    urls = urls or {}
    probes = {"weak": _check_weak, "strong": _check_strong, "judge": _check_judge}

    async def one(role: str) -> RoleCheck:
        t0 = time.monotonic()
        try:
            ep = resolve_endpoint(role, urls.get(role))
        except EndpointError as e:
            return RoleCheck(role, False, "", str(e))
        try:
            async with ModelClient(ep) as c:
                request, answer, detail = await probes[role](c)
            return RoleCheck(role, True, request, answer, detail, time.monotonic() - t0, ep.note)
        except ClientError as e:
            return RoleCheck(role, False, "", str(e), seconds=time.monotonic() - t0, note=ep.note)

    return list(await asyncio.gather(*(one(r) for r in roles)))
