"""The learned router as a policy: `probe(path="probes/x.json", tau=0.5, span=newline)`.

It reads a weights file written by `cdw probe train` (plain JSON: numbers and names, never pickle — agents share
these files and a pickle runs code when loaded), computes the features of `features.py` for each weak token and
defers when the predicted probability that the token is harmful exceeds `tau`.

Two model kinds, both evaluated here with a few lines of arithmetic (no scikit-learn at decode time):
- `logistic`: p = sigmoid(((x - mean) / scale) · coef + intercept)
- `trees` (gradient-boosted regression trees): p = sigmoid(init + rate · Σ tree(x)); each tree is arrays
  `feature`, `threshold`, `left`, `right`, `value` (a leaf has feature −1; x[feature] <= threshold goes left).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from servers.settings import PROJECT_ROOT

from .features import FEATURES, vector
from .protocol import Action, Decision, Policy, SpanRule, TokenSignal, parse_span
from .registry import register

FORMAT = "cdw-probe/1"


class ProbeFileError(ValueError):
    """A weights file that cannot be used (not JSON, another format, features this code does not compute)."""


@dataclass(frozen=True)
class Tree:
    feature: tuple[int, ...]
    threshold: tuple[float, ...]
    left: tuple[int, ...]
    right: tuple[int, ...]
    value: tuple[float, ...]

    def __call__(self, x: list[float]) -> float:
        i = 0
        while self.feature[i] >= 0:
            i = self.left[i] if x[self.feature[i]] <= self.threshold[i] else self.right[i]
        return self.value[i]


@dataclass(frozen=True)
class ProbeModel:
    """Weights read from a file: `predict(x)` is the probability that a token with features x is harmful."""

    kind: str  # logistic | trees
    features: tuple[str, ...]
    top_k: int  # logprobs per token the traces had (the policy asks for as many)
    label_source: str
    params: dict
    meta: dict  # what it was trained on and how well it did (shown, never used to predict)

    def raw(self, x: list[float]) -> float:
        p = self.params
        if self.kind == "logistic":
            terms = zip(x, p["mean"], p["scale"], p["coef"], strict=True)
            return p["intercept"] + sum((v - m) / s * c for v, m, s, c in terms)
        return p["init"] + p["learning_rate"] * sum(t(x) for t in p["trees"])

    def predict(self, x: list[float]) -> float:
        z = self.raw(x)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _numbers(v, what: str, n: int | None = None, typ=float) -> tuple:
    if not isinstance(v, list) or (n is not None and len(v) != n):
        raise ProbeFileError(f"{what}: expected a list of {n if n is not None else ''} numbers")
    try:
        out = tuple(typ(x) for x in v)
    except (TypeError, ValueError):
        raise ProbeFileError(f"{what}: not all numbers") from None
    if any(isinstance(x, bool) for x in v) or (typ is float and not all(math.isfinite(x) for x in out)):
        raise ProbeFileError(f"{what}: not all finite numbers")
    return out


def parse(obj: dict) -> ProbeModel:
    """A ProbeModel from a weights file's JSON object, checked field by field (nothing in it is executed)."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ProbeFileError(f"not a probe weights file (format must be {FORMAT!r})")
    features = tuple(obj.get("features") or ())
    if features != FEATURES:
        missing = [f for f in features if f not in FEATURES]
        raise ProbeFileError(
            f"the probe was trained on other features ({missing or 'another order'}); this code computes "
            f"{list(FEATURES)}: train it again on these traces"
        )
    kind, p, n = obj.get("kind"), obj.get("params") or {}, len(FEATURES)
    if kind == "logistic":
        params = {"mean": _numbers(p.get("mean"), "mean", n), "scale": _numbers(p.get("scale"), "scale", n),
                  "coef": _numbers(p.get("coef"), "coef", n), "intercept": float(p.get("intercept", 0.0))}  # fmt: skip
        if any(s == 0 for s in params["scale"]):
            raise ProbeFileError("scale: a zero would divide by zero")
    elif kind == "trees":
        trees = []
        for j, t in enumerate(p.get("trees") or []):
            if not isinstance(t, dict):
                raise ProbeFileError(f"tree {j}: not an object")
            feat = _numbers(t.get("feature"), f"tree {j} feature", typ=int)
            m = len(feat)
            tree = Tree(feat, _numbers(t.get("threshold"), f"tree {j} threshold", m),
                        _numbers(t.get("left"), f"tree {j} left", m, int),
                        _numbers(t.get("right"), f"tree {j} right", m, int),
                        _numbers(t.get("value"), f"tree {j} value", m))  # fmt: skip
            for i in range(m):  # children must point forward: no cycles, no index out of range
                if feat[i] >= n or (feat[i] >= 0 and not (i < tree.left[i] < m and i < tree.right[i] < m)):
                    raise ProbeFileError(f"tree {j}: node {i} is malformed")
            trees.append(tree)
        if not trees:
            raise ProbeFileError("trees: none")
        params = {"init": float(p.get("init", 0.0)), "learning_rate": float(p.get("learning_rate", 0.1)),
                  "trees": tuple(trees)}  # fmt: skip
    else:
        raise ProbeFileError(f"unknown probe kind {kind!r}; logistic or trees")
    top_k = obj.get("top_k")
    if not isinstance(top_k, int) or top_k < 2:
        raise ProbeFileError("top_k: the traces' logprobs per token, an integer >= 2")
    return ProbeModel(kind, features, top_k, str(obj.get("label_source", "")), params, obj.get("meta") or {})


def resolve_path(path: str | Path) -> Path:
    """A weights path as given (absolute, or relative to the working folder), else relative to the project."""
    p = Path(path)
    if p.suffix != ".json":
        raise ProbeFileError(f"{path}: a probe's weights are a .json file (written by `cdw probe train`)")
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


def load(path: str | Path) -> ProbeModel:
    """Read a weights file: JSON only, so loading it cannot run code."""
    p = resolve_path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProbeFileError(f"{path}: no such weights file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProbeFileError(f"{path}: not a JSON weights file ({type(e).__name__}: {e})") from None
    return parse(obj)


@register("probe")
class Probe(Policy):
    """Defer when the learned probability that this weak token is harmful exceeds `tau`."""

    def __init__(self, path: str, tau: float = 0.5, span: str | SpanRule = "newline", max_span: int = 64):
        self.path, self.tau = str(path), float(tau)
        self.span = parse_span(span, max_span)
        self.model = load(path)
        self.top_k = self.model.top_k
        self._digest = hashlib.sha256(resolve_path(path).read_bytes()).hexdigest()[:16]

    def decide(self, s: TokenSignal) -> Decision:
        p = self.model.predict(vector(s))
        return Decision(Action.DEFER if p > self.tau else Action.CONTINUE, p)

    def source_hash(self) -> str:
        """The code's hash and the weights file's: other weights at the same path are another policy."""
        return hashlib.sha256(f"{super().source_hash()}:{self._digest}".encode()).hexdigest()[:16]

    def fresh(self) -> Probe:
        return self  # no per-decode state; sharing the parsed weights saves a deep copy per decode
