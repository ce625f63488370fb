"""An in-test OpenAI-compatible server: a deterministic toy model behind vLLM's HTTP API shape.

Used only by tests. `ToyModel` has a character-level tokenizer (ids differ per alphabet, so two toy servers
are a cross-tokenizer pair); `tests.bytetoy.ByteToy` is a byte-level BPE model with the quirks of real ones
(leading-space tokens, characters split across tokens, vLLM's ways of reporting them). Both have a chat
template and a next-token distribution that is a pure function of the previous tokens, so greedy decoding is
exactly reproducible however requests are chunked. Fault injection (status codes, delays, garbage bodies,
dropped connections) is set per server by the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import math
import os
import re
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime

import jinja2.sandbox
from aiohttp import web

CHARS = [c for c in string.printable if c not in "\x0b\x0c\r"]

# The servers' own error log (a client that hangs up mid-request, an injected drop) is not written: formatting a
# traceback parses source (Python 3.11's carets), and ast parsing on the server thread while the test's thread parses
# too can raise "AST constructor recursion depth mismatch" (CPython gh-106905).
QUIET = logging.getLogger("tests.fakeserver")
QUIET.setLevel(logging.CRITICAL + 1)
QUIET.propagate = False

# The date-dependent part of Llama-3.2-Instruct's chat template, as meta-llama ships it: without a `date_string`
# argument it writes today's date (transformers' `strftime_now`, which vLLM's renderer provides) into the prompt.
LLAMA32_DATED_TEMPLATE = (
    "{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}"
    "{%- endif %}{%- endif %}"
    "<s>system\nCutting Knowledge Date: December 2023\nToday Date: {{ date_string }}\n\n</s>\n"
    "{%- for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<s>assistant\n{%- endif %}"
)


def render_template(template: str, messages: list[dict], add_generation_prompt: bool, **kwargs) -> str:
    """Render a chat template as transformers does for vLLM: a sandboxed jinja environment with `strftime_now`
    (today, from `datetime.now()`), the request's `chat_template_kwargs` as variables."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **kwargs)


@dataclass
class ToyModel:
    name: str = "toy"
    seed: int = 0
    reverse: bool = False  # a different vocabulary order: a different tokenizer
    eos_after: int = 120  # EOS becomes likely once the whole context (prompt + answer) is this long
    specials: tuple[str, ...] = ("<pad>", "<s>", "</s>")
    eos: str = "</s>"
    extra: tuple[str, ...] = ()  # multi-character tokens (encoded longest-first), e.g. ".\n\n"
    empty_spans: bool = False  # chat answers come back empty with finish_reason "length"
    template: str | None = None  # a jinja chat template (e.g. LLAMA32_DATED_TEMPLATE) instead of the built-in one
    PURE_ROWS = True  # (not a field) `logprobs` depends on the fields and the context only: rows_of remembers them

    def __post_init__(self):
        chars = list(reversed(CHARS)) if self.reverse else CHARS
        self.vocab = list(self.specials) + list(self.extra) + chars
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.eos_id = self.ids[self.eos]

    def encode(self, text: str) -> list[int]:
        out, i = [], 0
        while i < len(text):
            for s in sorted((*self.specials, *self.extra), key=len, reverse=True):
                if text.startswith(s, i):
                    out.append(self.ids[s])
                    i += len(s)
                    break
            else:
                out.append(self.ids.get(text[i], 0))
                i += 1
        return out

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return "".join(self.vocab[i] for i in ids if not (skip_special and self.vocab[i] in self.specials))

    def detokenize(self, ids: list[int]) -> str:
        return self.decode(ids)

    def piece(self, i: int, prev: list[int]) -> str:
        """How the server reports token i in logprobs (one character; a special token's own text)."""
        return self.vocab[i]

    def chat_piece_bytes(self, i: int, piece: str) -> list[int]:
        return list(piece.encode())

    def render(self, messages: list[dict], add_generation_prompt: bool, continue_final: bool,
               template_kwargs: dict | None = None) -> str:  # fmt: skip
        if self.template is not None:
            text = render_template(self.template, messages, add_generation_prompt and not continue_final,
                                   **(template_kwargs or {}))  # fmt: skip
            # As vLLM continues a final message: the text up to the end of its content.
            return (
                text[: text.rindex(messages[-1]["content"]) + len(messages[-1]["content"])] if continue_final else text
            )
        parts = [f"<s>{m['role']}\n{m['content']}</s>\n" for m in messages]
        if continue_final:
            last = messages[-1]
            parts[-1] = f"<s>{last['role']}\n{last['content']}"
        text = "".join(parts)
        return text + "<s>assistant\n" if add_generation_prompt else text

    def logprobs(self, context: list[int]) -> list[float]:
        """Next-token log-distribution: a pure function of the whole context,
        so greedy text does not depend on how requests are chunked."""
        h = hashlib.blake2b(f"{self.seed}:{context}".encode(), digest_size=32).digest()
        logits = [0.0] * len(self.vocab)
        # A few strong candidates among the printable characters, the rest flat: realistic margins.
        for k in range(6):
            tok = len(self.specials) + h[k] % (len(self.vocab) - len(self.specials))
            logits[tok] = max(logits[tok], 4.0 - 0.6 * k + (h[6 + k] / 255.0))
        if self.extra and h[20] % 3 == 0:  # multi-character tokens come up often
            logits[self.ids[self.extra[h[21] % len(self.extra)]]] = 6.0
        logits[self.eos_id] = -3.0 + 0.25 * max(0, len(context) - self.eos_after)
        m = max(logits)
        z = math.log(sum(math.exp(x - m) for x in logits)) + m
        return [x - z for x in logits]

    def stop_reason(self, tok: int) -> int | None | bool:
        """None when `tok` is the end of sequence, False when it does not end the answer."""
        return None if tok == self.eos_id else False

    def text_of(self, prompt: list[int], ids: list[int]) -> str:
        return self.decode(ids)

    def generate(self, prompt: list[int], max_tokens: int, stop: list[str] | None):
        return greedy(self, prompt, max_tokens, stop)


