"""Deferral policies: the protocol (`protocol`), the registry of built-in families (`registry`, `families`, `probe`),
spec strings (`spec`) and stable identities (`identity`).

load_policy("margin(tau=0.05, span=sentence)")
load_policy("hysteresis(entropy(tau=1.5), k=2)")
load_policy("my_policies/probe.py:Probe(alpha=0.3)")     # a class in a file
load_policy("mypackage.policies:Probe")                   # a class in an importable module
expand_spec("margin(tau=[0.02, 0.05])")                   # -> ["margin(tau=0.02)", "margin(tau=0.05)"]
"""

from .protocol import Action, Decision, Policy, SpanRule, TokenSignal, as_decision, constructor_spec, parse_span
from .spec import PolicyError, canonical_spec, expand_spec, family, load_policy, policy_file
from .structure import Where

__all__ = [
    "Action", "Decision", "Policy", "PolicyError", "SpanRule", "TokenSignal", "Where", "as_decision",
    "canonical_spec", "constructor_spec", "expand_spec", "family", "load_policy", "parse_span", "policy_file",
]  # fmt: skip
