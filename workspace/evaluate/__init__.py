"""Evaluations: a policy on a prompt set → decodes → judge → a record → f_weak, utility, recovery (ARCHITECTURE.md
“What is measured”, “Records and findings”).

Phases, each fully concurrent and each appended to a record as it goes:
1. **Baselines** (`baselines.py`; once per models, judge, prompt set and decoding settings; `records/baselines/`):
   the strong model's free-running greedy answers (the *reference*), the weak model's own answers (never-defer),
   and the judge's preference of each weak answer over its reference (→ U_weak).
2. **Decode** the candidate policy on every prompt, then **judge** each candidate against its reference, both
   orders (`runs.py`; `records/evaluations/`). A candidate identical to the reference is 0.5 and one identical to
   the weak answer takes the weak preference, without calls.
3. **Read** (`results.py`): numbers recomputed from the recorded generations and preferences, the certification
   rule (`stats.certify`), the offline checks of the record (`records.verify.check`) and why it is not certified.

`phases.py` runs one phase (decode, unit tests, judge) over a prompt set and appends its events, for baselines
and candidate runs alike; `sweeps.py` evaluates every point of a policy grid (the CLI's and the notebook's one sweep
loop); `search.py` searches a grid by successive halving on one split and evaluates its finalists on a held-out
one; `setup.py` holds the settings and the servers; `audit.py` asks the servers again (judge drift, replay);
`exact.py` checks that never and always reproduce the models' own answers on the servers in use (`cdw check --exact`).
"""

from ..engine import EngineSettings
from .audit import JudgeDrift, Replay, judge_check, replay
from .baselines import baselines_id, ensure_baselines
from .exact import ExactReport, check_exact
from .phases import Progress
from .results import Baselines, Evaluation, Example, list_evaluations, load_evaluation, read_baselines
from .runs import evaluate, evaluate_generations, evaluation_id, generate, policy_identity, recorded_settings
from .search import Search, SearchError, SearchPlan, rederive, search
from .setup import EvalSettings, EvaluationError, Setup
from .sweeps import SweepPoint, sweep, sweep_points

__all__ = [
    "Baselines", "EngineSettings", "EvalSettings", "Evaluation", "EvaluationError", "Example", "ExactReport",
    "JudgeDrift", "Progress", "Replay", "Setup", "SweepPoint", "baselines_id", "check_exact", "ensure_baselines",
    "evaluate", "evaluate_generations", "evaluation_id", "generate", "judge_check", "list_evaluations",
    "load_evaluation", "policy_identity", "read_baselines", "recorded_settings", "rederive", "replay", "search",
    "Search", "SearchError", "SearchPlan", "sweep", "sweep_points",
]  # fmt: skip
