"""Async client for OpenAI-compatible servers (vLLM), one `ModelClient` per role.

A `ModelClient` owns one aiohttp session per replica URL, bounds what is in flight per replica (a semaphore)
and its request rate (asyncio-throttle), and routes each request to the least busy healthy replica. Timeouts
are explicit. Connection errors and 5xx responses are retried with exponential backoff (on another replica
when there is one); everything else becomes a typed error at once:

    ClientError
    ├── ServerUnavailable   could not connect, after retries
    ├── ServerError         5xx, after retries
    ├── RequestRejected     4xx: the request itself is wrong (bad model name, too long, bad parameter)
    ├── RequestTimeout      no complete answer within `request_timeout`
    └── MalformedResponse   a 2xx answer that is not the JSON we expect

Use it as an async context manager (`async with ModelClient(...) as c:`) so its sessions are closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from asyncio_throttle import Throttler
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from servers.presets import load_catalog

from .endpoints import Endpoint


class ClientError(Exception):
    """Base of every error the client raises; says which role and URL it concerns."""

    def __init__(self, message: str, *, role: str = "", url: str = ""):
        super().__init__(f"[{role} @ {url}] {message}" if role or url else message)
        self.role, self.url = role, url


class ServerUnavailable(ClientError):
    pass


class ServerError(ClientError):
    def __init__(self, message: str, *, status: int, **kw):
        super().__init__(message, **kw)
        self.status = status


class RequestRejected(ClientError):
    def __init__(self, message: str, *, status: int, **kw):
        super().__init__(message, **kw)
        self.status = status


class RequestTimeout(ClientError):
    pass


class MalformedResponse(ClientError):
    pass


class _Retryable(Exception):
    """Internal: wraps a retryable failure so tenacity retries exactly these."""

    def __init__(self, error: ClientError):
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class ClientSettings:
    max_in_flight: int = 256  # per replica: vLLM batches whatever arrives; a 100-prompt batch must fit at once
    rate_limit: float = 1000.0  # requests per second per replica (asyncio-throttle)
    connect_timeout: float = 10.0
    request_timeout: float = 600.0
    attempts: int = 5  # total tries for connection errors and 5xx
    backoff_initial: float = 0.25
    backoff_max: float = 8.0
    unhealthy_cooldown: float = 5.0  # a replica that refused a connection is avoided this long


# ---------------------------------------------------------------- typed results


@dataclass(frozen=True)
class TopLogprob:
    text: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token of a completion: id, text (decoded alone), logprob, top-k (most likely first).

    The alternatives are keyed by text, as vLLM returns them; two alternatives that decode to the same
    text (rare: byte fragments) appear once.
    """

    token_id: int
    text: str
    logprob: float
    top: tuple[TopLogprob, ...]


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    tokens: tuple[TokenLogprob, ...]  # empty unless logprobs were requested
    finish_reason: str  # "stop" | "length" | ...
    stop_reason: str | int | None  # the stop string or token id that ended it, if any
    origin: str = field(default="server", compare=False)  # server | cache (the call cache) | reuse (known)


@dataclass(frozen=True)
class ChatToken:
    """One generated token of a chat answer, as a black-box API exposes it: text, bytes, logprob."""

    text: str
    bytes: bytes | None
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ChatCompletion:
    text: str
    finish_reason: str
    stop_reason: str | int | None
    tokens: tuple[ChatToken, ...] = ()  # empty unless logprobs were requested
    origin: str = field(default="server", compare=False)  # server | cache (the call cache) | reuse (known)


@dataclass(frozen=True)
class ReplicaStatus:
    url: str
    healthy: bool
    models: tuple[str, ...] = ()
    version: str | None = None
    error: str | None = None


# ---------------------------------------------------------------- the client