def first_stop(text: str, new: int, stop: list[str]) -> tuple[int, str] | None:
    """vLLM 0.32's stop-string rule after a token added `new` characters to the generated `text`: among the
    occurrences that end in the new characters, the one that ends first (ties: the earlier in the stop list);
    returns (where it starts, the stop string)."""
    found = [
        (at + len(s), rank, at, s)
        for rank, s in enumerate(stop)
        for at in range(max(0, len(text) - new - len(s) + 1), len(text) - len(s) + 1)
        if text.startswith(s, at)
    ]
    return min(found)[2:] if found else None


# Next-token rows the toys have computed, by model and context. Tests decode the same instructions with the same toys
# again and again (about 70% of the rows the fast tier asks for were asked before, in the same process), and a row is
# ~100 exponentials in Python. Only for classes that say `PURE_ROWS = True` in their own body (a subclass that
# overrides `logprobs` is not): their rows are a pure function of their dataclass fields (all in the key, so a test
# that changes `eos_after` gets new rows) and the context.
_ROWS: dict[tuple, list[float]] = {}
_ROWS_MAX = 20_000  # 4-10 KB each
_ROWS_LOCK = threading.Lock()


def rows_of(model, context: list[int]) -> list[float]:
    """`model.logprobs(context)`, remembered for the toys whose rows depend on nothing else (a copy: callers own it)."""
    cls = type(model)
    if not cls.__dict__.get("PURE_ROWS"):
        return model.logprobs(context)
    key = (cls, *(getattr(model, f.name) for f in fields(cls)), tuple(context))
    row = _ROWS.get(key)
    if row is None:
        row = model.logprobs(context)
        with _ROWS_LOCK:
            if len(_ROWS) >= _ROWS_MAX:
                del _ROWS[next(iter(_ROWS))]  # the oldest
            _ROWS[key] = row
    return list(row)


