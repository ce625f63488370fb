"""The policy worker: loads one policy class from its file and answers the engine's batches, inside the sandbox.

It runs under a bare interpreter (`python -I -S`) that can import the standard library and the policy protocol
only (`remote.py` copies `protocol.py`, `registry.py`, `identity.py` and this file into the sandbox). Messages are
frames of a 4-byte big-endian length and a JSON object, on the process's stdin and stdout, one reply per request,
in the order of the requests; a request's number `q`, when it has one, is echoed in its reply.
What the policy prints goes to stderr, never into the channel.

Requests (every one but `load` names a decode `d`; its state is a `fresh()` copy made on its first message):
- `load`: `file`, `cls`, `args`, `kwargs` → the policy's `identity` (`source_hash()`, computed here so the
  evaluator never imports the file), `top_k`, `prompt_level`, `span` and its plain attributes (`attrs`).
- `scan`: strong texts handed off since the last message (`h`: `on_handoff` each, in order), then a draft's tokens
  (`tok`: `[token_id, text, logprob, top, offset]`; the text before token j is `base + draft[:offset]`, its position
  `pos + j`, its `since_handoff` `since + j`; after the last token, `draft[:end]`). `decide` runs on each in turn;
  the reply is the first that fires (`i`, action `a`, score `s`, span rule `span`), or `i: null` when none does
  (or `defer` is false: the engine no longer lets it defer, but its state still sees every token). Each token's
  `where` and `after` are tracked here as the engine tracks them (`structure.py`; the answer only grows, so each
  message feeds only what `base` added), unless the message gives them (`w`: `[where, after]` per token, for
  signals made by hand). `instr` (the instruction) comes with a decode's first message.
- `keep`: handoffs, then whole signals (`sig`, with `where` and `after`) for a prompt-level policy's `keep_weak`
  → `keep`.
- `replay`: forget decode `d`, then run its messages so far (`msgs`) again: the decode moved here from a worker
  that was lost.
Any request may carry `e`: decodes that ended, to forget first.
A policy that raises answers `{"error": ...}`; the evaluator decides what that costs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import struct
import sys

from workspace.policies.protocol import Policy, SpanRule, TokenSignal, as_decision
from workspace.policies.structure import Tracker, Where

_HEADER = struct.Struct(">I")
_PLAIN = (bool, int, float, str, type(None))


def _float(x) -> float:
    # JSON has no infinities: the evaluator's encoder writes a -inf logprob as null.
    return -math.inf if x is None else x


def _span(rule: SpanRule) -> list:
    return [rule.kind, rule.n, rule.max_tokens]


def _number(x):
    """A score as JSON can carry it: a finite int or float, else null (records write non-finite floats as null)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        x = float(x) if x is not None else None
    return x if x is None or math.isfinite(x) else None