@dataclass
class _Replica:
    url: str
    settings: ClientSettings
    session: aiohttp.ClientSession | None = None
    in_flight: int = 0
    down_until: float = 0.0
    sem: asyncio.Semaphore = field(init=False)
    throttler: Throttler = field(init=False)

    def __post_init__(self):
        self.sem = asyncio.Semaphore(self.settings.max_in_flight)
        self.throttler = Throttler(rate_limit=self.settings.rate_limit, period=1.0)

    def get_session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            s = self.settings
            self.session = aiohttp.ClientSession(
                base_url=self.url,
                timeout=aiohttp.ClientTimeout(total=s.request_timeout, sock_connect=s.connect_timeout),
                connector=aiohttp.TCPConnector(limit=s.max_in_flight),
            )
        return self.session


def _error_message(body: Any, text: str) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if body.get("message"):
            return str(body["message"])
    return text[:500]


_JSON_HEADERS = {"Content-Type": "application/json"}


class CallCache(Protocol):
    """Where answered requests are kept (`workspace.cache.CallCache` is the SQLite one)."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, body: Any) -> None: ...


class Continuations(Protocol):
    """Known continuations of greedy answers (`workspace.reuse.ContinuationStore`)."""

    def answer_completion(self, scope: bytes, prompt: list[int], max_tokens: int, k: int,
                          stop: list[str] | None) -> Completion | None: ...  # fmt: skip

    def known_start(
        self, scope: bytes, prompt: list[int], max_tokens: int, k: int
    ) -> tuple[Completion, Completion | None] | None: ...

    def record_completion(self, scope: bytes, prompt: list[int], out: Completion, k: int) -> None: ...

    def chat_candidates(self, scope: bytes, head: bytes, text: str) -> bool: ...

    def answer_chat(self, scope: bytes, prompt: list[int], max_tokens: int, k: int | None, stop: list[str] | None,
                    include_stop: bool) -> ChatCompletion | None: ...  # fmt: skip

    def record_chat(self, scope: bytes, head: bytes, text: str, prompt: list[int], out: ChatCompletion,
                    token_ids: list[int], k: int) -> None: ...  # fmt: skip


@dataclass
class ReuseCounts:
    """What a client's known continuations did: generation requests answered without the server (`hits`),
    asked of the server although reuse was on (`misses`), and /tokenize requests a chat lookup spent (`checks`)."""

    hits: int = 0
    misses: int = 0
    checks: int = 0


# Greedy decoding, stated in full on every generation request. vLLM fills what a request leaves out from the
# model's generation_config.json when started with `--generation-config auto` (its default): Qwen2.5-7B-Instruct's
# repetition_penalty 1.05 would shape every reference answer. The launcher also starts servers with
# `--generation-config vllm`; saying it here keeps servers started elsewhere greedy too. top_k 0 is "off" in vLLM
# 0.32 (the tested `gpu` extra); a seed is not needed for greedy decoding.
GREEDY: dict[str, float | int] = {
    "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
    "repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
}  # fmt: skip


def _cache_key(path: str, payload: dict) -> str:
    blob = json.dumps([path, payload], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# What a reusable request may hold besides its context and the sampling settings (GREEDY) that go into its scope.
_COMPLETION_FIELDS = {"prompt", "max_tokens", "logprobs", "stop", "return_token_ids"}
_CHAT_FIELDS = {"messages", "max_tokens", "logprobs", "top_logprobs", "stop", "include_stop_str_in_output",
                "continue_final_message", "add_generation_prompt"}  # fmt: skip
_SCOPE_FIELDS = {"model", "chat_template_kwargs", *GREEDY}


def _scope(api: str, payload: dict, fields: set[str]) -> bytes | None:
    """The scope of a reusable greedy request (its API and every setting but the context), or None."""
    rest = {k: v for k, v in payload.items() if k not in fields}
    if payload.get("temperature") or not set(rest) <= _SCOPE_FIELDS:
        return None
    return hashlib.sha256(orjson.dumps([api, rest], option=orjson.OPT_SORT_KEYS)).digest()


def _head(messages: list[dict]) -> bytes:
    """The conversation a chat continuation belongs to (every message before the assistant text)."""
    return hashlib.sha256(orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)).digest()


class ModelClient:
    """Talks to every replica of one role's server."""

    def __init__(
        self, endpoint: Endpoint, settings: ClientSettings | None = None, cache: CallCache | None = None,
        reuse: Continuations | None = None,
    ):  # fmt: skip
        if not endpoint.urls:
            raise ValueError(f"endpoint for {endpoint.role} has no URL")
        self.endpoint = endpoint
        self.role = endpoint.role
        self.settings = settings or ClientSettings()
        if endpoint.max_in_flight and endpoint.max_in_flight < self.settings.max_in_flight:
            # The server's preset knows its capacity: a CPU server given 164 decodes at once evicts their KV
            # cache and recomputes it (measured: 7-50 tokens/s instead of hundreds).
            self.settings = dataclasses.replace(self.settings, max_in_flight=endpoint.max_in_flight)
        if endpoint.request_timeout and endpoint.request_timeout > self.settings.request_timeout:
            # A 512-token answer from the cpu preset's 0.5B model, sharing one core with 15 others, takes
            # longer than the default 600 s (measured: 0.5-1.3 tokens/s per answer).
            self.settings = dataclasses.replace(self.settings, request_timeout=endpoint.request_timeout)
        self._replicas = [_Replica(u, self.settings) for u in endpoint.urls]
        self._model: str | None = endpoint.model
        self._template_kwargs: dict | None = endpoint.chat_template_kwargs
        self._model_lock = asyncio.Lock()
        self.calls = 0  # requests sent (retries included): benchmarks and cache tests read this
        self.cache = cache
        self.cache_hits = 0
        self.reuse = reuse
        self.reused = ReuseCounts()
        self._limit: list[int | None] = []  # the served model's max_model_len, once asked

    async def __aenter__(self) -> ModelClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        for r in self._replicas:
            if r.session is not None:
                await r.session.close()

    # ------------------------------------------------------------ routing and retries

    def _pick(self) -> _Replica:
        now = time.monotonic()
        healthy = [r for r in self._replicas if r.down_until <= now]
        pool = healthy or sorted(self._replicas, key=lambda r: r.down_until)[:1]
        return min(pool, key=lambda r: r.in_flight)

    async def _once(self, method: str, path: str, payload: dict | None) -> Any:
        rep = self._pick()
        rep.in_flight += 1
        kw = {"role": self.role, "url": rep.url}
        try:
            async with rep.sem, rep.throttler:
                self.calls += 1
                session = rep.get_session()
                try:
                    body_bytes = None if payload is None else orjson.dumps(payload)
                    async with session.request(method, path, data=body_bytes, headers=_JSON_HEADERS) as resp:
                        raw = await resp.read()
                        status = resp.status
                except aiohttp.ConnectionTimeoutError as e:
                    rep.down_until = time.monotonic() + self.settings.unhealthy_cooldown
                    raise _Retryable(ServerUnavailable(f"connect timeout: {e}", **kw)) from e
                except (TimeoutError, aiohttp.ServerTimeoutError) as e:
                    raise RequestTimeout(
                        f"{method} {path}: no answer within {self.settings.request_timeout:.0f} s", **kw
                    ) from e
                except aiohttp.ClientConnectionError as e:
                    rep.down_until = time.monotonic() + self.settings.unhealthy_cooldown
                    raise _Retryable(ServerUnavailable(f"{type(e).__name__}: {e}", **kw)) from e
        finally:
            rep.in_flight -= 1
        try:  # orjson: a draft's logprobs are most of what the client parses (benchmarks/engine.py)
            body = await asyncio.to_thread(orjson.loads, raw) if len(raw) > 1 << 20 else orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        text = raw[:1000].decode("utf-8", errors="replace")
        _raise_for_status(status, body, text, path, kw)
        if body is None:
            raise MalformedResponse(f"{path} answered {status} with non-JSON: {text[:200]!r}", **kw)
        return body

    async def request(self, method: str, path: str, payload: dict | None = None, parse: Callable | None = None) -> Any:
        """Send one request with routing and retries; returns `parse(body)` (default: the decoded JSON body).

        A body `parse` cannot read raises MalformedResponse. With a call cache, a deterministic request (greedy
        generation, tokenize, detokenize) is answered from the cache when the exact same request was answered
        before (the served model name is in every payload); only bodies that parsed are stored.
        """
        return (await self._ask(method, path, payload, parse))[0]

    async def _ask(
        self, method: str, path: str, payload: dict | None, parse: Callable | None = None, sent: dict | None = None
    ) -> tuple[Any, str]:
        """`request`, also saying where the answer came from ("server" or "cache"). `sent`: the payload to send
        instead (a superset that asks for more, e.g. what the continuation store needs); the call cache keys on
        `payload`, so one answer serves both."""
        parse = parse or (lambda b: b)
        key = None
        if self.cache is not None and method == "POST" and payload is not None and not payload.get("temperature"):
            key = _cache_key(path, payload)
            hit = self.cache.get(key)
            if hit is not None:
                self.cache_hits += 1
                return self._parse(path, hit, parse), "cache"
        body = await self._request(method, path, payload if sent is None else sent)
        out = self._parse(path, body, parse)
        if key is not None:
            self.cache.put(key, body)
        return out, "server"

    def _parse(self, path: str, body: Any, parse: Callable) -> Any:
        try:
            return parse(body)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise MalformedResponse(f"{path}: cannot parse ({e!r}): {str(body)[:200]}", role=self.role) from e

    async def _request(self, method: str, path: str, payload: dict | None) -> Any:
        try:  # the first try without tenacity's machinery: most requests need no retry
            return await self._once(method, path, payload)
        except _Retryable as e:
            if self.settings.attempts <= 1:
                raise e.error from None
        s = self.settings
        await asyncio.sleep(s.backoff_initial)  # tenacity's first attempt does not wait
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(s.attempts - 1),
            wait=wait_exponential_jitter(multiplier=s.backoff_initial, max=s.backoff_max),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, path, payload)
        except _Retryable as e:
            raise e.error from None
        raise AssertionError("unreachable")

    async def model(self) -> str:
        """The served model name (asked of the server once if the endpoint did not say)."""
        if self._model is None:
            async with self._model_lock:
                if self._model is None:
                    names = await self.models()
                    if not names:
                        raise MalformedResponse("/v1/models lists no model", role=self.role)
                    self._model = names[0]
        return self._model

    async def context_limit(self) -> int | None:
        """The served model's context length (`max_model_len` in vLLM's /v1/models), None when not reported."""
        if not self._limit:
            name = await self.model()
            body = await self.request("GET", "/v1/models")
            cards = [m for m in body.get("data") or () if isinstance(m, dict) and m.get("id") == name]
            self._limit.append(int(cards[0]["max_model_len"]) if cards and cards[0].get("max_model_len") else None)
        return self._limit[0]

    async def _room(self, prompt: list[int], max_tokens: int) -> int:
        """What a server generates at most for this prompt: vLLM clips max_tokens to the context length."""
        limit = await self.context_limit()
        return max_tokens if limit is None else min(max_tokens, limit - len(prompt))

    async def template_kwargs(self) -> dict:
        """Fixed arguments for the served model's chat template (the endpoint's, else the presets catalog's for
        the served model's name), sent with every request that renders it: chat and /tokenize with messages."""
        if self._template_kwargs is None:
            self._template_kwargs = load_catalog().template_kwargs(await self.model())
        return self._template_kwargs

    async def _template_args(self) -> dict:
        kw = await self.template_kwargs()
        return {"chat_template_kwargs": kw} if kw else {}  # a model without any: the payload (a cache key) as before

    # ------------------------------------------------------------ API calls

    async def models(self) -> list[str]:
        body = await self.request("GET", "/v1/models")
        try:
            return [m["id"] for m in body["data"]]
        except (KeyError, TypeError) as e:
            raise MalformedResponse(f"/v1/models: unexpected body {str(body)[:200]}", role=self.role) from e

    async def complete(
        self,
        prompt_ids: list[int],
        *,
        max_tokens: int,
        logprobs: int = 0,
        stop: list[str] | None = None,
        temperature: float = 0.0,
        **extra: Any,
    ) -> Completion:
        """Continue a token-id prompt; with `logprobs=k`, every generated token comes with its top-k.

        With a continuation store, a greedy request that continues a known answer is answered from it (origin
        "reuse"); otherwise the answer (asked with at least one logprob, for its token pieces) is added to it."""
        payload = {
            "model": await self.model(),
            "prompt": list(prompt_ids),
            "max_tokens": max_tokens,
            **GREEDY,
            "temperature": temperature,
            "return_token_ids": True,
            **({"logprobs": logprobs} if logprobs else {}),
            **({"stop": stop} if stop else {}),
            **extra,
        }
        path = "/v1/completions"
        sc = None if self.reuse is None else _scope("completions", payload, _COMPLETION_FIELDS)
        if sc is None:
            out, origin = await self._ask("POST", path, payload, _parse_completion)
            return _own(out, origin, logprobs)
        room = await self._room(list(prompt_ids), max_tokens)
        known = self.reuse.answer_completion(sc, list(prompt_ids), room, logprobs, stop) if room > 0 else None
        if known is not None:
            self.reused.hits += 1
            return known
        self.reused.misses += 1
        k = max(logprobs, 1)
        out, origin = await self._ask("POST", path, payload, _parse_completion, {**payload, "logprobs": k})
        if out.tokens and len(out.tokens) == len(out.token_ids):
            self.reuse.record_completion(sc, list(prompt_ids), out, k)
        return _own(out, origin, logprobs)

    async def complete_until(
        self, prompt_ids: list[int], *, max_tokens: int, logprobs: int, until: Callable[[Completion], Awaitable[bool]]
    ) -> Completion:
        """`complete`, streamed: each time tokens arrive, `until` gets the completion so far and returns True to stop
        reading (the connection closes and vLLM aborts the request, so a draft the policy cuts early costs the
        tokens read, not `max_tokens`). Returns the completion so far; cut, its finish_reason is "length" (what the
        server says of that many tokens). With a continuation store, what is known of the answer is read first and
        shown to `until` at once: the server is asked only for the rest, and what it streams is recorded. No call
        cache (a cut stream answers no request). A stream that fails before any token falls back to `complete`."""
        k = max(logprobs, 1)
        payload = {"model": await self.model(), "prompt": list(prompt_ids), "max_tokens": max_tokens, **GREEDY,
                   "return_token_ids": True, "logprobs": k}  # fmt: skip
        sc = None if self.reuse is None else _scope("completions", payload, _COMPLETION_FIELDS)
        head = None
        if sc is not None:
            max_tokens = await self._room(list(prompt_ids), max_tokens)
            known = self.reuse.known_start(sc, list(prompt_ids), max_tokens, k) if max_tokens > 0 else None
            if known is not None:
                head, resume = known
                if await until(head) or head.finish_reason == "stop" or len(head.token_ids) >= max_tokens:
                    self.reused.hits += 1
                    return _own(head, "reuse", logprobs)
                # The server goes on from the last character boundary of what is known (tokens after it come
                # again, the same: `until` sees them at the same places).
                head = resume
            self.reused.misses += 1
        n = 0 if head is None else len(head.token_ids)

        async def joined(part: Completion) -> bool:
            return await until(_join(head, part) if head is not None else part)

        rest = {
            **payload,
            "prompt": list(prompt_ids) + list(head.token_ids if head else ()),
            "max_tokens": max_tokens - n,
        }
        try:
            part = await self._stream(rest, joined)
        except _Retryable:  # (a stream that broke after tokens were shown raised ServerUnavailable itself)
            part = await self.complete(rest["prompt"], max_tokens=rest["max_tokens"], logprobs=k)
            await joined(part)
        out = _join(head, part) if head is not None else part
        if sc is not None and out.tokens and len(out.tokens) == len(out.token_ids):
            self.reuse.record_completion(sc, list(prompt_ids), out, k)
        return _own(out, "server", logprobs)

    async def _stream(self, payload: dict, until: Callable[[Completion], Awaitable[bool]]) -> Completion:
        """One streamed /v1/completions request, read until `until` says stop or the server ends it. A connection
        that fails before any token is `_Retryable` (the caller asks again, unstreamed)."""
        rep = self._pick()
        rep.in_flight += 1
        kw = {"role": self.role, "url": rep.url}
        text: list[str] = []
        ids: list[int] = []
        tokens: list[TokenLogprob] = []
        finish, reason = "", None
        try:
            async with rep.sem, rep.throttler:
                self.calls += 1
                session = rep.get_session()
                try:
                    async with session.post("/v1/completions", data=orjson.dumps({**payload, "stream": True}),
                                            headers=_JSON_HEADERS) as resp:  # fmt: skip
                        if resp.status >= 400:
                            raw = await resp.read()
                            try:
                                body = orjson.loads(raw)
                            except orjson.JSONDecodeError:
                                body = None
                            _raise_for_status(resp.status, body, raw[:1000].decode(errors="replace"),
                                              "/v1/completions", kw)  # fmt: skip
                        async for line in resp.content:
                            if not line.startswith(b"data:"):
                                continue
                            data = line[5:].strip()
                            if data == b"[DONE]":
                                break
                            try:
                                part = _parse_completion(orjson.loads(data))
                            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as e:
                                raise MalformedResponse(f"/v1/completions stream: cannot parse ({e!r}): "
                                                        f"{data[:200]!r}", **kw) from e  # fmt: skip
                            text.append(part.text)
                            ids += part.token_ids
                            tokens += part.tokens
                            finish, reason = part.finish_reason or finish, part.stop_reason
                            if part.token_ids and await until(
                                Completion("".join(text), tuple(ids), tuple(tokens), finish or "length", reason)
                            ):
                                resp.close()  # the server sees the client go and aborts the request
                                break
                except aiohttp.ClientConnectionError as e:
                    rep.down_until = time.monotonic() + self.settings.unhealthy_cooldown
                    if ids:
                        raise ServerUnavailable(f"the stream broke after tokens: {type(e).__name__}: {e}", **kw) from e
                    raise _Retryable(ServerUnavailable(f"{type(e).__name__}: {e}", **kw)) from e
                except (TimeoutError, aiohttp.ServerTimeoutError) as e:
                    raise RequestTimeout(f"POST /v1/completions (streamed): no end within "
                                         f"{self.settings.request_timeout:.0f} s", **kw) from e  # fmt: skip
        finally:
            rep.in_flight -= 1
        return Completion("".join(text), tuple(ids), tuple(tokens), finish or "length", reason)

    async def prompt_ranks(self, prompt_ids: list[int], *, start: int = 1) -> list[int]:
        """The rank of each prompt token from index `start` on among the model's predictions given the tokens
        before it (1: the model's greedy choice). One request; vLLM's `prompt_logprobs` extension, so only for a
        white-box (vLLM) server."""
        payload = {"model": await self.model(), "prompt": list(prompt_ids), "max_tokens": 1, **GREEDY,
                   "prompt_logprobs": 1}  # fmt: skip
        start = max(1, start)  # the first prompt token has no prediction

        def parse(body: dict) -> list[int]:
            rows = body["choices"][0]["prompt_logprobs"]
            if len(rows) != len(prompt_ids):
                raise ValueError(f"{len(rows)} prompt logprob rows for {len(prompt_ids)} prompt tokens")
            return [int(rows[j][str(prompt_ids[j])]["rank"]) for j in range(start, len(prompt_ids))]

        return await self.request("POST", "/v1/completions", payload, parse)

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        continue_final: bool = False,
        stop: list[str] | None = None,
        include_stop: bool = False,
        logprobs: int | None = None,
        temperature: float = 0.0,
        **extra: Any,
    ) -> ChatCompletion:
        """Chat completion. With `continue_final=True` the last (assistant) message is continued in place.

        `logprobs=k` asks for each generated token's text, bytes and logprob, plus the top-k alternatives.

        With a continuation store, a greedy request whose assistant text continues a known answer is answered
        from it when the server's /tokenize of the rendered prompt proves the context is the known one (origin
        "reuse"); otherwise the answer (asked with logprobs and token ids) is added to it.
        """
        payload = {
            "model": await self.model(),
            "messages": messages,
            **await self._template_args(),
            "max_tokens": max_tokens,
            **GREEDY,
            "temperature": temperature,
            **({"continue_final_message": True, "add_generation_prompt": False} if continue_final else {}),
            **({"stop": stop, "include_stop_str_in_output": include_stop} if stop else {}),
            **({"logprobs": True, "top_logprobs": logprobs} if logprobs is not None else {}),
            **extra,
        }
        path = "/v1/chat/completions"
        sc = None if self.reuse is None else _scope("chat", payload, _CHAT_FIELDS)
        if sc is None:
            out, origin = await self._ask("POST", path, payload, _parse_chat)
            return _own(out, origin, logprobs)
        head = _head(messages[:-1] if continue_final else messages)
        text = messages[-1]["content"] if continue_final else ""
        ids = None
        if self.reuse.chat_candidates(sc, head, text):
            self.reused.checks += 1
            ids = await self.tokenize(messages=messages, add_generation_prompt=not continue_final,
                                      continue_final_message=continue_final)  # fmt: skip
            room = await self._room(ids, max_tokens)
            known = self.reuse.answer_chat(sc, ids, room, logprobs, stop, include_stop) if room > 0 else None
            if known is not None:
                self.reused.hits += 1
                return known
        self.reused.misses += 1
        k = logprobs or 0
        sent = {**payload, "logprobs": True, "top_logprobs": k, "return_token_ids": True}
        (out, ids_out), origin = await self._ask("POST", path, payload, _parse_chat_ids, sent)
        if ids_out is not None and len(out.tokens) == len(ids_out[1]):
            self.reuse.record_chat(sc, head, text, ids_out[0], out, ids_out[1], k)
        return _own(out, origin, logprobs)

    async def tokenize(
        self,
        text: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        add_special_tokens: bool | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
    ) -> list[int]:
        """Token ids of a text, or of chat messages rendered with the server's chat template."""
        if (text is None) == (messages is None):
            raise ValueError("tokenize takes exactly one of text or messages")
        payload: dict[str, Any] = {"model": await self.model()}
        if text is not None:
            payload["prompt"] = text
            payload["add_special_tokens"] = bool(add_special_tokens)
        else:
            payload["messages"] = messages
            payload.update(await self._template_args())
            payload["add_generation_prompt"] = add_generation_prompt
            payload["continue_final_message"] = continue_final_message
            if add_special_tokens is not None:
                payload["add_special_tokens"] = add_special_tokens
        return await self.request("POST", "/tokenize", payload, lambda b: [int(t) for t in b["tokens"]])

    async def detokenize(self, token_ids: list[int]) -> str:
        payload = {"model": await self.model(), "tokens": list(token_ids)}
        return await self.request("POST", "/detokenize", payload, lambda b: str(b["prompt"]))

    async def status(self) -> list[ReplicaStatus]:
        """Health, served models and server version of every replica (never raises)."""
        return list(await asyncio.gather(*(self._replica_status(r) for r in self._replicas)))

    async def _replica_status(self, rep: _Replica) -> ReplicaStatus:
        try:
            session = rep.get_session()
            timeout = aiohttp.ClientTimeout(total=5)
            async with session.get("/health", timeout=timeout) as r:
                if r.status != 200:
                    return ReplicaStatus(rep.url, False, error=f"/health answered {r.status}")
            async with session.get("/v1/models", timeout=timeout) as r:
                models = tuple(m["id"] for m in (await r.json(content_type=None))["data"])
            version = None
            async with session.get("/version", timeout=timeout) as r:
                if r.status == 200:
                    version = (await r.json(content_type=None)).get("version")
            return ReplicaStatus(rep.url, True, models, version)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as e:
            return ReplicaStatus(rep.url, False, error=f"{type(e).__name__}: {e}".strip(": "))


