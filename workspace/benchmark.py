"""Benchmarks, as data: what an evaluation runs on, how it prompts, how it scores and what counts as canonical.

- `alpaca_eval` — AlpacaEval instructions as they are; scored by the pairwise judge against the strong model's
  own answer (utility = length-controlled winrate, U_strong = 0.5). Canonical: the canonical 100 with the
  `[canonical]` models of `servers/presets.toml` (the paper preset) and the default judge.
- `humaneval` — the 164 HumanEval problems, each a chat instruction asking for the completed function in one code
  block (`workspace/humaneval.py`); scored by running HumanEval's unit tests on the answer's code in the sandbox
  (`workspace/sandbox.py`), no judge (utility = pass@1, greedy; U_strong = the strong model's own pass rate).
  Canonical: all 164 problems, with the models of the `cpu` preset (on a CPU) or of the `paper` preset (GPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import data


@dataclass(frozen=True)
class Benchmark:
    name: str
    scoring: str  # "judge" (pairwise preference vs the reference) | "tests" (unit tests in the sandbox)
    canonical_set: str  # the prompt-set name an evaluation must run on to count (certify, frontier)
    max_tokens: int  # the default answer budget
    description: str
    # Model pairs a canonical result may come from, by preset (role -> served model name); empty: the catalog's
    # `[canonical]` models (alpaca_eval, whose judge is also fixed).
    canonical_models: dict[str, dict[str, str]] = field(default_factory=dict)
    test_timeout_s: float = 10.0  # tests: wall-clock limit of one program

    def prompts(self, spec: str | int | None = None, files: bool = True) -> data.PromptSet:
        """This benchmark's prompt set: its canonical set (None), its first N problems (an int or "N"), a named
        set or a file (judge benchmarks only: a tests benchmark's problems carry tests no file provides)."""
        if self.scoring == "judge":
            return data.resolve(self.canonical_set if spec is None else spec, files=files)
        from . import humaneval

        full = humaneval.prompt_set()
        if spec is None or spec == self.name:
            return full
        s = str(spec).strip()
        count = s.removeprefix(f"{self.name}:")
        if isinstance(spec, int) or count.isdigit():
            return full.head(int(count))
        if count in humaneval.SPLITS:
            return humaneval.split_set(count)
        raise data.DataError(
            f"{self.name}: prompts {spec!r}: use {self.name!r}, a number N, '{self.name}:N' or a half "
            f"({', '.join(f'{self.name}:{h}' for h in humaneval.SPLITS)})"
        )

    def identity(self) -> dict:
        """What a record's settings say about scoring (tests only: the judge's prompt is the judge's identity)."""
        from . import humaneval

        return {"benchmark": self.name, "timeout_s": self.test_timeout_s, "extraction": humaneval.EXTRACTION,
                "instruction": humaneval.INSTRUCTION}  # fmt: skip


BENCHMARKS = {
    "alpaca_eval": Benchmark(
        "alpaca_eval", "judge", "canonical", 256,
        "AlpacaEval instructions, judged pairwise against the strong model's own answer",
    ),
    "humaneval": Benchmark(
        "humaneval", "tests", "humaneval", 512,
        "HumanEval's 164 Python problems, scored by their unit tests (pass@1, greedy)",
        canonical_models={
            "cpu": {"weak": "smollm2-135m-instruct", "strong": "qwen2.5-coder-0.5b-instruct"},
            "paper": {"weak": "meta-llama/Llama-3.2-1B-Instruct", "strong": "Qwen/Qwen2.5-7B-Instruct"},
        },
    ),
}  # fmt: skip
DEFAULT = "alpaca_eval"


def get(name: str | None) -> Benchmark:
    """A benchmark by name (None: alpaca_eval); DataError naming the known ones otherwise."""
    b = BENCHMARKS.get(name or DEFAULT)
    if b is None:
        raise data.DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return b
