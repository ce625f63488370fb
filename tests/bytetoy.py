"""A byte-level BPE toy model for the in-test server, with the quirks of a real BPE model served by vLLM.

- Tokens are byte strings; words carry their leading space (`" cat"`), so a cut "after the word" falls on the
  first byte of the next word's token.
- Some characters are split across tokens (`" é"` = `b" \\xc3"` + `b"\\xa9"`, `" 中"` = three tokens), and the
  pieces are reported the way a vLLM version does (`split_text`): "empty" (vLLM 0.32, measured on the `cpu`
  preset: the first pieces are `""`, the completing token reports the whole character) or "replace" (a
  tokenizer's decode of one token: U+FFFD). Chat logprobs' `bytes` are the reported string's bytes (vLLM) or
  the token's own bytes (`chat_bytes="true"`, as OpenAI).
- The completion text is decoded incrementally: a trailing incomplete character is held back, and a prompt
  that ends inside a character makes the text start over with the whole prompt, as vLLM's DecodeStream does
  when it restarts (measured on vLLM 0.32).
- End of sequence is `<|im_end|>` (stop_reason None) or, with `alt_eos`, sometimes `<|endoftext|>`, which
  vLLM reports as an integer stop_reason (Qwen's extra EOS id). The EOS token's piece is its text.
- Generated token sequences are canonical: re-tokenising the text gives the same ids (as for real models).

Greedy generation is a pure function of the context, so it does not depend on how requests are chunked.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from tests.fakeserver import greedy

SPECIALS = ("<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>")
WORDS = (
    "the", "a", "cat", "dog", "sat", "on", "mat", "and", "then", "it", "ran", "far", "away", "bicycle", "gear",
    "system", "works", "with", "chain", "wheel", "turns", "around", "It", "The", "first", "second", "point",
    "is", "of", "to", "in", "that", "for", "you", "can", "see", "how", "when", "water", "rain", "sun", "light",
)  # fmt: skip
PUNCT = (".", ",", "\n", ":", "!", "?")
# Characters split across tokens, each a unit of tokens (the canonical tokenisation of its text), in raw bytes:
# " é", " ü", "—", "’", " 😀", " 中".
SPLIT_CHARS = ((" \xc3", "\xa9"), (" \xc3", "\xbc"), ("\xe2\x80", "\x94"), ("\xe2\x80", "\x99"),
               (" \xf0\x9f", "\x98\x80"), (" \xe4", "\xb8", "\xad"))  # fmt: skip


def _b(s: str) -> bytes:
    return s.encode("latin-1")  # the unit strings above spell raw bytes


def _complete_prefix(b: bytes) -> bytes:
    """`b` without a trailing incomplete UTF-8 sequence."""
    for k in range(1, min(4, len(b)) + 1):
        lead = b[-k]
        if lead & 0xC0 == 0x80:  # continuation byte: look further back
            continue
        need = 1 if lead < 0x80 else 2 if lead >= 0xC0 and lead < 0xE0 else 3 if lead < 0xF0 else 4
        return b if need <= k else b[:-k]
    return b


@dataclass
class ByteToy:
    name: str = "bpe"
    seed: int = 0
    split_text: str = "empty"  # "empty" | "replace": how pieces of a split character are reported
    chat_bytes: str = "reported"  # "reported" | "true"
    eos_after: int = 140  # EOS becomes likely once the whole context is this many tokens
    alt_eos: bool = False
    empty_spans: bool = False
    PURE_ROWS = True  # (not a field) `logprobs` depends on the fields and the context only: fakeserver.rows_of

    def __post_init__(self):
        units = [(" " + w,) for w in WORDS] + [(p,) for p in PUNCT] + list(SPLIT_CHARS)
        multi = sorted({u for unit in units for u in unit if len(_b(u)) > 1})
        self.vocab: list[bytes] = [s.encode() for s in SPECIALS] + [bytes([i]) for i in range(256)]
        self.vocab += [_b(u) for u in multi]
        self.ids = {t: i for i, t in enumerate(self.vocab)}
        self.n_special = len(SPECIALS)
        self.eos_id, self.alt_eos_id = self.ids[b"<|im_end|>"], self.ids[b"<|endoftext|>"]
        self.units = [tuple(self.ids[_b(u)] for u in unit) for unit in units]
        self.starters = sorted({u[0] for u in self.units})
        # (bytes of a split character's first tokens, the token that comes next)
        self.continuations = [(_b("".join(unit[:j])), self.ids[_b(unit[j])])
                              for unit in SPLIT_CHARS for j in range(1, len(unit))]  # fmt: skip
        self._longest = max(len(t) for t in self.vocab)

    # ------------------------------------------------------------ tokenizer

    def encode(self, text: str) -> list[int]:
        """Greedy longest match over bytes (special token strings become their ids)."""
        out, i = [], 0
        b = text.encode()
        while i < len(b):
            for k in range(min(self._longest, len(b) - i), 0, -1):
                tid = self.ids.get(b[i : i + k])
                if tid is not None and (tid >= self.n_special or k == len(self.vocab[tid])):
                    out.append(tid)
                    i += k
                    break
        return out

    def _bytes(self, ids: list[int], skip_special: bool = True) -> bytes:
        return b"".join(self.vocab[i] for i in ids if not (skip_special and i < self.n_special))

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._bytes(ids, skip_special).decode("utf-8", errors="replace")

    def detokenize(self, ids: list[int]) -> str:
        return self.decode(ids, skip_special=False)  # like /detokenize: special tokens kept

    def render(self, messages: list[dict], add_generation_prompt: bool, continue_final: bool,
               template_kwargs: dict | None = None) -> str:  # fmt: skip
        parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        if continue_final:
            parts[-1] = f"<|im_start|>{messages[-1]['role']}\n{messages[-1]['content']}"
        text = "".join(parts)
        return text + "<|im_start|>assistant\n" if add_generation_prompt else text

    def _held(self, ids: list[int]) -> bytes:
        """What an incremental detokenizer has emitted after `ids`: whole tokens, up to the last one after
        which the bytes are complete characters (a token ending inside a character is held back whole)."""
        for j in range(len(ids), -1, -1):
            head = self._bytes(ids[:j])
            if _complete_prefix(head) == head:
                return head
        return b""

    def piece(self, i: int, prev: list[int]) -> str:
        """How a server reports token i (generated after `prev`) in logprobs."""
        if i < self.n_special:
            return self.vocab[i].decode()
        if self.split_text == "replace":
            return self.vocab[i].decode("utf-8", errors="replace")
        before, after = self._held(prev), self._held([*prev, i])
        return after[len(before) :].decode("utf-8", errors="replace") if len(after) > len(before) else ""

    def chat_piece_bytes(self, i: int, piece: str) -> list[int]:
        return list(self.vocab[i] if self.chat_bytes == "true" else piece.encode())

    # ------------------------------------------------------------ the model

    def _logits(self, context: list[int]) -> dict[int, float]:
        """The logits that are not 0 (every other token's is)."""
        h = hashlib.blake2b(f"{self.seed}:{context}".encode(), digest_size=32).digest()
        logits: dict[int, float] = {}
        # Inside a split character: its next token is (nearly) certain.
        tail = self._bytes(context[-4:])
        inside = _complete_prefix(tail) != tail
        forced = [tok for head, tok in self.continuations if inside and tail.endswith(head)]
        if forced:
            for k, tok in enumerate(sorted(set(forced), key=lambda t: h[t % 32])):
                logits[tok] = 9.0 - 5.0 * k
        else:
            for k in range(6):  # a few strong candidates among the units' first tokens: realistic margins
                tok = self.starters[h[k] % len(self.starters)]
                logits[tok] = max(logits.get(tok, 0.0), 4.0 - 0.6 * k + h[6 + k] / 255.0)
            eos = self.alt_eos_id if self.alt_eos and h[30] % 2 else self.eos_id
            logits[eos] = -3.0 + 0.25 * max(0, len(context) - self.eos_after)
        return logits

    def logprobs(self, context: list[int]) -> list[float]:
        logits = self._logits(context)
        m = max(0.0, *logits.values())
        zeros = len(self.vocab) - len(logits)
        z = math.log(zeros * math.exp(-m) + sum(math.exp(x - m) for x in logits.values())) + m
        row = [-z] * len(self.vocab)
        for tok, x in logits.items():
            row[tok] = x - z
        return row

    def text_of(self, prompt: list[int], ids: list[int]) -> str:
        """The completion text as vLLM's incremental detokenizer gives it."""
        if _complete_prefix(self._bytes(prompt)) != self._bytes(prompt):
            return self.decode(prompt + ids)  # its decode stream restarts and emits the prompt too
        return self._held(ids).decode()

    def stop_reason(self, tok: int) -> int | None | bool:
        """None for the end-of-sequence token, the id for the second one (as vLLM reports stop token ids),
        False for any other token."""
        return None if tok == self.eos_id else tok if tok == self.alt_eos_id else False

    def generate(self, prompt: list[int], max_tokens: int, stop: list[str] | None):
        return greedy(self, prompt, max_tokens, stop)
