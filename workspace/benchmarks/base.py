"""The Benchmark protocol (what an evaluation, a record check and a page ask of the thing measured on), the
registry of benchmarks, and the one resolution of a user's choice of prompts.

A benchmark is scored one of two ways, and says which as data (`scoring`, `needs_judge`):
- `JudgedBenchmark` — each answer judged pairwise against the strong model's own answer (the reference); utility
  = the length-controlled winrate, U_strong = 0.5. The judge's prompt is the scorer's identity.
- `TestedBenchmark` — each answer scored alone (`score(answer, prompt_id, pool)` → `Outcome`: passed or not);
  utility = pass@1, U_weak and U_strong the two models' own pass rates. `scorer_identity()` is its identity.

Everything else an evaluation, a record check or a page needs is a method: prompt sets (`sets()`, resolved by
`resolve_prompts`), default settings, the settings identity it contributes to a record, what counts as
canonical (`canonical_problems`), and how results are described (`utility`, `utility_meaning()`,
`sentence()`). Nothing outside `workspace/benchmarks/` branches on a benchmark's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..engine import EngineSettings
from ..judge import JudgeSettings
from . import provenance
from .prompts import DataError, Log, PromptSet, load_prompts
from .provenance import ScoredShare, Traced
from .pyanatomy import Anatomy

# The benchmark when none is named: the default of every command and tool, and what a record made before
# benchmarks existed (its header names none) was measured on. Such records keep their ids: a header's identity
# names its benchmark only when it is another one.
DEFAULT = "alpaca_eval"

JUDGED, TESTED = "judge", "tests"  # how answers are scored; also the key of the scorer in a record's settings
STATUSES = ("passed", "failed", "timeout", "no_code", "error")  # how scoring one answer alone can end


@dataclass(frozen=True)
class Outcome:
    """How scoring one answer alone ended (the fields of a record's test line)."""

    status: str  # passed | failed | timeout | no_code (nothing scorable in the answer) | error (the scorer failed)
    program: str  # sha256 of what was scored ("" when nothing was): binds the result to the answer on record
    seconds: float
    output: str  # the tail of what it printed (why it failed)


@dataclass(frozen=True)
class Conditions:
    """What a record says it ran under, as far as canonicity goes (from its header)."""

    prompts: str  # the prompt set's name
    prompts_hash: str
    models: dict[str, str]  # role -> served model name
    settings: dict[str, Any]  # the settings identity (engine and scorer)


@dataclass(frozen=True)
class Canonical:
    """A benchmark's canonical set and models, as the tools report them."""

    hash: str
    n: int
    models: dict  # judged: role -> model; tested: preset -> (role -> model)


class Benchmark(ABC):
    """What an evaluation runs on and how it is scored. Subclass `JudgedBenchmark` or `TestedBenchmark`."""

    name: ClassVar[str]
    description: ClassVar[str]  # one phrase for people
    scoring: ClassVar[str]  # JUDGED | TESTED
    utility: ClassVar[str]  # the utility's short name on tables ("LC winrate", "pass@1")
    max_tokens: ClassVar[int]  # the default answer budget
    canonical_set: ClassVar[str]  # the name of the prompt set an evaluation must run on to count
    takes_files: ClassVar[bool] = False  # whether a JSONL file of instructions is a prompt set of this benchmark
    # A set disjoint from the canonical one whose evaluation, pooled with a certified canonical one, confirms it
    # (judged benchmarks; None: no confirmation).
    confirmation_set: ClassVar[str | None] = None
    # Whether `scored_trace` says which part of an answer is scored, so f_weak_code is shown beside f_weak.
    has_f_weak_code: ClassVar[bool] = False
    # Whether its answers are code that `anatomy` takes apart (`cdw headroom`).
    has_anatomy: ClassVar[bool] = False

    @property
    def needs_judge(self) -> bool:
        """Whether answers are judged pairwise (True) or scored alone (False)."""
        return self.scoring == JUDGED

    @abstractmethod
    def sets(self) -> dict[str, Callable[[Log], PromptSet]]:
        """The named prompt sets (the canonical one among them), each a loader taking an optional log."""

    def engine_settings(self) -> EngineSettings:
        """The default decoding settings (canonical ones)."""
        return EngineSettings(max_tokens=self.max_tokens)

    @abstractmethod
    def settings_identity(self, judge: JudgeSettings) -> dict:
        """The scorer's part of a record's settings: {"judge": …} or {"tests": …} (byte-stable: ids hash it)."""

    @abstractmethod
    def judge_settings(self, identity: dict) -> JudgeSettings | None:
        """The judge settings a record's settings identity names (None when not judged); DataError when this
        code cannot score the same way."""

    @abstractmethod
    def canonical(self) -> Canonical:
        """The canonical set's hash and size, and the canonical models."""

    @abstractmethod
    def canonical_problems(self, c: Conditions) -> list[str]:
        """What keeps a record off this benchmark's canonical conditions, in plain words (empty: canonical)."""

    def prompt_problems(self, name: str, ids: list[str], hash_: str) -> list[str]:
        """Offline checks of a record's prompts beyond their hash: a set named as one of this benchmark's must
        be (a head of) it."""
        return []

    def scored_trace(self, answer: str, prompt_id: str) -> Traced | None:
        """What is scored of an answer, each character traced to its index in the answer (`provenance.Traced`):
        the text f_weak_code counts. None when the answer is scored as a whole (a judge reads all of it): then
        f_weak_code is f_weak and is not shown apart."""
        return None

    def scored_share(self, answer: str, segments: Iterable[tuple[str, str]], prompt_id: str,
                     instruction: str) -> ScoredShare | None:  # fmt: skip
        """Who wrote the scored characters of one answer, from its segments' (author, text), and how many of the
        weak ones copy the instruction (ARCHITECTURE.md “What is measured”: f_weak_code, the copy share). None
        when the benchmark scores answers as a whole; ValueError when the segments do not make up the answer."""
        trace = self.scored_trace(answer, prompt_id)
        if trace is None:
            return None
        by = provenance.authors(segments, answer)
        return provenance.scored_share(trace.origin, trace.text, by, instruction)

    def anatomy(self, answer: str, prompt_id: str) -> Anatomy | None:
        """The parts of an answer that gives code (`pyanatomy`: prose, lines copied from the problem, comments,
        header, implementation, demo), for `cdw headroom`; None when the benchmark's answers are not code (then
        `has_anatomy` is False)."""
        return None

    @abstractmethod
    def utility_meaning(self) -> str:
        """What utility (and so recovery) means here, in one phrase."""

    @abstractmethod
    def sentence(self) -> str:
        """How it is scored and what counts as canonical, as one sentence for people."""


class JudgedBenchmark(Benchmark):
    """Answers judged pairwise against the reference (the strong model's own answer)."""

    scoring = JUDGED
    utility = "LC winrate"
    takes_files = True

    def settings_identity(self, judge: JudgeSettings) -> dict:
        j = judge
        return {"judge": {"template": j.template, "labels": list(j.labels), "top_logprobs": j.top_logprobs,
                          "system": j.system, "digest": j.digest()}}  # fmt: skip

    def judge_settings(self, identity: dict) -> JudgeSettings:
        j = identity["judge"]
        judge = JudgeSettings(template=j["template"], labels=tuple(j["labels"]), top_logprobs=j["top_logprobs"],
                              **({"system": j["system"]} if "system" in j else {}))  # fmt: skip
        if judge.digest() != j["digest"]:
            raise DataError(f"the judge prompt on record ({j['digest']}) is not the one this code has")
        return judge

    def utility_meaning(self) -> str:
        return "utility = length-controlled judge winrate against the strong model's answers (U_strong = 0.5)"

    def sentence(self) -> str:
        return (f"{self.description}. Utility is the length-controlled winrate of the judge's preferences (U_strong "
                "= 0.5 by definition) and recovery = (U − U_weak) / (0.5 − U_weak). Canonical: the canonical prompt "
                "set with the canonical models, judge and settings.")  # fmt: skip


class TestedBenchmark(Benchmark):
    """Answers scored alone, passed or not (unit tests, an exact match); no judge."""

    scoring = TESTED
    utility = "pass@1"
    has_f_weak_code = True
    test_timeout_s: ClassVar[float] = 10.0  # the wall-clock limit of scoring one answer
    # Model pairs a canonical result may come from, by preset name (role -> served model name).
    canonical_models: ClassVar[dict[str, dict[str, str]]] = {}
    how_scored: ClassVar[str] = "Each answer is scored by itself, passed or not; there is no judge."

    def scorer_identity(self) -> dict:
        """What a record's settings say about scoring (extend it with whatever else decides a pass)."""
        return {"benchmark": self.name, "timeout_s": self.test_timeout_s}

    def settings_identity(self, judge: JudgeSettings) -> dict:
        return {"tests": self.scorer_identity()}

    def judge_settings(self, identity: dict) -> None:
        if identity.get(TESTED) != self.scorer_identity():
            raise DataError(f"the {self.name} scoring on record is not the one this code has "
                            f"({identity.get(TESTED)} vs {self.scorer_identity()})")  # fmt: skip
        return None

    def pool(self) -> Any:
        """What `score` runs answers with (a sandbox pool, say), made once per run; checked here, so a machine
        that cannot score fails before any decoding."""
        return None

    @abstractmethod
    async def score(self, answer: str, prompt_id: str, pool: Any) -> Outcome:
        """Score one answer to one problem (`no_code` when nothing in it can be scored: a failure, not an error)."""

    def scored_text(self, answer: str, prompt_id: str) -> str:
        """What is scored for this answer, for people asking why it failed (`cdw score`): the program run, say
        ("" when nothing is scorable). Defaults to the answer itself."""
        return answer

    def scored_trace(self, answer: str, prompt_id: str) -> Traced:
        """The part of the answer its score depends on, traced (`Benchmark.scored_trace`; empty when nothing is
        scorable). Defaults to the whole answer: override it when scoring reads only part of it (the code)."""
        return Traced.answer(answer)

    @abstractmethod
    def scored_hash(self, answer: str, prompt_id: str) -> str:
        """The `program` an Outcome for this answer must carry ("" when nothing is scorable); KeyError when the
        prompt is not one of this benchmark's problems."""

    def canonical(self) -> Canonical:
        full = self.sets()[self.canonical_set](None)
        return Canonical(full.hash, len(full), self.canonical_models)

    def canonical_problems(self, c: Conditions) -> list[str]:
        """Canonical: all the problems, the models of a preset it names, the default decoding settings and this
        code's scoring."""
        out = []
        try:
            full = self.sets()[self.canonical_set](None)
            if c.prompts != self.canonical_set or c.prompts_hash != full.hash:
                out.append(f"prompts {c.prompts!r} are not all {len(full)} {self.name} problems")
        except DataError as e:
            out.append(f"cannot check the prompts: {e}")
        if c.models not in self.canonical_models.values():
            named = ", ".join(f"{k}: {v}" for k, v in self.canonical_models.items())
            out.append(f"models {c.models} are not a canonical pair for {self.name} ({named})")
        if c.settings.get("engine") != self.engine_settings().identity():
            out.append(f"not the default decoding settings for {self.name} (max_tokens {self.max_tokens})")
        if c.settings.get(TESTED) != self.scorer_identity():
            out.append("not this code's scoring (instruction, extraction or test timeout differ)")
        return out

    def utility_meaning(self) -> str:
        return (f"utility = {self.utility} (greedy); U_weak and U_strong = the weak and strong models' own pass "
                "rates")  # fmt: skip

    def sentence(self) -> str:
        return (f"{self.description}. {self.how_scored} Utility is pass@1 (greedy decoding), U_weak and U_strong "
                "the weak and strong models' own pass rates, and recovery = (U − U_weak) / (U_strong − U_weak). "
                "Canonical: all the problems, with a canonical model pair and the default settings.")  # fmt: skip


# ---------------------------------------------------------------- the registry

_REGISTRY: dict[str, Benchmark] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make a benchmark known by its `name` (in registration order: pages list them so)."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"benchmark {cls.name!r} is registered already ({type(_REGISTRY[cls.name]).__name__})")
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str | None) -> Benchmark:
    """A benchmark by name (None or missing: `DEFAULT`); DataError naming the known ones otherwise."""
    b = _REGISTRY.get(DEFAULT if name is None else name.strip())
    if b is None:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(_REGISTRY)}")
    return b