def _raise_for_status(status: int, body: Any, text: str, path: str, kw: dict) -> None:
    """5xx: a retryable ServerError; 4xx: RequestRejected (the request itself is wrong)."""
    if status >= 500:
        raise _Retryable(ServerError(f"{status} on {path}: {_error_message(body, text)}", status=status, **kw))
    if status >= 400:
        raise RequestRejected(f"{status} on {path}: {_error_message(body, text)}", status=status, **kw)


def _join(head: Completion, rest: Completion) -> Completion:
    """A known start of a completion followed by what the server streamed after it."""
    return Completion(head.text + rest.text, head.token_ids + rest.token_ids, head.tokens + rest.tokens,
                      rest.finish_reason, rest.stop_reason)  # fmt: skip


def _own(out, origin: str, logprobs: int | None):
    """A completion or chat answer as its caller asked for it: no token logprobs unless asked (the store may have
    asked for them), and where it came from."""
    asked = logprobs is not None if isinstance(out, ChatCompletion) else bool(logprobs)
    if out.tokens and not asked:
        out = dataclasses.replace(out, tokens=())
    return dataclasses.replace(out, origin=origin) if origin != out.origin else out


def _parse_chat_ids(body: dict) -> tuple[ChatCompletion, tuple[list[int], list[int]] | None]:
    """A chat answer and, when the server returned them (`return_token_ids`), its prompt's and answer's ids."""
    out = _parse_chat(body)
    prompt, ids = body.get("prompt_token_ids"), body["choices"][0].get("token_ids")
    if prompt is None or ids is None:
        return out, None
    return out, ([int(t) for t in prompt], [int(t) for t in ids])


