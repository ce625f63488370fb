"""The pairwise judge: soft preferences between a candidate answer and the reference (ARCHITECTURE.md “What is
measured”).

AlpacaEval 2.0's protocol: the judge sees the instruction and two outputs labelled "m" and "M", answers with
one token, and we read the top logprobs. P(first output wins) is the probability of the first label
renormalised over the two labels. Every pair is judged in both orders and averaged, so position bias cancels
per example. Identical outputs score 0.5 without a call.

A failed call, an answer whose two labels hold less than half of the probability (`MIN_LABEL_MASS`: the
judge was not answering the question), or an empty answer to judge is an **error** on that example: it is
never turned into 0.5 (that is U_strong, and would pull every policy toward parity; ARCHITECTURE.md “What this design
fixes”). Each verdict
records its label mass and a hash of the texts it judged, so a record can be checked against its texts.

Some chat templates refuse a system message (Gemma-2's, the `paper` judge's, raises "System role not
supported"). The judge asks once per server; where it is refused, the system text opens the user turn instead,
and the judge id says so (`…#fold`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

from .client import ClientError, ModelClient, RequestRejected

TEMPLATES = Path(__file__).parent / "templates"
SYSTEM = (
    "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs) based "
    "on the quality of their responses to a given instruction. This process will be used to create a leaderboard "
    "reflecting the most accurate and human-preferred answers."
)


@dataclass(frozen=True)
class JudgeSettings:
    """How the judge is asked: settings are data, and their hash is part of the judge's id."""

    template: str = "alpaca_eval_clf.txt"  # in workspace/templates/
    labels: tuple[str, str] = ("m", "M")  # first output, second output
    top_logprobs: int = 20
    system: str = SYSTEM

    def text(self) -> str:
        return (TEMPLATES / self.template).read_text()

    def digest(self) -> str:
        h = hashlib.sha256("\x00".join((self.text(), self.system, *self.labels, str(self.top_logprobs))).encode())
        return h.hexdigest()[:12]


MIN_LABEL_MASS = 0.5  # a verdict whose two labels hold less probability than this is an error


class JudgeError(RuntimeError):
    """The judge could not give a verdict (call failed, or its labels hold too little of the probability)."""