def greedy_steps(model, prompt: list[int], max_tokens: int, stop: list[str] | None):
    """Greedy generation of a toy model, one token at a time: yields (token, its logprob row, the text so far,
    finish_reason or None while it goes on, stop_reason). Ties go to the lower id; a stop string cuts the text, not
    the token (as vLLM does: the text before the stop string; the chat endpoint adds it back when asked)."""
    ids, text = [], ""
    # A character-level toy's text grows by each token's own text: no need to decode the whole answer every step.
    per_token = getattr(type(model), "text_of", None) is ToyModel.text_of and type(model).decode is ToyModel.decode
    for n in range(1, max_tokens + 1):
        lp = rows_of(model, prompt + ids)
        tok = lp.index(max(lp))  # the first maximum: ties go to the lower id
        ids.append(tok)
        if (reason := model.stop_reason(tok)) is not False:  # end of sequence: None, or another stop id (int)
            yield tok, lp, model.text_of(prompt, ids), "stop", reason
            return
        before, text = text, (text + model.decode([tok])) if per_token else model.text_of(prompt, ids)
        if stop and (hit := first_stop(text, len(text) - len(before), stop)):
            yield tok, lp, text[: hit[0]], "stop", hit[1]
            return
        yield tok, lp, text, "length" if n == max_tokens else None, None


def greedy(model, prompt: list[int], max_tokens: int, stop: list[str] | None):
    """Greedy generation of a toy model; returns (ids, logprob rows, text, finish_reason, stop_reason)."""
    ids, rows, last = [], [], (None, None, model.text_of(prompt, []), "length", None)
    for step in greedy_steps(model, prompt, max_tokens, stop):
        ids.append(step[0])
        rows.append(step[1])
        last = step
    return ids, rows, last[2], last[3] or "length", last[4]


def _completion_logprobs(m, b: dict, context: list[int], ids: list[int], rows: list[list[float]]) -> dict:
    """/v1/completions logprobs of generated `ids` after `context` (each token keyed as vLLM keys it: its piece
    given the tokens before, or `token_id:N`), with the top `b["logprobs"]` alternatives."""
    k, ctx = b["logprobs"], list(context)
    key = (lambda i, prev: f"token_id:{i}") if b.get("return_tokens_as_token_ids") else m.piece
    toks, tops = [], []
    for i, row in zip(ids, rows, strict=True):
        prev = ctx[-4:]
        toks.append(key(i, prev))
        tops.append({key(j, prev): row[j] for j in heapq.nlargest(k, range(len(row)), key=row.__getitem__)})
        ctx.append(i)
    return {"tokens": toks, "token_logprobs": [row[i] for i, row in zip(ids, rows, strict=True)],
            "top_logprobs": tops, "text_offset": []}  # fmt: skip


@dataclass
class Penalised:
    """A model under a repetition penalty, as vLLM applies one (HF's rule): a token already in the context has its
    logit divided by the penalty when positive and multiplied when negative. The toy's scores are log-probabilities
    (all negative), so a seen token always loses ground and greedy choices change."""

    model: ToyModel
    penalty: float

    def __getattr__(self, name):
        return getattr(self.model, name)

    def logprobs(self, context: list[int]) -> list[float]:
        seen = set(context)
        return [x * self.penalty if i in seen else x for i, x in enumerate(self.model.logprobs(context))]

    def generate(self, prompt: list[int], max_tokens: int, stop: list[str] | None):
        return greedy(self, prompt, max_tokens, stop)


@dataclass
class Faults:
    statuses: list[int] = field(default_factory=list)  # answer the next requests with these codes
    delay: float = 0.0  # seconds before answering
    garbage: int = 0  # answer this many next requests with a non-JSON 200
    drop: int = 0  # close this many next connections without an answer
    down_after: int | None = None  # answer this many more requests, then 503 to all (an outage) until reset


def judge_outputs(prompt: str) -> tuple[str, str]:
    """The two outputs inside an AlpacaEval-style judge prompt (workspace/templates/alpaca_eval_clf.txt)."""
    found = re.findall(r'"output": """(.*?)"""', prompt, flags=re.S)
    if len(found) != 2:
        raise ValueError("not a pairwise judge prompt")
    return found[0], found[1]


def prefers_longer(prompt: str) -> float:
    """A toy judge with a length bias and a mild first-position bias: P(first output wins)."""
    a, b = judge_outputs(prompt)
    return min(0.98, max(0.02, 1 / (1 + math.exp(-(len(a) - len(b)) / 40)) + 0.03))