def _parse_completion(body: dict) -> Completion:
    choice = body["choices"][0]
    lp = choice.get("logprobs") or {}
    token_ids = tuple(int(i) for i in choice["token_ids"])
    texts = lp.get("tokens") or []
    if texts and len(texts) != len(token_ids):
        raise ValueError(f"{len(texts)} logprob entries for {len(token_ids)} tokens")
    tokens = []
    for tid, tok, tok_lp, top in zip(
        token_ids, texts, lp.get("token_logprobs") or [], lp.get("top_logprobs") or [], strict=False
    ):
        alts = sorted(((str(k), float(v)) for k, v in (top or {}).items()), key=lambda kv: -kv[1])
        tokens.append(TokenLogprob(tid, str(tok), float(tok_lp), tuple(TopLogprob(t, v) for t, v in alts)))
    return Completion(
        text=choice["text"],
        token_ids=token_ids,
        tokens=tuple(tokens),
        finish_reason=choice.get("finish_reason") or "",
        stop_reason=choice.get("stop_reason"),
    )


def _parse_chat(body: dict) -> ChatCompletion:
    choice = body["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = tuple(
        ChatToken(
            text=c["token"],
            bytes=bytes(c["bytes"]) if c.get("bytes") is not None else None,
            logprob=float(c["logprob"]),
            top=tuple((t["token"], float(t["logprob"])) for t in c.get("top_logprobs") or []),
        )
        for c in content
    )
    return ChatCompletion(
        text=choice["message"].get("content") or "",
        finish_reason=choice.get("finish_reason") or "",
        stop_reason=choice.get("stop_reason"),
        tokens=tokens,
    )
