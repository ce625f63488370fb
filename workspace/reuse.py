"""Known continuations: a server's greedy answers reused for every request they already answer (issue 23).

Greedy decoding makes a model's continuation a function of its context (token ids) and its decoding settings. Once
a server has answered from context C with tokens G = g1..gn, any later request whose context is C + G[:j] (j on a
character boundary, j < n) has a known answer: G[j:] as far as it is known, the same token logprobs, and the text
and finish the server would give, worked out here exactly as vLLM 0.32 does (`continue_from`). Baselines, drafts,
spans and peeks all feed the store; a τ-sweep's shared openings, never-defer after the weak model's own answers and
always-defer after the strong model's own answers are then answered without the server.

Kept in an SQLite file beside the call cache (WAL: several processes read and write it; an entry and its keys are
one transaction, so a writer killed mid-write loses only that entry). Separate from the call cache: the call cache
answers the exact same request again; this store answers *other* requests, continuations of known ones.

Lookups are by key: a hash of (scope, context ids) for every position of a known continuation that a request may
start from, where the scope hashes the API and every decoding setting of the request (model, sampling, chat
template arguments). Chat requests (the strong model: text in, text out) are found by their text first (the
conversation's head and the assistant text so far), then proved by the server's own tokenization of the rendered
prompt (`/tokenize`, one cheap request): a reuse needs the prompt ids to equal C + G[:j] exactly, since a text that
re-tokenises differently is a different context. Keys are 128-bit truncated SHA-256 digests.

What is answered, and what is not (a miss goes to the server, which is always exact):
- max_tokens shorter than the rest: the first max_tokens tokens, finish `length` (vLLM checks the end-of-sequence
  token before the length, so an EOS as the last allowed token still gives `stop`);
- stop strings: vLLM's incremental check after each token (the new text, plus the stop string's length less one
  before it; the earliest completing stop string wins, ties by list order), the text cut after the stop string
  (`include_stop`) or before it, the completing token kept;
- logprobs: a continuation recorded with top-k = K answers k <= K; k < K only where every recorded position has K
  distinct alternatives (completions key them by text, so k may show alternatives K hides); a larger k is a miss;
- the text is the server's incremental detokenization: a token that ends inside a character adds no text until
  the token that completes it (vLLM's DecodeStream), so an answer cut inside a character ends before it; where
  the pieces do not say which token completed a character (U+FFFD pieces, other servers), an answer may not end
  there, nor a stop string be found in it;
- a continuation is stored only when its per-token pieces align with its text (`workspace.alignment`).
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from servers.settings import paths

from .alignment import align
from .client import ChatCompletion, ChatToken, Completion, TokenLogprob, TopLogprob

KEY_BYTES = 16


@dataclass(frozen=True)
class Known:
    """One known continuation: the tokens a server generated from some context, with what it said of each."""

    ids: tuple[int, ...]
    pieces: tuple[str, ...]  # each token's text as the server reported it in logprobs
    logprobs: tuple[float, ...]
    top: tuple[tuple[tuple[str, float], ...], ...]  # alternatives per token, most likely first
    k: int  # alternatives asked for per token when it was recorded
    text: str  # the generated text, with the rest of the last token when a stop string cut it
    bounds: tuple[int | None, ...]  # character offset before each token (None: inside a character)
    ended: bool  # the last token ended the sequence (end of sequence or a stop token id)
    stop_reason: int | None = None  # for `ended`: None (EOS) or the stop token id the server reported
    bytes: tuple[tuple[int, ...] | None, ...] | None = None  # chat only: each token's `bytes`

    @property
    def n(self) -> int:
        return len(self.ids)

    def to_json(self) -> bytes:
        return orjson.dumps([self.ids, self.pieces, self.logprobs, self.top, self.k, self.text, self.bounds,
                             self.ended, self.stop_reason, self.bytes])  # fmt: skip

    @classmethod
    def from_json(cls, blob: bytes) -> Known:
        ids, pieces, lps, top, k, text, bounds, ended, reason, byts = orjson.loads(blob)
        return cls(tuple(ids), tuple(pieces), tuple(lps), tuple(tuple((a, b) for a, b in t) for t in top), k, text,
                   tuple(bounds), ended, reason,
                   None if byts is None else tuple(None if b is None else tuple(b) for b in byts))  # fmt: skip

    def starts(self) -> Iterator[int]:
        """Positions a request may start from: on a character boundary, with at least one token known after."""
        return (j for j in range(self.n) if self.bounds[j] is not None)


@dataclass(frozen=True)
class Answer:
    """What the server answers from position `start` of a known continuation: tokens [start, end)."""

    start: int
    end: int
    text: str
    finish_reason: str
    stop_reason: str | int | None


def check_stop_strings(text: str, new_chars: int, stop: Sequence[str], include: bool) -> tuple[str, int] | None:
    """vLLM 0.32's stop-string check after a token added `new_chars` characters to `text` (the generated text):
    (the stop string, the length the text is cut to), or None. The stop string that completes earliest wins,
    ties by list order; only occurrences that end in the new characters count."""
    if not new_chars or not stop:
        return None
    best, best_at, best_end = None, 0, None
    for s in stop:
        at = text.find(s, max(0, len(text) + 1 - new_chars - len(s)))
        if at != -1 and (best_end is None or at + len(s) < best_end):
            best, best_at, best_end = s, at, at + len(s)
    if best is None:
        return None
    return best, (best_end if include else best_at)


def continue_from(
    known: Known, start: int, max_tokens: int, stop: Sequence[str] | None = None, include_stop: bool = False
) -> Answer | None:
    """The server's answer to a request whose context is the known context plus `known.ids[:start]`, or None
    when it is not certain from what is known (the server must be asked)."""
    b = known.bounds
    if max_tokens < 1 or start >= known.n or b[start] is None:
        return None
    base, emitted, unsure = b[start], 0, False  # characters emitted so far; unsure: where is not known
    for end in range(start + 1, min(start + max_tokens, known.n) + 1):
        if b[end] is not None:
            now = b[end] - base
        elif known.pieces[end - 1] == "":
            now = emitted  # inside a character (vLLM 0.32 reports its first bytes as ""): nothing shown yet
        else:
            now = None  # inside a run of U+FFFD pieces: which of its tokens completed a character is not known
        if now is None:
            unsure = True
        else:
            if stop and now > emitted:
                hit = check_stop_strings(known.text[base : base + now], now - emitted, stop, include_stop)
                if hit is not None:
                    # After an unsure run, the token that completed the stop string may have been inside it.
                    return None if unsure else Answer(start, end, known.text[base : base + hit[1]], "stop", hit[0])
            emitted, unsure = now, False
        if end == known.n and known.ended or end - start == max_tokens:
            if now is None:
                return None
            ended = end == known.n and known.ended  # vLLM checks the end of sequence before the length
            return Answer(start, end, known.text[base : base + now], "stop" if ended else "length",
                          known.stop_reason if ended else None)  # fmt: skip
    return None  # the answer runs past what is known


def _alternatives(known: Known, a: Answer, k: int) -> list[tuple[tuple[str, float], ...]] | None:
    """Each answered token's top-k, or None when the recording cannot say it exactly."""
    tops = known.top[a.start : a.end]
    if k > known.k:
        return None
    if k == known.k:
        return list(tops)
    if any(len(t) != known.k for t in tops):  # alternatives merged by text: which k the server shows is unknown
        return None
    return [t[:k] for t in tops]