def names() -> tuple[str, ...]:
    """The registered benchmarks' names, in registration order."""
    return tuple(_REGISTRY)


# ---------------------------------------------------------------- prompt sets


def resolve_prompts(
    benchmark: str | Benchmark | None, spec: str | int | Path | PromptSet | None = None, files: bool = True,
    log: Log = None,
) -> PromptSet:  # fmt: skip
    """The one way a user's choice of prompts becomes a PromptSet (CLI, MCP tools, notebooks). Accepted:

    - None or "canonical": the benchmark's canonical set; an int N or "N": its first N;
    - a set's name (`sets()`: "confirmation", "alpaca_eval", "humaneval:train" …) or "name:N", its first N
      (a split may be named without the benchmark's prefix: "train");
    - a Path, or a string ending in ".jsonl" or naming a file: `load_prompts(path)` (benchmarks that take files;
      `files=False` refuses them: a server must not read a file an agent named);
    - a PromptSet: returned as is.
    """
    bench = benchmark if isinstance(benchmark, Benchmark) else get(benchmark)
    sets = bench.sets()
    if isinstance(spec, PromptSet):
        return spec
    if isinstance(spec, bool):
        raise DataError("prompts must be a set name or a number of prompts, not a boolean")
    if spec is None:
        return sets[bench.canonical_set](log)
    if isinstance(spec, int):
        return sets[bench.canonical_set](log).head(spec)
    if not isinstance(spec, str | Path):
        raise DataError(f"cannot resolve a prompt set from {spec!r} ({type(spec).__name__})")
    s = spec.strip() if isinstance(spec, str) else None
    if s is not None:
        if s.isdigit():
            return sets[bench.canonical_set](log).head(int(s))
        for name in (s, f"{bench.name}:{s}"):
            if name in sets or name == "canonical":
                return sets[bench.canonical_set if name == "canonical" else name](log)
        name, sep, count = s.rpartition(":")
        if name in sets or name == "canonical":
            if not count.isdigit():
                raise DataError(f"prompt set {spec!r}: the part after ':' must be a number of prompts")
            return sets[bench.canonical_set if name == "canonical" else name](log).head(int(count))
    is_file = isinstance(spec, Path) or s.endswith(".jsonl") or Path(s).expanduser().is_file()
    if is_file and bench.takes_files and files:
        return load_prompts(Path(spec).expanduser())
    forms = ", ".join(repr(n) for n in dict.fromkeys(["canonical", *sets]))
    files_too = ", or the path of a .jsonl file" if bench.takes_files and files else ""
    raise DataError(
        f"{bench.name}: unknown prompts {spec!r}: use {forms}, 'NAME:N' (its first N), or a number N (the first "
        f"N of {bench.canonical_set!r}){files_too}"
    )