def pair_hash(instruction: str, candidate: str, reference: str) -> str:
    """What a preference is about: bound into the record so the verdict cannot be moved to other texts."""
    return hashlib.sha256("\x00".join((instruction, candidate, reference)).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Preference:
    """P(candidate beats reference) for one example, with both orders kept for inspection."""

    preference: float | None  # None exactly when `error` is set
    candidate_first: float | None = None  # P(first wins) with the candidate shown first
    reference_first: float | None = None  # P(first wins) with the reference shown first
    calls: int = 0
    error: str | None = None
    label_mass: tuple[float, float] | None = None  # the labels' share of probability in each order
    pair: str = ""  # pair_hash of the instruction and the two texts judged

    def to_json(self) -> dict:
        return {
            "preference": self.preference,
            "candidate_first": self.candidate_first,
            "reference_first": self.reference_first,
            "calls": self.calls,
            "error": self.error,
            "label_mass": None if self.label_mass is None else list(self.label_mass),
            "pair": self.pair,
        }

    @classmethod
    def from_json(cls, d: dict) -> Preference:
        mass = d.get("label_mass")
        return cls(d.get("preference"), d.get("candidate_first"), d.get("reference_first"), d.get("calls", 0),
                   d.get("error"), None if mass is None else (mass[0], mass[1]), d.get("pair", ""))  # fmt: skip


def _label_logprob(top: tuple[tuple[str, float], ...], label: str) -> float | None:
    """Log of the total probability of tokens that spell the label (a leading space is the same answer)."""
    ps = [lp for tok, lp in top if tok.strip() == label]
    if not ps:
        return None
    m = max(ps)
    return m + math.log(sum(math.exp(p - m) for p in ps))


class Judge:
    """Asks one judge server for pairwise verdicts."""

    _folds: dict[tuple[tuple[str, ...], str], bool] = {}  # (server URLs, model) -> refuses a system message

    def __init__(self, client: ModelClient, settings: JudgeSettings | None = None):
        self.client = client
        self.settings = settings or JudgeSettings()

    async def folds_system(self) -> bool:
        """Whether this server's chat template refuses a system message (asked once per server, by a one-token
        chat request, so it works with any OpenAI-compatible server)."""
        key = (self.client.endpoint.urls, await self.client.model())
        if key not in Judge._folds:
            try:
                await self.client.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                       max_tokens=1)  # fmt: skip
                Judge._folds[key] = False
            except RequestRejected as e:
                if "system" not in str(e).lower():
                    raise
                Judge._folds[key] = True
        return Judge._folds[key]

    async def id(self) -> str:
        """Which judge this is: served model, a hash of the prompt settings, and `#fold` when the system text is
        folded into the user turn. Stored with every evaluation."""
        fold = "#fold" if await self.folds_system() else ""
        return f"{await self.client.model()}#{self.settings.digest()}{fold}"

    async def prompt(self, instruction: str, first: str, second: str) -> list[dict[str, str]]:
        fields = {"instruction": instruction, "output_1": first, "output_2": second}
        # One pass over the template only (not str.format, not chained replace): the template and the outputs
        # are full of braces, and an output may itself contain "{output_2}".
        user = re.sub(r"\{(instruction|output_1|output_2)\}", lambda m: fields[m.group(1)], self.settings.text())
        if await self.folds_system():
            return [{"role": "user", "content": f"{self.settings.system}\n\n{user}"}]
        return [{"role": "system", "content": self.settings.system}, {"role": "user", "content": user}]

    async def p_first(self, instruction: str, first: str, second: str) -> tuple[float, float]:
        """P(the first output is better), renormalised over the two labels, and the labels' probability mass.
        Raises JudgeError."""
        try:
            out = await self.client.chat(
                await self.prompt(instruction, first, second), max_tokens=1, logprobs=self.settings.top_logprobs
            )
        except ClientError as e:
            raise JudgeError(f"judge call failed: {type(e).__name__}: {e}") from e
        if not out.tokens:
            raise JudgeError(f"judge answered {out.text!r} without logprobs")
        a, b = (_label_logprob(out.tokens[0].top, lab) for lab in self.settings.labels)
        mass = sum(math.exp(x) for x in (a, b) if x is not None)
        if mass < MIN_LABEL_MASS:
            seen = ", ".join(repr(t) for t, _ in out.tokens[0].top[:5])
            raise JudgeError(
                f"the judge put {mass:.2f} of its probability on the labels {self.settings.labels} (at least "
                f"{MIN_LABEL_MASS} needed; top: {seen})"
            )
        if a is None:
            return 0.0, mass
        if b is None:
            return 1.0, mass
        return 1.0 / (1.0 + math.exp(b - a)), mass

    async def prefer(self, instruction: str, candidate: str, reference: str) -> Preference:
        """P(candidate beats reference), both orders averaged. Never raises: failures are on the result."""
        pair = pair_hash(instruction, candidate, reference)
        if not candidate.strip() or not reference.strip():
            which = "candidate" if not candidate.strip() else "reference"
            return Preference(None, error=f"the {which} answer is empty: nothing to judge", pair=pair)
        if candidate == reference:
            return Preference(0.5, pair=pair)
        got = await asyncio.gather(
            self.p_first(instruction, candidate, reference),
            self.p_first(instruction, reference, candidate),
            return_exceptions=True,
        )
        errors = [g for g in got if isinstance(g, BaseException)]
        for g in errors:
            if not isinstance(g, JudgeError):
                raise g  # a bug, not a judge failure
        if errors:
            return Preference(None, calls=2, error="; ".join(str(e) for e in errors), pair=pair)
        (cf, cm), (rf, rm) = got
        return Preference((cf + (1.0 - rf)) / 2.0, cf, rf, calls=2, label_mass=(cm, rm), pair=pair)
