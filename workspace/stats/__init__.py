"""The statistics of an evaluation: winrates, recovery, bootstrap intervals and certification.

Numbers in, numbers out: no I/O, no servers. One module per job:

- ``glm``: the length-controlled GLM winrates (alpaca_eval's penalised fit, and the unpenalised MLE);
- ``rule``: the certification rule both scorings share (bar, floor, recovery, the bootstrap lower bound, reasons);
- ``judged``: judged evaluations (``summarize``, ``certify``);
- ``passrate``: evaluations scored by unit tests (``summarize_pass``, ``certify_pass``);
- ``stopping``: early stopping, the rule that ends a candidate's evaluation once it cannot reach a target recovery
  (``StopRule``, ``Look``, ``look_order``, ``recovery_upper``);
- ``base``: the error, input checks, intervals and result types they all use.

The public API is re-exported here: ``from workspace.stats import certify``.
"""

from .base import Certification, Interval, StatsError, Summary
from .glm import lc_winrate_mle, length_controlled_winrate, winrate
from .judged import PairedSample, certify, summarize
from .passrate import PassSample, certify_pass, summarize_pass
from .rule import BAR, FLOOR, recovery
from .stopping import Look, StopRule, look_order, recovery_upper

__all__ = [
    "BAR",
    "FLOOR",
    "Certification",
    "Interval",
    "Look",
    "PairedSample",
    "StatsError",
    "StopRule",
    "Summary",
    "PassSample",
    "certify",
    "certify_pass",
    "lc_winrate_mle",
    "look_order",
    "length_controlled_winrate",
    "recovery",
    "recovery_upper",
    "summarize",
    "summarize_pass",
    "winrate",
]