class FakeServer:
    """Serve a ToyModel or a ByteToy on 127.0.0.1 (random port). `hits` counts requests per path.

    With `judge` set, a one-token chat request is answered as a pairwise judge: `judge(user prompt)` gives
    P(first output wins), spread over the labels "m"/"M" in the top logprobs (None: neither label appears).
    """

    def __init__(self, model=None, judge: Callable[[str], float | None] | None = None):
        self.model = model or ToyModel()
        self.judge = judge
        self.judge_mass = 0.9  # the labels' share of the judge's probability
        self.refuses_system = False  # answer a system message with 400, as Gemma-2's chat template makes vLLM do
        # A model's generation_config.json, as vLLM's `--generation-config auto` (its default) applies it: each
        # sampling parameter a request leaves out is taken from here. Only `repetition_penalty` changes the toy's
        # (always greedy) answers; `applied` lists, per generation request, what was filled in.
        self.generation_defaults: dict[str, float] = {}
        self.applied: list[dict[str, float]] = []
        self.faults = Faults()
        self.hits: dict[str, int] = {}
        self.generated = 0  # generation requests answered (completions and chat, the judge's one-token ones aside)
        self.max_model_len: int | None = None  # reported by /v1/models; clips max_tokens as vLLM does
        self.active = 0  # requests being handled now, and the most seen at once
        self.max_active = 0
        self.requests: list[dict] = []
        self.streamed = 0  # tokens sent in streamed completions (a client that stops reading gets no more)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> FakeServer:
        app = web.Application(middlewares=[self._fault_middleware])
        app.router.add_get("/health", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        self._runner = web.AppRunner(app, logger=QUIET, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _fault_middleware(self, request: web.Request, handler):
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            return await self._faulty(request, handler)
        finally:
            self.active -= 1

    async def _faulty(self, request: web.Request, handler):
        f = self.faults
        if f.delay:
            await asyncio.sleep(f.delay)
        if f.drop:
            f.drop -= 1
            request.transport.close()
            raise asyncio.CancelledError
        if f.down_after is not None:
            if f.down_after <= 0:
                return web.json_response({"error": {"message": "injected outage"}}, status=503)
            f.down_after -= 1
        if f.statuses:
            code = f.statuses.pop(0)
            return web.json_response({"error": {"message": f"injected {code}"}}, status=code)
        if f.garbage:
            f.garbage -= 1
            return web.Response(text="<html>not json", content_type="text/html")
        return await handler(request)

    async def _body(self, request: web.Request) -> dict:
        body = await request.json()
        self.requests.append({"path": request.path, **body})
        if len(body.get("stop") or []) > 4:  # as vLLM's OpenAI-compatible validation
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"message": "stop: List should have at most 4 items"}}),
                content_type="application/json",
            )
        if body.get("model") not in (None, self.model.name):
            raise web.HTTPNotFound(
                text=json.dumps({"error": {"message": f"model {body.get('model')} does not exist"}}),
                content_type="application/json",
            )
        return body

    def _decoder(self, b: dict):
        """The model as this request decodes with it: under the generation defaults the request is silent on."""
        filled = {k: v for k, v in self.generation_defaults.items() if b.get(k) is None}
        self.applied.append(filled)
        penalty = filled.get("repetition_penalty", b.get("repetition_penalty") or 1.0)
        return self.model if penalty == 1.0 else Penalised(self.model, penalty)

    async def _health(self, request):
        return web.Response(text="")

    async def _version(self, request):
        return web.json_response({"version": "fake-0"})

    async def _models(self, request):
        card = {"id": self.model.name, "object": "model"}
        return web.json_response(
            {"data": [card | ({"max_model_len": self.max_model_len} if self.max_model_len else {})]}
        )

    def _max_tokens(self, b: dict, prompt: list[int]) -> int:
        """vLLM clips what a request asks for to what fits in the context."""
        return b["max_tokens"] if self.max_model_len is None else min(b["max_tokens"], self.max_model_len - len(prompt))

    async def _completions(self, request):
        b = await self._body(request)
        m = self._decoder(b)
        prompt = b["prompt"] if isinstance(b["prompt"], list) else m.encode(b["prompt"])
        self.generated += 1
        if b.get("stream"):
            return await self._stream(request, m, prompt, b)
        ids, rows, text, finish, stop_reason = m.generate(prompt, self._max_tokens(b, prompt), b.get("stop"))
        choice = {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop_reason}
        if b.get("return_token_ids"):
            choice["token_ids"] = ids
        if b.get("logprobs"):
            choice["logprobs"] = _completion_logprobs(m, b, prompt, ids, rows)
        if b.get("prompt_logprobs"):  # vLLM's extension: each prompt token's logprob and rank given the ones before
            out = [None]
            for j in range(1, len(prompt)):
                row = rows_of(m, prompt[:j])
                tok = prompt[j]
                rank = 1 + sum(1 for x in range(len(row)) if (row[x], -x) > (row[tok], -tok))
                best = row.index(max(row))
                prev = prompt[max(0, j - 4) : j]
                entry = {str(tok): {"logprob": row[tok], "rank": rank, "decoded_token": m.piece(tok, prev)}}
                entry.setdefault(str(best), {"logprob": row[best], "rank": 1, "decoded_token": m.piece(best, prev)})
                out.append(entry)
            choice["prompt_logprobs"] = out
        return web.json_response({"id": "cmpl", "choices": [choice]})

    async def _stream(self, request: web.Request, m, prompt: list[int], b: dict):
        """The answer as vLLM streams it, generated as it is sent: one event per token (its text: what the decoded
        text gained, so a split character's first pieces bring ""), the finish reason on the last; generation stops
        when the client goes (as vLLM aborts the request)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        shown, ctx = "", list(prompt)
        for tok, row, text, finish, reason in greedy_steps(m, prompt, self._max_tokens(b, prompt), b.get("stop")):
            piece = text[len(shown) :] if text.startswith(shown) else ""
            shown += piece
            event = {"index": 0, "text": piece, "token_ids": [tok], "finish_reason": finish, "stop_reason": reason}
            if b.get("logprobs"):
                event["logprobs"] = _completion_logprobs(m, b, ctx[-4:], [tok], [row])  # (a piece reads 4 back)
            ctx.append(tok)
            try:
                await resp.write(b"data: " + json.dumps({"id": "cmpl", "choices": [event]}).encode() + b"\n\n")
                await asyncio.sleep(0)  # (a client that stopped reading is seen before the next token)
            except (ConnectionResetError, RuntimeError):
                return resp
            if request.transport is None or request.transport.is_closing():
                return resp
            self.streamed += 1
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _judge_answer(self, b: dict):
        try:
            p = self.judge(b["messages"][-1]["content"])
        except ValueError:  # not a judge prompt (e.g. the judge's one-token probe of the chat template)
            p = 0.5
        mass = self.judge_mass
        if p is None:
            top = [("x", math.log(0.6)), ("y", math.log(0.3))]
        else:  # the rest of the mass on another token, so renormalising over the labels matters
            top = sorted([("m", math.log(mass * p + 1e-12)), ("M", math.log(mass * (1 - p) + 1e-12)),
                          (" ", math.log(1 - mass))], key=lambda t: -t[1])  # fmt: skip
        tok, lp = top[0]
        content = [{"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                    "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}]  # fmt: skip
        choice = {"index": 0, "message": {"role": "assistant", "content": tok}, "finish_reason": "length",
                  "stop_reason": None, "logprobs": {"content": content}}  # fmt: skip
        return web.json_response({"id": "chat", "choices": [choice]})

    def _refuse_system(self, b: dict) -> None:
        """As a chat template that raises on a system message (Gemma-2's) makes vLLM answer."""
        if self.refuses_system and any(m.get("role") == "system" for m in b.get("messages") or []):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"message": "System role not supported", "type": "BadRequestError"}}),
                content_type="application/json",
            )

    async def _chat(self, request):
        b = await self._body(request)
        self._refuse_system(b)
        m = self._decoder(b)
        if self.judge is not None and b.get("max_tokens") == 1:
            return self._judge_answer(b)
        text = m.render(b["messages"], b.get("add_generation_prompt", True), b.get("continue_final_message", False),
                        b.get("chat_template_kwargs"))  # fmt: skip
        self.generated += 1
        ids, rows, out, finish, stop_reason = m.generate(m.encode(text), self._max_tokens(b, m.encode(text)),
                                                         b.get("stop"))  # fmt: skip
        if m.empty_spans:
            ids, rows, out, finish, stop_reason = [], [], "", "length", None
        if isinstance(stop_reason, str) and b.get("include_stop_str_in_output"):
            out = out + stop_reason
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": out},
            "finish_reason": finish,
            "stop_reason": stop_reason,
        }
        if b.get("logprobs"):
            k = b.get("top_logprobs") or 0
            content, ctx = [], m.encode(text)
            for i, row in zip(ids, rows, strict=True):
                prev = ctx[-4:]
                t = m.piece(i, prev)
                top = heapq.nlargest(k, range(len(row)), key=row.__getitem__) if k else []
                content.append({
                    "token": t, "logprob": row[i], "bytes": m.chat_piece_bytes(i, t),
                    "top_logprobs": [{"token": m.piece(j, prev), "logprob": row[j]} for j in top],
                })  # fmt: skip
                ctx.append(i)
            choice["logprobs"] = {"content": content}
        if b.get("return_token_ids"):  # vLLM's extension: the rendered prompt's ids and the answer's
            choice["token_ids"] = ids
            return web.json_response({"id": "chat", "choices": [choice], "prompt_token_ids": m.encode(text)})
        return web.json_response({"id": "chat", "choices": [choice]})

    async def _tokenize(self, request):
        b = await self._body(request)
        m = self.model
        self._refuse_system(b)
        if "messages" in b:
            text = m.render(b["messages"], b.get("add_generation_prompt", False),
                            b.get("continue_final_message", False), b.get("chat_template_kwargs"))  # fmt: skip
        else:
            text = b["prompt"]
        toks = m.encode(text)
        return web.json_response({"tokens": toks, "count": len(toks), "max_model_len": 4096})

    async def _detokenize(self, request):
        b = await self._body(request)
        return web.json_response({"prompt": self.model.detokenize(b["tokens"])})


