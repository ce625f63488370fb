"""Records as polars DataFrames, so a researcher slices results without writing loaders.

    from workspace.frames import evaluations_frame, examples_frame
    evals = evaluations_frame()                 # one row per evaluation on record
    ex = examples_frame()                       # one row per (evaluation, prompt)
    ex.filter(pl.col("preference") < 0.3).select("policy", "prompt_id", "candidate")
    ex.filter(pl.col("benchmark") == "humaneval", pl.col("weak_passed"), ~pl.col("passed"))  # deferral broke it

Every row names its benchmark (`workspace/benchmarks/`): compare numbers within one benchmark only.

Every number is recomputed from the records (`workspace.evaluate.load_evaluation`); the leaderboard is built
from `evaluations_frame` too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from .evaluate import Evaluation, EvaluationError, load_evaluation
from .evaluate.results import confirmation_of
from .policies import family
from .records.log import StoreError, list_records, record_path

# Recomputing an evaluation (bootstrap, length-control fits) takes about half a second. Records are append-only, so
# an evaluation whose record files have not changed since it was last read has not changed either.
_cache: dict[Path, tuple[tuple, Evaluation]] = {}


def _file_state(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _load(record_id: str) -> Evaluation:
    path = record_path("evaluations", record_id)
    try:
        with path.open("rb") as f:
            base = json.loads(f.readline()).get("baselines", "")
        state = (_file_state(path), _file_state(record_path("baselines", base)))
    except (OSError, ValueError, AttributeError, StoreError):
        return load_evaluation(record_id)  # let the loader say what is wrong
    hit = _cache.get(path)
    if hit and hit[0] == state:
        return hit[1]
    ev = load_evaluation(record_id)
    _cache[path] = (state, ev)
    return ev


def load_all_evaluations() -> tuple[list[Evaluation], list[tuple[str, str]]]:
    """Every evaluation on record that can be read, and (id, why) for each that cannot."""
    out, skipped = [], []
    for rid in list_records("evaluations"):
        try:
            out.append(_load(rid))
        except (EvaluationError, StoreError, KeyError, TypeError, ValueError) as e:
            skipped.append((rid, f"{type(e).__name__}: {e}"))  # one damaged record never hides the rest
    return out, skipped


EVALUATION_SCHEMA = {
    "evaluation": pl.String, "benchmark": pl.String, "policy": pl.String, "family": pl.String,
    "prompts": pl.String, "n": pl.Int64, "judged": pl.Int64, "f_weak": pl.Float64, "f_weak_low": pl.Float64,
    "f_weak_high": pl.Float64, "f_weak_code": pl.Float64, "f_weak_code_low": pl.Float64,
    "f_weak_code_high": pl.Float64, "copy_share": pl.Float64, "copy_share_low": pl.Float64,
    "copy_share_high": pl.Float64, "recovery": pl.Float64, "recovery_lower": pl.Float64, "recovery_low": pl.Float64,
    "recovery_high": pl.Float64, "utility": pl.Float64, "u_weak": pl.Float64, "u_strong": pl.Float64,
    "recovery_penalised": pl.Float64, "raw_winrate": pl.Float64, "canonical": pl.Boolean, "verified": pl.Boolean,
    "verification": pl.String, "certified": pl.Boolean, "confirmed": pl.Boolean, "stopped": pl.Boolean,
    "stopped_at": pl.Int64, "reasons": pl.List(pl.String),
    "created": pl.String, "commit": pl.String,
}  # fmt: skip


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None  # -inf: too many resamples without a gap


SHARES = ("f_weak", "f_weak_code", "copy_share")  # pooled character shares (`Summary`)


def _ci(ev: Evaluation, key: str) -> tuple[float | None, float | None]:
    # Shares of characters come from the summary; the fitted numbers from the certification rule's fit.
    src = ev.summary if key in SHARES else ev.certification
    iv = src.ci.get(key) if src else None
    return (iv.low, iv.high) if iv else (None, None)


def evaluation_row(ev: Evaluation, others: Iterable[Evaluation] = ()) -> dict:
    """One evaluation's numbers, certification and verification as a flat row."""
    s, c = ev.summary, ev.certification
    conf = confirmation_of(ev, others) if ev.certified else None
    (fl, fh), (rl, rh) = _ci(ev, "f_weak"), _ci(ev, "recovery")
    (cl, ch), (kl, kh) = _ci(ev, "f_weak_code"), _ci(ev, "copy_share")
    return {
        "evaluation": ev.id, "benchmark": ev.header.benchmark, "policy": ev.policy,
        "family": family(ev.policy), "prompts": ev.prompts, "n": ev.n, "judged": s.n if s else 0,
        "f_weak": s.f_weak if s else None, "f_weak_low": fl, "f_weak_high": fh,
        "f_weak_code": s.f_weak_code if s else None, "f_weak_code_low": cl, "f_weak_code_high": ch,
        "copy_share": s.copy_share if s else None, "copy_share_low": kl, "copy_share_high": kh,
        "recovery": c.recovery if c else None,
        "recovery_lower": _finite(c.recovery_lower) if c else None, "recovery_low": rl, "recovery_high": rh,
        "utility": c.utility if c else None, "u_weak": c.u_weak if c else None,
        "u_strong": c.u_strong if c else None, "recovery_penalised": c.recovery_penalised if c else None,
        "raw_winrate": s.raw_winrate if s else None, "canonical": ev.canonical, "verified": ev.verified,
        "verification": ev.check.reason, "certified": ev.certified, "confirmed": bool(conf and conf.certified),
        "stopped": ev.stopped is not None, "stopped_at": ev.stopped.n if ev.stopped else None,
        "reasons": ev.reasons(), "created": ev.header.created,
        "commit": ev.header.code.commit if ev.header.code else None,
    }  # fmt: skip


