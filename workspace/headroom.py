"""Headroom: what a policy could reach on a benchmark whose answers are code, read from the baselines on record
(the weak and strong models' own answers), so every researcher and agent starts from the ceiling (`cdw headroom`,
the MCP tool `get_headroom`).

From the two models' own answers to the same problems (`Benchmark.anatomy` says what each character is:
`workspace/benchmarks/pyanatomy.py`):

- the shares of each answer's characters by kind (prose, blank, copied from the problem, comment, header,
  implementation, demo, other), and the share the benchmark scores (the extracted program);
- how often each answer's code opens with an import line; how often the weak answer holds the problem's
  signature line verbatim;
- how much of the strong implementation the weak model reproduces: the strong implementation characters on lines
  that are, verbatim (indentation included), a line of the weak answer;
- the common prefix of the two answers (characters; how many go past the first line);
- upper bounds on f_weak and f_weak_code, each the weak share of a made-up answer whose parts are taken from the
  two real ones, at recovery 1.0 only when that answer scores as the strong one does (`BOUNDS`).

Computed from the records and the benchmark's own code only: nothing here runs a model or a test.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from .benchmarks import Benchmark, DataError, resolve_prompts
from .benchmarks import get as get_benchmark
from .benchmarks.pyanatomy import KINDS, Anatomy
from .evaluate import EvaluationError
from .evaluate.results import Baselines, Example, read_baselines
from .records.log import list_records


class HeadroomError(ValueError):
    """No headroom can be computed as asked (a benchmark whose answers are not code, no baselines on record)."""


# The bounds: (name, what the weak model writes, what the strong model writes).
BOUNDS = (
    ("strong header", "the strong answer up to the end of its header (prose before, fence, imports, signature, "
     "docstring), word for word", "the rest of the strong answer"),
    ("weak's own header", "its own answer up to the end of its header (nothing when it has none)",
     "the strong answer after the strong header"),
    ("strong header, bare", "the strong header", "only the strong implementation lines (no comment, demo, fence or "
     "prose is written)"),
    ("weak's own header, bare", "its own header", "only the strong implementation lines (no comment, demo, fence "
     "or prose is written)"),
)  # fmt: skip


@dataclass(frozen=True)
class KindShare:
    """One kind of character (`pyanatomy.KINDS`): its share of each model's answer characters, pooled."""

    kind: str
    strong: float
    weak: float


@dataclass(frozen=True)
class Bound:
    """The weak share of a made-up answer (`BOUNDS`), pooled over the problems: of all its characters (f_weak) and
    of the characters the benchmark scores (f_weak_code)."""

    name: str
    weak_writes: str
    strong_writes: str
    f_weak: float | None
    f_weak_code: float | None


@dataclass(frozen=True)
class Headroom:
    """The headroom report of one benchmark and prompt set, from one baselines record (module docstring)."""

    benchmark: str
    prompts: str  # the prompt set's name
    baselines: str  # the baselines record it was read from
    models: dict[str, str]
    n: int  # problems
    strong_chars: int
    weak_chars: int
    kinds: tuple[KindShare, ...]
    strong_scored: float  # the share of the strong answers' characters the benchmark scores
    weak_scored: float
    strong_opens_with_import: int  # answers whose code's first line is an import
    weak_opens_with_import: int
    weak_exact_signature: int  # weak answers holding the problem's signature line verbatim
    strong_implementation_chars: int
    weak_reproduces_implementation: float  # share of the strong implementation characters (module docstring)
    common_prefix_mean: float  # characters the two answers share from their start, per problem
    common_prefix_share: float  # of the strong answers' characters
    common_prefix_past_first_line: int  # problems whose common prefix goes past the strong answer's first line
    bounds: tuple[Bound, ...]

    def to_json(self) -> dict:
        """Every field, JSON-ready."""
        return asdict(self)


def pick_baselines(bench: Benchmark, ids: Iterable[str], record: str | None = None) -> Baselines:
    """The baselines record to read: `record` when named, else the complete one of this benchmark that holds every
    problem of `ids` with the most problems (ties: the newest). HeadroomError when there is none."""
    want = set(ids)
    if record is not None:
        try:
            base = read_baselines(record)
        except EvaluationError as e:
            raise HeadroomError(str(e)) from e
        if base.header.benchmark != bench.name:
            raise HeadroomError(f"baselines {record} are of {base.header.benchmark}, not {bench.name}")
        if not want <= set(base.header.prompts.ids):
            raise HeadroomError(f"baselines {record} do not hold all {len(want)} problems asked for")
        return base
    found = []
    for rid in list_records("baselines"):
        try:
            base = read_baselines(rid)
        except EvaluationError:
            continue  # a damaged record is `cdw verify`'s to report; another may serve
        held = {e.prompt_id for e in base.examples if e.reference is not None and e.weak and not e.weak.error}
        if base.header.benchmark == bench.name and want <= held:
            found.append(base)
    if not found:
        raise HeadroomError(f"no baselines record of {bench.name} holds the weak and strong answers to all "
                            f"{len(want)} problems: run `cdw baselines --benchmark {bench.name}` first")  # fmt: skip
    return max(found, key=lambda b: (len(b.examples), b.header.created or ""))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _share(bench: Benchmark, pid: str, instruction: str, parts: list[tuple[str, str]]) -> tuple[int, int]:
    """(weak, strong) characters the benchmark scores of the answer the parts make up."""
    s = bench.scored_share("".join(t for _, t in parts), parts, pid, instruction)
    return (0, 0) if s is None else (s.weak, s.strong)


def _scored(bench: Benchmark, pid: str, answer: str) -> set[int]:
    trace = bench.scored_trace(answer, pid)
    return set() if trace is None else {i for i in trace.origin if i >= 0}


