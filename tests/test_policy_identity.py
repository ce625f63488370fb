"""A policy's identity is the code that decides its behaviour (workspace/policies/identity.py): editing anything
else — another family, a comment, a docstring, the file's place — keeps it; editing what it runs changes it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from workspace.policies import families, load_policy
from workspace.policies.identity import code_identity

FAMILIES = Path(families.__file__).read_text()
HELPER = """

def _halve(x):
    return x / 2


class Halved(Margin):
    def score(self, s):
        return _halve(super().score(s))
"""


def _module(tmp_path: Path, name: str, text: str):
    """Import `text` as a fresh module from its own file (a stand-in for an edited or moved families.py)."""
    path = tmp_path / name / "families_copy.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    # `register` would refuse a second class under a built-in name: the copies register nothing.
    text = text.replace("@register(", "@(lambda name: (lambda cls: cls))(")
    text = text.replace("from .", "from workspace.policies.")
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"cdw_identity_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_unrelated_edits_and_moves_keep_a_policys_identity(tmp_path):
    base = _module(tmp_path, "base", FAMILIES + HELPER)
    # Another family added, a comment and another class's docstring edited, the file moved elsewhere.
    edited = FAMILIES.replace("# ---------------------------------------------------------------- wrappers",
                              "# wrappers: policies over policies")  # fmt: skip
    edited = edited.replace('"""Defer when p1 < tau', '"""Defers when p1 is below tau')
    edited = edited.replace('    """Defer when p1 - p2 < tau (the weak model hesitates between two tokens)."""\n', "")
    other = _module(tmp_path, "moved/elsewhere", edited + HELPER + "\n\nclass NewFamily(Never):\n    top_k = 3\n")
    for name in ("Margin", "Never", "Always", "Hysteresis", "Budget", "Halved"):
        assert code_identity(getattr(base, name)) == code_identity(getattr(other, name)), name
    assert code_identity(other.NewFamily) != code_identity(other.Never)


def test_edits_to_what_a_policy_runs_change_its_identity(tmp_path):
    base = _module(tmp_path, "base", FAMILIES + HELPER)
    body = _module(tmp_path, "body", FAMILIES.replace("return s.p1 - s.p2", "return s.p1 - 2 * s.p2") + HELPER)
    helper = _module(tmp_path, "helper", FAMILIES + HELPER.replace("x / 2", "x / 3"))
    parent = _module(tmp_path, "parent", FAMILIES.replace("fire = v < self.tau if", "fire = v <= self.tau if") + HELPER)
    assert code_identity(body.Margin) != code_identity(base.Margin)
    assert code_identity(body.Entropy) == code_identity(base.Entropy)  # same file, untouched class
    assert code_identity(helper.Halved) != code_identity(base.Halved)  # a helper it calls
    assert code_identity(helper.Margin) == code_identity(base.Margin)
    assert code_identity(parent.Margin) != code_identity(base.Margin)  # a base class's code
    assert code_identity(parent.Never) == code_identity(base.Never)


def test_arguments_inner_policies_and_weights_are_part_of_the_record_identity():
    m = load_policy("margin(tau=0.1, span=newline)")
    assert m.source_hash() == load_policy("margin(tau=0.3)").source_hash()  # arguments live in the spec
    wrapped = load_policy("hysteresis(margin(tau=0.1), k=2)")
    assert wrapped.source_hash() != load_policy("hysteresis(entropy(tau=1.0), k=2)").source_hash()
    assert wrapped.source_hash() != load_policy("hysteresis(margin(tau=0.1), k=2)").inner.source_hash()
    a = load_policy("probe(path='probes/humaneval-logistic.json')").source_hash()
    assert a != load_policy("probe(path='probes/humaneval-trees.json')").source_hash()