def evaluations_frame(evaluations: Iterable[Evaluation] | None = None) -> pl.DataFrame:
    """One row per evaluation (default: every evaluation on record that can be read)."""
    if evaluations is None:
        evaluations = load_all_evaluations()[0]
    evs = list(evaluations)
    return pl.DataFrame([evaluation_row(e, evs) for e in evs], schema=EVALUATION_SCHEMA)


EXAMPLE_SCHEMA = {
    "evaluation": pl.String, "benchmark": pl.String, "policy": pl.String, "prompt_id": pl.String,
    "instruction": pl.String, "candidate": pl.String, "reference": pl.String, "weak": pl.String, "f_weak": pl.Float64,
    "f_weak_code": pl.Float64, "weak_code_chars": pl.Int64, "strong_code_chars": pl.Int64,
    "weak_copy_chars": pl.Int64,
    "strong_spans": pl.Int64, "segments": pl.List(pl.Struct({"author": pl.String, "text": pl.String})),
    "preference": pl.Float64, "weak_preference": pl.Float64, "candidate_length": pl.Int64,
    "weak_length": pl.Int64, "reference_length": pl.Int64, "passed": pl.Boolean, "weak_passed": pl.Boolean,
    "reference_passed": pl.Boolean, "test_status": pl.String, "error": pl.String,
}  # fmt: skip


def _passed(t) -> bool | None:
    """Whether an answer passed its unit tests; None with no test result (a judge benchmark, not tested yet, or
    the sandbox failed)."""
    return None if t is None or t.error else t.passed


def _f_weak_code(share) -> float | None:
    """One answer's weak share of its scored characters (None: not recorded apart, or none scored)."""
    total = share.weak + share.strong if share else 0
    return share.weak / total if total else None


def examples_frame(evaluations: Iterable[Evaluation] | None = None) -> pl.DataFrame:
    """One row per (evaluation, prompt): the texts, the segments, f_weak, both preferences (judge benchmarks) or
    whether each answer passed its unit tests (tests benchmarks: candidate, weak only, reference, and who wrote the
    scored code: f_weak_code and its character counts), lengths, errors."""
    if evaluations is None:
        evaluations = load_all_evaluations()[0]
    rows = []
    for ev in evaluations:
        for e in ev.examples:
            c, w = e.candidate, e.weak
            rows.append({
                "evaluation": ev.id, "benchmark": ev.header.benchmark, "policy": ev.policy,
                "prompt_id": e.prompt_id, "instruction": e.instruction,
                "candidate": c.text if c else None, "reference": e.reference, "weak": w.text if w else None,
                "f_weak": c.f_weak if c else None, "f_weak_code": _f_weak_code(e.scored),
                "weak_code_chars": e.scored.weak if e.scored else None,
                "strong_code_chars": e.scored.strong if e.scored else None,
                "weak_copy_chars": e.scored.weak_copied if e.scored else None,
                "strong_spans": c.num_deferrals if c else None,
                "segments": [{"author": s.author, "text": s.text} for s in c.segments] if c else [],
                "preference": e.preference.preference if e.preference else None,
                "weak_preference": e.weak_preference.preference if e.weak_preference else None,
                "candidate_length": len(c.text) if c else None, "weak_length": len(w.text) if w else None,
                "reference_length": len(e.reference) if e.reference is not None else None,
                "passed": _passed(e.test), "weak_passed": _passed(e.weak_test),
                "reference_passed": _passed(e.reference_test), "test_status": e.test.status if e.test else None,
                "error": e.error,
            })  # fmt: skip
    return pl.DataFrame(rows, schema=EXAMPLE_SCHEMA)