def _reproduced(strong: str, a: Anatomy, weak: str) -> int:
    """Strong implementation characters on lines that are, verbatim, lines of the weak answer."""
    lines, at, out = set(weak.split("\n")), 0, 0
    for line in strong.split("\n"):
        n = a.count("implementation", at, at + len(line) + 1)
        out += n if n and line in lines else 0
        at += len(line) + 1
    return out


def _problem(bench: Benchmark, e: Example, totals: dict[str, float]) -> None:
    """Add one problem's counts to `totals`."""
    strong, weak, pid = e.reference or "", e.weak.text, e.prompt_id
    sa, wa = bench.anatomy(strong, pid), bench.anatomy(weak, pid)
    add = lambda k, v: totals.__setitem__(k, totals.get(k, 0) + v)  # noqa: E731
    for k in KINDS:
        add(f"kind strong {k}", sa.count(k))
        add(f"kind weak {k}", wa.count(k))
    add("strong chars", len(strong))
    add("weak chars", len(weak))
    add("strong scored", len(_scored(bench, pid, strong)))
    add("weak scored", len(_scored(bench, pid, weak)))
    add("strong import", sa.first_code_line.startswith(("import ", "from ")))
    add("weak import", wa.first_code_line.startswith(("import ", "from ")))
    add("weak signature", wa.signature)
    add("strong implementation", sa.count("implementation"))
    add("reproduced", _reproduced(strong, sa, weak))
    prefix = len(os.path.commonprefix([strong, weak]))
    add("prefix", prefix)
    add("prefix past line", prefix > len(strong.split("\n", 1)[0]) + 1)
    hs = sa.header_end
    if hs is None:
        raise HeadroomError(f"{pid}: the strong answer has no header (no definition of the entry point)")
    hw = wa.header_end or 0
    impl = sa.count("implementation")
    # The bounds: f_weak over all characters, f_weak_code over the scored ones.
    splits = {
        "strong header": [("weak", strong[:hs]), ("strong", strong[hs:])],
        "weak's own header": [("weak", weak[:hw]), ("strong", strong[hs:])],
    }
    for name, parts in splits.items():
        w, s = _share(bench, pid, e.instruction, parts)
        add(f"{name} weak", len(parts[0][1]))
        add(f"{name} all", len(parts[0][1]) + len(parts[1][1]))
        add(f"{name} code weak", w)
        add(f"{name} code all", w + s)
    strong_code, weak_code = _scored(bench, pid, strong), _scored(bench, pid, weak)
    impl_code = sum(1 for i in strong_code if sa.letters[i] == "i")
    bare = (("strong header, bare", hs, sum(1 for i in strong_code if i < hs)),
            ("weak's own header, bare", hw, sum(1 for i in weak_code if i < hw)))  # fmt: skip
    for name, header, header_code in bare:
        add(f"{name} weak", header)
        add(f"{name} all", header + impl)
        add(f"{name} code weak", header_code)
        add(f"{name} code all", header_code + impl_code)


def headroom(benchmark: str = "humaneval", split: str | None = None, baselines: str | None = None) -> Headroom:
    """The headroom report (module docstring) of a benchmark whose answers are code, on its canonical set or one
    split ("train", "test"), from the baselines on record (`baselines`: one record by id)."""
    try:
        bench = get_benchmark(benchmark)
        if not bench.has_anatomy:
            raise HeadroomError(f"{bench.name}: its answers are not code (no anatomy): headroom is for benchmarks "
                                "scored by running an answer's code")  # fmt: skip
        prompts = resolve_prompts(bench, split, files=False)
    except DataError as e:
        raise HeadroomError(str(e)) from e
    base = pick_baselines(bench, prompts.ids, baselines)
    by_id = {e.prompt_id: e for e in base.examples}
    totals: dict[str, float] = {}
    for pid in prompts.ids:
        e = by_id[pid]
        if e.reference is None or e.weak is None or e.weak.error:
            raise HeadroomError(f"baselines {base.id}: {pid} has no {'strong' if e.reference is None else 'weak'} "
                                "answer")  # fmt: skip
        _problem(bench, e, totals)
    t = totals.get
    sc, wc = t("strong chars", 0), t("weak chars", 0)
    return Headroom(
        benchmark=bench.name, prompts=prompts.name, baselines=base.id, models=dict(base.header.models),
        n=len(prompts), strong_chars=int(sc), weak_chars=int(wc),
        kinds=tuple(KindShare(k, _ratio(t(f"kind strong {k}", 0), sc) or 0.0, _ratio(t(f"kind weak {k}", 0), wc) or 0.0)
                    for k in KINDS),
        strong_scored=_ratio(t("strong scored", 0), sc) or 0.0, weak_scored=_ratio(t("weak scored", 0), wc) or 0.0,
        strong_opens_with_import=int(t("strong import", 0)), weak_opens_with_import=int(t("weak import", 0)),
        weak_exact_signature=int(t("weak signature", 0)),
        strong_implementation_chars=int(t("strong implementation", 0)),
        weak_reproduces_implementation=_ratio(t("reproduced", 0), t("strong implementation", 0)) or 0.0,
        common_prefix_mean=t("prefix", 0) / len(prompts), common_prefix_share=_ratio(t("prefix", 0), sc) or 0.0,
        common_prefix_past_first_line=int(t("prefix past line", 0)),
        bounds=tuple(Bound(name, weak_w, strong_w, _ratio(t(f"{name} weak", 0), t(f"{name} all", 0)),
                           _ratio(t(f"{name} code weak", 0), t(f"{name} code all", 0)))
                     for name, weak_w, strong_w in BOUNDS),
    )  # fmt: skip
