"""Train a learned router on labelled traces and write its weights as plain JSON (`cdw probe train`).

Rows are the labelled positions of a traces folder (`workspace.router.labels`), features are `policies.features.vector`
of each token. The split is by problem: a problem's tokens are all in train or all in test (tokens of one answer
are alike, and a token-level split would score memorised answers). The held-out problems give ROC-AUC and PR-AUC
for the model and for the single signals it competes with (margin, entropy, top-1), on the same rows.

Models are scikit-learn's: `logistic` (standardised logistic regression) and `trees` (gradient-boosted trees).
Their weights are exported as numbers (`policies/probe.py` reads them back without scikit-learn) and the export
is checked against scikit-learn's own predictions before it is written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from ..policies.features import BASELINE_SIGNALS, FEATURES, baseline_score, vector
from ..policies.probe import FORMAT, parse
from .labels import read_labels
from .traces import TraceError, Traces

KINDS = ("trees", "logistic")
RATES = (0.005, 0.01, 0.02, 0.05, 0.1)  # shares of tokens: the τ at which a probe fires that often is reported
MARGIN_TAUS = (0.01, 0.03, 0.1, 0.3)
HELD_OUT_SPLIT = "humaneval:test"  # the half kept for held-out policy evaluations: never trained on


class ProbeError(RuntimeError):
    """Training that cannot run or would mislead (a leaking split, too few labels, one class only)."""


@dataclass(frozen=True)
class Dataset:
    X: np.ndarray  # (rows, features)
    y: np.ndarray  # 0/1
    problems: tuple[str, ...]  # per row
    positions: tuple[int, ...]


def dataset(traces: Traces, source: str) -> Dataset:
    """The labelled positions of `traces` by `source`, with their features."""
    labels = read_labels(traces, source)
    if not labels:
        raise ProbeError(f"{traces.path} has no {source} labels; run `cdw traces label --source {source}` first")
    by_key = {(r.problem, r.position): r for r in traces.tokens}
    X, y, probs, pos = [], [], [], []
    for lab in sorted(labels, key=lambda r: (r.problem, r.position)):
        row = by_key.get((lab.problem, lab.position))
        if row is None:
            raise TraceError(f"label {lab.problem}@{lab.position} has no token row in {traces.path}")
        X.append(vector(row.signal(traces.decodes[lab.problem].answer)))
        y.append(lab.label)
        probs.append(lab.problem)
        pos.append(lab.position)
    return Dataset(np.asarray(X, dtype=float), np.asarray(y, dtype=int), tuple(probs), tuple(pos))


def split_problems(problems: Collection[str], test_fraction: float = 0.25, seed: int = 0) -> tuple[set, set]:
    """A problem-level split: problems ordered by a seeded hash, the last `test_fraction` held out."""
    if not 0 < test_fraction < 1:
        raise ProbeError("the held-out fraction must be between 0 and 1")
    order = sorted(set(problems), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).digest())
    k = max(1, round(len(order) * test_fraction))
    if len(order) - k < 1:
        raise ProbeError(f"{len(order)} problems cannot be split into train and test")
    return set(order[:-k]), set(order[-k:])


def check_split(train: Collection[str], test: Collection[str]) -> None:
    """Refuse a split that puts any problem on both sides."""
    leak = set(train) & set(test)
    if leak:
        shown = ", ".join(sorted(leak)[:5])
        raise ProbeError(f"{len(leak)} problems are in both train and test ({shown}{', …' if len(leak) > 5 else ''}):"
                         " split by problem so held-out scores are not memorised answers")  # fmt: skip


@dataclass(frozen=True)
class Scores:
    roc_auc: float | None  # None: the held-out rows have one class only
    pr_auc: float | None
    n: int
    positives: int


def scores(y: np.ndarray, s: np.ndarray) -> Scores:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if len(set(y.tolist())) < 2:
        return Scores(None, None, len(y), int(y.sum()))
    return Scores(round(float(roc_auc_score(y, s)), 4), round(float(average_precision_score(y, s)), 4), len(y),
                  int(y.sum()))  # fmt: skip


@dataclass(frozen=True)
class Report:
    kind: str
    label_source: str
    traces: str
    train_problems: int
    test_problems: int
    train_rows: int
    positive_rate: float
    held_out: dict[str, Scores]  # the model (`probe`), the other kind, and each single signal
    importances: list[tuple[str, float]] = field(default_factory=list)  # top features, largest first
    # τ at which the probe fires on a given share of all traced tokens (share -> τ), and the share of tokens on
    # which margin fires at a given τ (τ -> share): to compare a probe and margin at matched deferral rates
    tau_for_rate: dict[str, float] = field(default_factory=dict)
    margin_rate: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["held_out"] = {k: asdict(v) for k, v in self.held_out.items()}
        return d


def _fit(kind: str, X: np.ndarray, y: np.ndarray, seed: int):
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale[scale == 0] = 1.0
        m = LogisticRegression(C=1.0, max_iter=2000).fit((X - mean) / scale, y)
        params = {"mean": mean.tolist(), "scale": scale.tolist(), "coef": m.coef_[0].tolist(),
                  "intercept": float(m.intercept_[0])}  # fmt: skip
        return params, lambda Z: m.predict_proba((Z - mean) / scale)[:, 1], np.abs(m.coef_[0])
    if kind == "trees":
        from sklearn.ensemble import GradientBoostingClassifier

        m = GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8,
                                       random_state=seed).fit(X, y)  # fmt: skip
        trees = []
        for est in m.estimators_[:, 0]:
            t = est.tree_
            trees.append({"feature": [int(f) if f >= 0 else -1 for f in t.feature],
                          "threshold": [float(v) for v in t.threshold],
                          "left": [int(v) for v in t.children_left], "right": [int(v) for v in t.children_right],
                          "value": [float(v) for v in t.value[:, 0, 0]]})  # fmt: skip
        init = float(m._raw_predict_init(X[:1])[0, 0])
        params = {"init": init, "learning_rate": float(m.learning_rate), "trees": trees}
        return params, lambda Z: m.predict_proba(Z)[:, 1], m.feature_importances_
    raise ProbeError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")


def train(
    traces: Traces,
    source: str = "disagreement",
    kind: str = "trees",
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    split: tuple[Collection[str], Collection[str]] | None = None,
) -> tuple[dict, Report]:
    """Fit `kind` on the labelled traces and score it on held-out problems; returns (weights file object, report).

    The weights are fitted on the training problems only (what the report scores is what the file holds)."""
    if traces.meta.get("prompts") == HELD_OUT_SPLIT:
        raise ProbeError(f"{traces.path} traces the held-out half ({HELD_OUT_SPLIT}): a probe trained on it would"
                         " be evaluated on its own training problems; collect traces with --split train")  # fmt: skip
    ds = dataset(traces, source)
    train_p, test_p = split or split_problems(ds.problems, test_fraction, seed)
    check_split(train_p, test_p)
    tr = np.array([p in train_p for p in ds.problems])
    te = np.array([p in test_p for p in ds.problems])
    if len(set(ds.y[tr].tolist())) < 2:
        raise ProbeError(f"the training rows have one class only ({int(ds.y[tr].sum())} harmful of {tr.sum()}): "
                         "label more positions")  # fmt: skip
    held: dict[str, Scores] = {}
    params, predict, importance = None, None, None
    for k in (kind, *[k for k in KINDS if k != kind]):
        p, pred, imp = _fit(k, ds.X[tr], ds.y[tr], seed)
        held["probe" if k == kind else k] = scores(ds.y[te], pred(ds.X[te]))
        if k == kind:
            params, predict, importance = p, pred, imp
    for name in BASELINE_SIGNALS:
        held[name] = scores(ds.y[te], np.array([baseline_score(name, x) for x in ds.X[te].tolist()]))
    obj = {
        "format": FORMAT,
        "kind": kind,
        "features": list(FEATURES),
        "top_k": int(traces.meta["top_k"]),
        "label_source": source,
        "params": params,
        "meta": {
            "traces": str(traces.meta.get("prompts")),
            "models": traces.meta.get("models", {}),
            "policy_traced": traces.meta.get("policy"),
            "train_problems": sorted(train_p),
            "held_out_problems": sorted(test_p),
            "held_out": {k: asdict(v) for k, v in held.items()},
            "seed": seed,
        },
    }
    model = parse(json.loads(json.dumps(obj)))  # the file as it will be read back
    ours = np.array([model.predict(x) for x in ds.X.tolist()])
    if not np.allclose(ours, predict(ds.X), atol=1e-6):
        raise ProbeError("the exported weights do not reproduce scikit-learn's predictions (export bug)")
    order = np.argsort(-np.asarray(importance))
    everything = np.asarray([vector(s) for r, s in traces.signals() if not r.deferred], dtype=float)
    p_all, margins = predict(everything), everything[:, FEATURES.index("margin")]
    report = Report(kind, source, str(traces.path), len(train_p), len(test_p), int(tr.sum()),
                    round(float(ds.y[tr].mean()), 4), held,
                    [(FEATURES[i], round(float(importance[i]), 4)) for i in order[:10]],
                    {f"{r:g}": round(float(np.quantile(p_all, 1 - r)), 4) for r in RATES},
                    {f"{t:g}": round(float((margins < t).mean()), 4) for t in MARGIN_TAUS})  # fmt: skip
    obj["meta"]["tau_for_rate"], obj["meta"]["margin_rate"] = report.tau_for_rate, report.margin_rate
    return obj, report


def save(obj: dict, path: str | Path) -> Path:
    """Write a weights file atomically (a reader never sees half a file)."""
    p = Path(path)
    atomic_write(p, json.dumps(obj, indent=None, separators=(",", ":")) + "\n")
    return p