# ---------------------------------------------------------------- keys


def _pack(ids: Sequence[int]) -> bytes:
    return struct.pack(f"<{len(ids)}I", *ids)


def ids_key(scope: bytes, ids: Sequence[int]) -> bytes:
    """The key of a context: its scope (a hash of the API and every decoding setting) and its token ids."""
    return hashlib.sha256(scope + _pack(ids)).digest()[:KEY_BYTES]


def text_key(scope: bytes, head: bytes, text: str) -> bytes:
    """The key of a chat request by text: its scope, its conversation before the assistant text (a hash), and
    the assistant text so far."""
    return hashlib.sha256(b"text" + scope + head + text.encode()).digest()[:KEY_BYTES]


def _id_keys(scope: bytes, context: Sequence[int], known: Known) -> list[tuple[bytes, int]]:
    h = hashlib.sha256(scope + _pack(context))
    out = []
    for j in range(known.n):
        if known.bounds[j] is not None:
            out.append((h.copy().digest()[:KEY_BYTES], j))
        h.update(_pack(known.ids[j : j + 1]))
    return out


def _text_keys(scope: bytes, head: bytes, base: str, known: Known) -> list[tuple[bytes, int]]:
    h = hashlib.sha256(b"text" + scope + head + base.encode())
    out, at = [], 0
    for j in known.starts():
        h.update(known.text[at : known.bounds[j]].encode())
        at = known.bounds[j]
        out.append((h.copy().digest()[:KEY_BYTES], j))
    return out