class _Decode:
    """One decode's state: its policy, the instruction and the structure of the answer so far."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.instruction = ""
        self.tracker = Tracker()
        self.fed = 0  # characters of the answer fed to `tracker`

    def at(self, base: str) -> Tracker:
        """A tracker of the answer `base` (which extends what was fed before): a copy, for one draft."""
        if len(base) < self.fed:  # not an extension (never from the engine): start again
            self.tracker, self.fed = Tracker(), 0
        self.tracker.feed(base[self.fed :])
        self.fed = len(base)
        return self.tracker.copy()


class _Worker:
    def __init__(self):
        self.proto: Policy | None = None
        self.decodes: dict[int, _Decode] = {}

    def load(self, m: dict) -> dict:
        spec = importlib.util.spec_from_file_location("cdw_policy", m["file"])
        module = importlib.util.module_from_spec(spec)
        sys.modules["cdw_policy"] = module
        spec.loader.exec_module(module)
        cls = getattr(module, m["cls"], None)
        if cls is None:
            return {"error": f"no class {m['cls']!r} in the policy file", "kind": "missing"}
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            return {"error": f"{m['cls']} is not a subclass of workspace.policies.Policy", "kind": "class"}
        try:
            self.proto = cls(*m["args"], **m["kwargs"])
        except (TypeError, ValueError) as e:
            return {"error": f"{e}", "kind": "arguments"}
        p = self.proto
        attrs = {k: v for k, v in vars(p).items() if not k.startswith("_") and isinstance(v, _PLAIN)}
        return {"identity": p.source_hash(), "top_k": p.top_k, "prompt_level": bool(p.prompt_level),
                "span": _span(p.span), "attrs": attrs}  # fmt: skip

    def _decode(self, m: dict) -> _Decode:
        dec = self.decodes.get(m["d"])
        if dec is None:
            dec = self.decodes[m["d"]] = _Decode(self.proto.fresh())
        if "instr" in m:
            dec.instruction = m["instr"]
        for text in m.get("h", ()):
            dec.policy.on_handoff(text)
        return dec

    def scan(self, m: dict) -> dict:
        dec = self._decode(m)
        pol = dec.policy
        base, draft, pos, since, prompt, defer = m["base"], m["draft"], m["pos"], m["since"], m["prompt"], m["defer"]
        tokens, given = m["tok"], m.get("w")
        tracker, fed = (None, 0) if given is not None else (dec.at(base), 0)
        for j, (token_id, text, logprob, top, off) in enumerate(tokens):
            if given is not None:
                where, after = Where(*given[j][0]), Where(*given[j][1])
            else:
                nxt = tokens[j + 1][4] if j + 1 < len(tokens) else m.get("end", len(draft))
                where = tracker.feed(draft[fed:off]).where()
                after = tracker.feed(draft[off:nxt]).where()
                fed = nxt
            sig = TokenSignal(token_id, text, _float(logprob), tuple(_float(x) for x in top), pos + j,
                              base + draft[:off], since + j, prompt, where, after, dec.instruction)  # fmt: skip
            d = as_decision(pol.decide(sig))
            if d.fires and defer:
                return {"i": j, "a": d.action.value, "s": _number(d.score), "span": _span(d.span or pol.span)}
        return {"i": None}

    def keep(self, m: dict) -> dict:
        dec = self._decode(m)
        sigs = [TokenSignal(t, x, _float(lp), tuple(_float(v) for v in top), p, so_far, since, prompt, Where(*w),
                            Where(*a), dec.instruction)
                for t, x, lp, top, p, so_far, since, prompt, w, a in m["sig"]]  # fmt: skip
        return {"keep": bool(dec.policy.keep_weak(sigs))}

    def replay(self, m: dict) -> dict:
        self.decodes.pop(m["d"], None)
        for old in m["msgs"]:
            getattr(self, old["op"])(old)
        return {"i": None}

    def handle(self, m: dict) -> dict:
        for d in m.get("e", ()):
            self.decodes.pop(d, None)
        op = m.get("op")
        if op == "load":
            return self.load(m)
        if self.proto is None:
            return {"error": "no policy loaded"}
        if op in ("scan", "keep", "replay"):
            return getattr(self, op)(m)
        return {"error": f"unknown request {op!r}"}


def _answer(worker: _Worker, body: bytes) -> bytes:
    """One request's framed reply, carrying the request's number `q` (the evaluator matches replies by it)."""
    m = None
    try:
        m = json.loads(body)
        reply = worker.handle(m)
    except BaseException as e:  # noqa: BLE001 - a policy's bug (or its sys.exit) is an answer, not the end
        reply = {"error": f"{type(e).__name__}: {e}"[:2000]}
    if isinstance(m, dict) and "q" in m:
        reply["q"] = m["q"]
    try:
        data = json.dumps(reply, allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        data = json.dumps({"error": f"the policy's answer cannot be sent: {e}", "q": reply.get("q")}).encode()
    return _HEADER.pack(len(data)) + data


def main() -> None:
    """Serve requests until the evaluator closes the channel: every request that has arrived, in order, each
    answered as soon as it is done (requests are pipelined: one read often brings several)."""
    channel_in = os.dup(0)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # the policy's prints go to stderr, not into the channel
    sys.stdout = sys.stderr
    worker = _Worker()
    buf = bytearray()
    while True:
        chunk = os.read(channel_in, 1 << 16)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= _HEADER.size and len(buf) >= _HEADER.size + (n := _HEADER.unpack_from(buf)[0]):
            body = bytes(buf[_HEADER.size : _HEADER.size + n])
            del buf[: _HEADER.size + n]
            channel_out.write(_answer(worker, body))