# ---------------------------------------------------------------- the toy weak/strong/judge trio

STRONG_EXTRA = (".\n\n", ":\n\n", ", ", "the ")  # the strong toy's multi-character tokens


@dataclass
class ScriptToy(ToyModel):
    """A toy that writes code: its greedy next token continues `script` at the answer's length (whoever wrote the
    answer so far), its longest vocabulary token that fits; a hashed rival token gives margins that vary. A pure
    function of the context, like ToyModel; the answer ends with the script."""

    script: str = ""
    turn: str = "<s>assistant\n"  # the built-in template's start of the answer
    PURE_ROWS = True

    def logprobs(self, context: list[int]) -> list[float]:
        text = self.decode(context, skip_special=False)
        pos = len(text) - text.rfind(self.turn) - len(self.turn)
        h = hashlib.blake2b(f"{self.seed}:{context}".encode(), digest_size=8).digest()
        logits = [0.0] * len(self.vocab)
        rival = len(self.specials) + h[0] % (len(self.vocab) - len(self.specials))
        logits[rival] = 3.0 + 3.0 * h[1] / 255.0
        if pos >= len(self.script):
            logits[self.eos_id] = 9.0
        else:
            fits = [t for t in self.extra if self.script.startswith(t, pos)]
            logits[self.ids[max(fits, key=len) if fits else self.script[pos]]] = 6.5
        m = max(logits)
        z = math.log(sum(math.exp(x - m) for x in logits)) + m
        return [x - z for x in logits]