# ---------------------------------------------------------------- from server answers


def known_from_completion(out: Completion, k: int) -> Known | None:
    """A completion (asked with logprobs=k >= 1) as a known continuation; None when it cannot be one."""
    return _known(out.text, list(out.token_ids), [t.text for t in out.tokens], [t.logprob for t in out.tokens],
                  [tuple((a.text, a.logprob) for a in t.top) for t in out.tokens], k, out.finish_reason,
                  out.stop_reason, None)  # fmt: skip


def known_from_chat(out: ChatCompletion, token_ids: Sequence[int], k: int) -> Known | None:
    """A chat answer (asked with logprobs, top_logprobs=k, and its token ids) as a known continuation."""
    return _known(out.text, list(token_ids), [t.text for t in out.tokens], [t.logprob for t in out.tokens],
                  [tuple(t.top) for t in out.tokens], k, out.finish_reason, out.stop_reason,
                  tuple(None if t.bytes is None else tuple(t.bytes) for t in out.tokens))  # fmt: skip


def _known(text, ids, pieces, lps, top, k, finish, stop_reason, byts) -> Known | None:
    if not ids or len(pieces) != len(ids) or len(lps) != len(ids) or finish not in ("stop", "length"):
        return None
    al = align(text, pieces)
    if al is None or al.n != len(ids):
        return None
    ended = finish == "stop" and not isinstance(stop_reason, str)
    bounds = list(al.bounds)
    if ended and bounds[-1] is None and bounds[-2] == len(al.text):
        bounds[-1] = len(al.text)  # the end-of-sequence token reported as "": it adds no text
    if ended and (bounds[-1] is None or bounds[-2] != bounds[-1]):
        # An end token with text of its own: whether the server shows it depends on include_stop_str_in_output.
        # Keep what comes before it, as a continuation that goes on.
        ids, pieces, lps, top, bounds, ended = ids[:-1], pieces[:-1], lps[:-1], top[:-1], bounds[:-1], False
        byts = None if byts is None else byts[:-1]
        if not ids or bounds[-1] is None:
            return None
    return Known(tuple(ids), tuple(pieces), tuple(lps), tuple(top), k, al.text[: bounds[-1]], tuple(bounds),
                 ended, stop_reason if ended else None, byts)  # fmt: skip


def completion_of(known: Known, a: Answer, k: int) -> Completion | None:
    """The completion the server would return (with top-k logprobs when k > 0)."""
    tokens: tuple[TokenLogprob, ...] = ()
    if k:
        tops = _alternatives(known, a, k)
        if tops is None:
            return None
        tokens = tuple(TokenLogprob(known.ids[i], known.pieces[i], known.logprobs[i],
                                    tuple(TopLogprob(t, v) for t, v in top))
                       for i, top in zip(range(a.start, a.end), tops, strict=True))  # fmt: skip
    return Completion(a.text, known.ids[a.start : a.end], tokens, a.finish_reason, a.stop_reason, origin="reuse")


