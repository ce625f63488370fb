"""Where each generated token starts in the generated text, and which of those places are safe to cut.

A server returns a completion's text (decoded in context, correct) and one string per token (decoded alone,
not always meaningful). With byte-level BPE a character can be split across tokens, and servers report the
pieces of such a character in one of two ways:

- vLLM 0.32 (and V0's incremental detokenizer): the tokens holding the first bytes report `""`, and the token
  that completes the character reports the whole character, e.g. `["", "", " 🍕"]` for `" 🍕"`;
- a tokenizer's `decode([id])` (older vLLM, other servers): each partial token reports U+FFFD, possibly
  with the plain characters it also holds, e.g. `[" \ufffd", "\ufffd"]` for `" é"`; some servers write
  `"bytes:\\xe2\\x80"` instead.

Chat logprobs' `bytes` are no better (vLLM encodes the reported string). So the text is the truth and the
pieces are aligned to it: a clean piece (no U+FFFD, not empty) is a whole number of characters, so it starts
and ends on a character boundary; a run of unclean pieces is one unit whose inner boundaries are unknown.
A special token such as `<|im_end|>` appears among the pieces but not in the text: it is zero-width.

`bounds[i]` is the character offset of the boundary before token i (`bounds[n]`: after the last token), or
None where that boundary falls inside a character or is unknown. The engine hands off, cuts spans and ends
drafts only at known boundaries, so no request ever resumes inside a character (vLLM then returns garbage:
its incremental detokenizer restarts and emits the whole prompt).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_SPECIAL = re.compile(r"^<[^<>\s]{1,40}>$|^\[[A-Z_/]{2,20}\]$")  # <|im_end|>, </s>, <eos>, [/INST]


def unclean(piece: str) -> bool:
    """A piece that is not a whole number of characters (or says nothing about which it is)."""
    return piece == "" or "\ufffd" in piece or piece.startswith("bytes:")


@dataclass(frozen=True)
class Alignment:
    """Token boundaries in `text`. `text` is the generated text plus, when a stop string ended it inside the
    last token, the rest of that token (`overhang`), so that `text[: bounds[n]]` is every token's text."""

    text: str
    bounds: tuple[int | None, ...]  # len(pieces) + 1 entries; bounds[0] == 0
    overhang: str = ""

    @property
    def n(self) -> int:
        return len(self.bounds) - 1

    def safe_at_or_before(self, i: int) -> int:
        """The largest token index j <= i whose boundary is known (0 always is)."""
        while self.bounds[i] is None:
            i -= 1
        return i

    def offset(self, i: int) -> int:
        """Character offset of the known boundary at or before token index i."""
        return self.bounds[self.safe_at_or_before(i)]  # type: ignore[return-value]

    def heal(self, cut: int) -> int:
        """How many tokens to keep for a cut at character `cut` (ARCHITECTURE.md “The engine's invariants”): the last
        token boundary at or
        before the cut, so the kept text is a prefix of the model's own tokens; when the first token itself
        straddles the cut (nothing would be kept), the first known boundary after it instead."""
        best = 0
        for j in range(1, self.n + 1):
            b = self.bounds[j]
            if not b:  # unknown, or still before any text (a leading special token)
                continue
            if b > cut:
                return best or j
            best = j
        return best or self.n


def align(text: str, pieces: Sequence[str]) -> Alignment | None:
    """Align per-token strings to the generated text; None when they cannot be reconciled with it."""
    n = len(pieces)
    bounds: list[int | None] = [0] + [None] * n
    pos, run = 0, None  # run: index of the first token of a pending run of unclean pieces
    overhang = ""
    for i, p in enumerate(pieces):
        if unclean(p):
            run = i if run is None else run
            continue
        if run is not None:
            if all(q == "" for q in pieces[run:i]):
                # The completing token reports the whole character(s): it starts inside one (bound stays None).
                run = None
                if text.startswith(p, pos):
                    pos += len(p)
                elif i == n - 1 and pos < len(text) and p.startswith(text[pos:]):
                    overhang = p[len(text) - pos :]  # a stop string ended the text inside this character
                    pos = len(text) + len(overhang)
                elif not _SPECIAL.match(p):  # else: the empty pieces were zero-width specials after all
                    return None
                bounds[i + 1] = pos
                continue
            # U+FFFD pieces cover at least one whole character; this clean piece starts at the next boundary.
            q = text.find(p, pos + 1)
            if q < 0 and _SPECIAL.match(p):
                q = len(text)  # the run holds the rest of the text; then end of sequence
            if q < 0:
                return None
            bounds[i], pos, run = q, q, None
        if text.startswith(p, pos):
            pos += len(p)
            bounds[i + 1] = pos
        elif i == n - 1 and pos < len(text) and p.startswith(text[pos:]):
            overhang = p[len(text) - pos :]  # a stop string ended the text inside this token
            pos = len(text) + len(overhang)
            bounds[i + 1] = pos
        elif _SPECIAL.match(p):
            bounds[i + 1] = pos  # a special token (end of sequence): generated, but not part of the text
        else:
            return None
    if run is None and pos != len(text) + len(overhang):
        return None  # text no piece accounts for
    if run is not None and run == 0 and all(q == "" for q in pieces) and text:
        return None  # nothing to anchor the text to
    return Alignment(text + overhang, tuple(bounds), overhang)
