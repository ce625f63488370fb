"""The record schema: every line of a record as a typed msgspec struct, one codec for them, and record ids.

A record (`workspace/records/log.py` keeps the file) is a header line and event lines, each a typed struct here,
encoded and decoded by one msgspec codec: a line with an unknown type, a missing or extra field or a wrong type
is refused with the line it is on. Derived numbers are never stored as truth: readers recompute them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import msgspec

from .log import StoreError

# What a header that names no benchmark was measured on: records made before benchmarks existed name none, and
# keep their ids (a header's identity names its benchmark only when it is another one).
UNNAMED_BENCHMARK = "alpaca_eval"


class PromptsRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    hash: str
    ids: list[str]


class CodeVersion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    commit: str | None = None  # git commit of the workspace that wrote the record
    dirty: bool | None = None  # whether its tree had uncommitted changes


class _Line(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    @property
    def type(self) -> str:
        """The line's type: its tag in the file ("reference", "generation", ...)."""
        return self.__struct_config__.tag


class Header(_Line, tag="header"):
    kind: Literal["baselines", "evaluation"]
    models: dict[str, str]
    judge: str
    prompts: PromptsRef
    settings: dict[str, Any]
    policy: str | None = None  # evaluations: the policy spec (canonical form)
    policy_source_hash: str | None = None  # evaluations: hash of the policy's whole module source
    baselines: str | None = None  # evaluations: the baselines record they are measured against
    created: str | None = None
    servers: dict[str, str] | None = None
    code: CodeVersion | None = None
    benchmark: str = UNNAMED_BENCHMARK  # what it was measured on (workspace/benchmarks/)
    # How answers were decoded (`Setup.decoding()`): the sampling every request stated, the chat template's fixed
    # arguments, and what each server said of its engine (platform, vLLM build, generation config, batch
    # invariance). Like `servers`, not part of the identity: records made before it existed keep their ids.
    decoding: dict[str, Any] | None = None

    def identity(self) -> dict:
        """What the record's id is a hash of (when and where it was made are not part of what it is)."""
        if self.kind == "baselines":
            out = {"kind": "baselines", "models": self.models, "judge": self.judge,
                   "prompts": msgspec.to_builtins(self.prompts), "settings": self.settings}  # fmt: skip
            if self.benchmark != UNNAMED_BENCHMARK:  # records made before benchmarks existed keep their ids
                out["benchmark"] = self.benchmark
            return out
        return {"policy": self.policy, "source": self.policy_source_hash, "baselines": self.baselines}


class Reference(_Line, tag="reference"):
    prompt_id: str
    instruction: str
    text: str | None
    finish_reason: str | None = None
    error: str | None = None


class _Decoded(_Line):
    prompt_id: str
    decode: dict[str, Any]  # workspace.engine.Decode.to_record()


class WeakAnswer(_Decoded, tag="weak"):
    pass


class Generation(_Decoded, tag="generation"):
    pass


class Judgement(_Line):
    """One judge verdict line: how a candidate's (or the weak model's) answer compared with the reference."""

    prompt_id: str
    preference: float | None
    candidate_first: float | None = None
    reference_first: float | None = None
    calls: int = 0
    error: str | None = None
    label_mass: list[float] | None = None
    pair: str = ""


class WeakVerdict(Judgement, tag="weak_preference"):
    pass


class Verdict(Judgement, tag="preference"):
    pass


class TestRun(_Line):
    """A unit-test run of one answer's code (tests benchmarks): how it ended, bound to the program it ran."""

    prompt_id: str
    status: str  # passed | failed | timeout | no_code (nothing parsable to test) | error (the sandbox failed)
    program: str = ""  # sha256 of the program run ("" for no_code): ties the result to the text on record
    seconds: float = 0.0
    output: str = ""  # the tail of its output (why it failed)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def error(self) -> str | None:
        """Why there is no result (the sandbox failed); None when the test ran."""
        return f"sandbox error: {self.output[-300:]}" if self.status == "error" else None


class ReferenceTest(TestRun, tag="reference_test"):
    pass


class WeakTest(TestRun, tag="weak_test"):
    pass


class Test(TestRun, tag="test"):
    pass


class Timing(_Line, tag="timing"):
    phase: str
    seconds: float
    n: int = 0


class SummaryNote(_Line, tag="summary", forbid_unknown_fields=False):
    """A summary for people reading the file; readers recompute every number and never read this."""

    comment: str = ""


class Stopped(_Line, tag="stopped"):
    """The early stopping rule ended the evaluation (`workspace/stats/stopping.py`): at which look, after how many
    prompts of its order, with what numbers and why. Readers never take it on trust: they take the look again on the
    record's own results and report a stopped line that does not follow from them."""

    look: int
    n: int  # prompts looked at (the first n of the rule's order)
    of: int  # prompts in the set
    alpha: float  # the look's share of the rule's alpha
    recovery: float | None  # on those n prompts (None: no gap)
    upper: float | None  # the one-sided upper bound of recovery (None: +inf)
    target: float
    rule: dict[str, Any]  # workspace.stats.StopRule.to_json()
    reason: str


class Signature(_Line, tag="signature"):
    key: str
    sha256: str
    signature: str


Event = (
    Reference
    | WeakAnswer
    | Generation
    | WeakVerdict
    | Verdict
    | ReferenceTest
    | WeakTest
    | Test
    | Timing
    | SummaryNote
    | Stopped
    | Signature
)


class SchemaError(StoreError):
    """A line that is not a valid header or event of the record schema."""


def header_of(obj: dict) -> Header:
    try:
        return msgspec.convert(obj, Header)
    except msgspec.ValidationError as e:
        raise SchemaError(f"header: {e}") from e


def event_of(obj: dict) -> Event:
    try:
        return msgspec.convert(obj, Event)
    except msgspec.ValidationError as e:
        raise SchemaError(f"{obj.get('type', 'event')} line: {e}") from e


def to_fields(line: _Line) -> dict:
    """A struct as the keyword fields `RecordWriter.append(type, **fields)` writes (the type tag apart)."""
    out = msgspec.to_builtins(line)
    out.pop("type", None)
    return out


def digest(obj: object) -> str:
    """Record ids: a short sha256 of canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