# Two answers to one coding question, as instruction-tuned models write them: prose, a fenced block (imports, a
# function with a docstring, nested blocks, comments holding ':'), demo code after the function, prose after.
STRONG_SCRIPT = """Here is the function:

```python
import math


def is_prime(n: int) -> bool:
    \"\"\"Return True if n is prime: "7" -> True.

    >>> is_prime(7)
    True
    \"\"\"
    if n < 2:  # note: 0 and 1 are not prime
        return False
    for k in range(2, int(math.sqrt(n)) + 1):
        if n % k == 0:
            return False
    return True


print(is_prime(7))
```

It tries every divisor up to the square root.
"""
WEAK_SCRIPT = """```python
def is_prime(n: int) -> bool:
    \"\"\"Return True if n is prime: "7" -> True.\"\"\"
    for k in range(2, n):
        if n % k == 0:
            return False
    return n > 1
```
This checks all numbers below n. It is simple.
"""


def script_toys() -> tuple[ScriptToy, ScriptToy]:
    """A weak and a strong toy that write code (a cross-tokenizer pair; the strong one has an indentation token)."""
    weak = ScriptToy(name="weak", seed=1, script=WEAK_SCRIPT)
    strong = ScriptToy(name="strong", seed=2, reverse=True, extra=("    ",), script=STRONG_SCRIPT)
    return weak, strong