def chat_of(known: Known, a: Answer, k: int | None) -> ChatCompletion | None:
    """The chat answer the server would return (with logprobs and top-k when k is not None)."""
    tokens: tuple[ChatToken, ...] = ()
    if k is not None:
        tops = _alternatives(known, a, k)
        if tops is None or known.bytes is None:
            return None
        tokens = tuple(ChatToken(known.pieces[i], None if known.bytes[i] is None else bytes(known.bytes[i]),
                                 known.logprobs[i], tuple(top))
                       for i, top in zip(range(a.start, a.end), tops, strict=True))  # fmt: skip
    return ChatCompletion(a.text, a.finish_reason, a.stop_reason, tokens, origin="reuse")


# ---------------------------------------------------------------- the store


class ContinuationStore:
    """Known continuations of every model this workspace asked, in one SQLite file (`.cdw/cache/`)."""

    def __init__(self, path: Path | None = None, memory: int = 512):
        self.path = path or paths().cache / "continuations.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._db:  # a file that is not such a store raises sqlite3.DatabaseError here
            self._db.execute("CREATE TABLE IF NOT EXISTS known (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS keys (key BLOB NOT NULL, known INTEGER NOT NULL, "
                             "pos INTEGER NOT NULL)")  # fmt: skip
            self._db.execute("CREATE INDEX IF NOT EXISTS keys_by_key ON keys (key)")
        self._memory: OrderedDict[int, Known] = OrderedDict()  # recently used entries, decoded
        self._size = memory
        self.failures = 0  # reads and writes the file refused (locked too long, disk full): misses, not errors

    def _get(self, rowid: int) -> Known:
        k = self._memory.get(rowid)
        if k is None:
            (blob,) = self._db.execute("SELECT body FROM known WHERE id = ?", (rowid,)).fetchone()
            k = self._memory[rowid] = Known.from_json(blob)
            if len(self._memory) > self._size:
                self._memory.popitem(last=False)
        else:
            self._memory.move_to_end(rowid)
        return k

    def lookup(self, key: bytes) -> list[tuple[Known, int]]:
        """Every known continuation (and the position in it) that a context with this key starts from (none when
        the file cannot be read now: the request goes to the server)."""
        try:
            rows = self._db.execute("SELECT known, pos FROM keys WHERE key = ? ORDER BY known", (key,)).fetchall()
            return [(self._get(rowid), pos) for rowid, pos in rows]
        except sqlite3.Error as e:
            self._failed("read", e)
            return []

    def add(self, known: Known, keys: Sequence[tuple[bytes, int]]) -> None:
        """Store a continuation and the keys it is found by, in one transaction (or not at all: a store that cannot
        be written costs later requests, never this one)."""
        try:
            with self._db:
                rowid = self._db.execute("INSERT INTO known (body) VALUES (?)", (known.to_json(),)).lastrowid
                self._db.executemany("INSERT INTO keys VALUES (?, ?, ?)", [(key, rowid, pos) for key, pos in keys])
        except sqlite3.Error as e:
            self._failed("write", e)

    def _failed(self, what: str, e: sqlite3.Error) -> None:
        self.failures += 1
        if self.failures == 1:
            warnings.warn(f"known continuations ({self.path}): cannot {what} ({e}); requests go to the servers",
                          stacklevel=3)  # fmt: skip

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM known").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ completions (token ids in)

    def answer_completion(self, scope: bytes, prompt: Sequence[int], max_tokens: int, k: int,
                          stop: Sequence[str] | None) -> Completion | None:  # fmt: skip
        """The completion of `prompt` the server would give, when it is known."""
        for known, j in self.lookup(ids_key(scope, prompt)):
            a = continue_from(known, j, max_tokens, stop, include_stop=False)
            out = None if a is None else completion_of(known, a, k)
            if out is not None:
                return out
        return None

    def known_start(
        self, scope: bytes, prompt: Sequence[int], max_tokens: int, k: int
    ) -> tuple[Completion, Completion | None] | None:
        """The longest known start of the completion of `prompt` (at most `max_tokens` tokens), and its longest start
        that ends on a character boundary, where the server may be asked for the rest (a request resumed inside a
        character restarts vLLM's detokenizer; None: no such start); None when nothing is known. A streamed draft
        reads it before asking the server (`ModelClient.complete_until`)."""
        best: tuple[Completion, Completion | None] | None = None
        for known, j in self.lookup(ids_key(scope, prompt)):
            end = min(known.n, j + max_tokens)
            if best is not None and end - j <= len(best[0].token_ids):
                continue
            a = continue_from(known, j, end - j)
            if a is None:  # its last tokens are inside a run of U+FFFD pieces: start from the last sure boundary
                end = next((e for e in range(end - 1, j, -1) if known.bounds[e] is not None), j)
                a = continue_from(known, j, end - j) if end > j else None
            out = None if a is None else completion_of(known, a, k)
            if out is None:
                continue
            if a.finish_reason == "stop" or known.bounds[a.end] is not None:
                best = out, out
            else:
                e = next(e for e in range(a.end, j - 1, -1) if known.bounds[e] is not None)
                r = continue_from(known, j, e - j) if e > j else None
                best = out, None if r is None else completion_of(known, r, k)
        return best

    def record_completion(self, scope: bytes, prompt: Sequence[int], out: Completion, k: int) -> None:
        """Keep a completion the server gave (asked with logprobs=k >= 1), unless it is known already."""
        known = known_from_completion(out, k)
        if known is not None and not self._covered(ids_key(scope, prompt), known):
            self.add(known, _id_keys(scope, prompt, known))

    # ------------------------------------------------------------ chat (text in)

    def chat_candidates(self, scope: bytes, head: bytes, text: str) -> bool:
        """Whether a known continuation may answer a chat request with this assistant text (then its prompt ids,
        from the server's /tokenize, decide: `answer_chat`)."""
        return self._db.execute("SELECT 1 FROM keys WHERE key = ? LIMIT 1",
                                (text_key(scope, head, text),)).fetchone() is not None  # fmt: skip

    def answer_chat(self, scope: bytes, prompt: Sequence[int], max_tokens: int, k: int | None,
                    stop: Sequence[str] | None, include_stop: bool) -> ChatCompletion | None:  # fmt: skip
        """The chat answer to a request whose rendered prompt is `prompt` (token ids), when it is known."""
        for known, j in self.lookup(ids_key(scope, prompt)):
            a = continue_from(known, j, max_tokens, stop, include_stop)
            out = None if a is None else chat_of(known, a, k)
            if out is not None:
                return out
        return None

    def record_chat(self, scope: bytes, head: bytes, text: str, prompt: Sequence[int], out: ChatCompletion,
                    token_ids: Sequence[int], k: int) -> None:  # fmt: skip
        """Keep a chat answer (asked with logprobs, top_logprobs=k and token ids) to the conversation `head`
        continued from assistant text `text`, whose rendered prompt was `prompt`."""
        known = known_from_chat(out, token_ids, k)
        if known is not None and not self._covered(ids_key(scope, prompt), known):
            self.add(known, _id_keys(scope, prompt, known) + _text_keys(scope, head, text, known))

    def _covered(self, key: bytes, new: Known) -> bool:
        """Whether a stored continuation already holds all of `new` (same tokens from the same context, as many
        alternatives, the same end)."""
        for old, j in self.lookup(key):
            if old.ids[j : j + new.n] == new.ids and old.k >= new.k and (old.ended or not new.ended):
                return True
        return False