def weak_toy() -> ToyModel:
    return ToyModel(name="weak", seed=1, eos_after=110)


def strong_toy() -> ToyModel:
    """Another tokenizer (reversed vocabulary, multi-character tokens): a cross-tokenizer pair with the weak toy."""
    return ToyModel(name="strong", seed=2, reverse=True, eos_after=100, extra=STRONG_EXTRA)


class ScriptedJudge:
    """Knows the strong model's answers and likes what shares a long start with one of them, with a
    first-position bias. So weak answers lose (U_weak < 0.5: a real gap) and partly strong answers do better."""

    def __init__(self):
        self.references: set[str] = set()

    def score(self, text: str) -> float:
        return max(len(os.path.commonprefix([text, r])) / max(len(r), 1) for r in self.references)

    def __call__(self, prompt: str) -> float:
        a, b = judge_outputs(prompt)
        return 1 / (1 + math.exp(-4 * (self.score(a) - self.score(b)) - 0.2))


class ServerThread:
    """An event loop on a thread of its own. Servers on it answer a test's own loop, the CLI's asyncio.run,
    subprocesses and notebook kernels alike (after httpx's serve-in-thread test server)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []  # what the loop would have logged (no traceback: see QUIET)
        self.loop.set_exception_handler(
            lambda loop, ctx: self.errors.append(f"{ctx['message']}: {ctx.get('exception')!r}")
        )
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def _record(self, loop, context: dict) -> None:
        self.errors.append(f"{context['message']}: {context.get('exception')!r}")

    def run(self, coro, timeout: float = 60):
        """Run `coro` on the thread's loop and wait for it (from sync code; an async test may block on it too:
        the servers do not need the test's loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def call(self, coro):
        """Await `coro` on the thread's loop from another running loop, without blocking that one."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@dataclass
class Toys:
    """The toy weak, strong and judge servers, started on a ServerThread. `toys["weak"]` etc.; `urls` by role."""

    weak: FakeServer
    strong: FakeServer
    judge: FakeServer
    thread: ServerThread

    @classmethod
    def start(cls, thread: ServerThread, weak=None, strong=None, judge=None, judge_model=None) -> Toys:
        """Default models: weak_toy(), strong_toy(), a judge toy answering with `judge` (default ScriptedJudge())."""
        judge_server = FakeServer(judge_model or ToyModel(name="judge", seed=3), judge=judge or ScriptedJudge())
        servers = [FakeServer(weak or weak_toy()), FakeServer(strong or strong_toy()), judge_server]
        return cls(*(thread.run(s.start()) for s in servers), thread)

    def __getitem__(self, role: str) -> FakeServer:
        return {"weak": self.weak, "strong": self.strong, "judge": self.judge}[role]

    def items(self):
        return (("weak", self.weak), ("strong", self.strong), ("judge", self.judge))

    def values(self):
        return (self.weak, self.strong, self.judge)

    @property
    def urls(self) -> dict[str, str]:
        return {role: s.url for role, s in self.items()}

    @property
    def env(self) -> dict[str, str]:
        """CDW_WEAK_URL / CDW_STRONG_URL / CDW_JUDGE_URL: how a CLI, a subprocess or a kernel finds them."""
        return {f"CDW_{role.upper()}_URL": url for role, url in self.urls.items()}

    def learn_references(self, instructions, max_tokens: int) -> None:
        """Teach the ScriptedJudge the strong model's answers to `instructions` (as the reference will be made)."""
        from workspace.client import ModelClient
        from workspace.endpoints import Endpoint

        async def go():
            async with ModelClient(Endpoint("strong", (self.strong.url,), "strong")) as c:
                for text in instructions:
                    out = await c.chat([{"role": "user", "content": text}], max_tokens=max_tokens)
                    self.judge.judge.references.add(out.text)

        self.thread.run(go())

    async def stop(self, role: str) -> None:
        """Stop one server while a run is in flight on the test's loop (a server that dies mid-run)."""
        await self.thread.call(self[role].stop())

    def close(self) -> None:
        for s in self.values():
            self.thread.run(s.stop())
