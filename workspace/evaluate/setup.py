"""What an evaluation runs with: its settings (data, part of every record's identity) and its three servers."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime

from servers.settings import PROJECT_ROOT

from ..benchmarks import DEFAULT, Benchmark, DataError
from ..benchmarks import get as get_benchmark
from ..cache import CallCache
from ..client import GREEDY, ClientSettings, Continuations, ModelClient
from ..endpoints import resolve_endpoint
from ..engine import EngineSettings, Models
from ..judge import JudgeSettings
from ..records.schema import CodeVersion


class EvaluationError(RuntimeError):
    """An evaluation cannot run or be read (no such record, damaged baselines, bad arguments)."""


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides the policy that decides an evaluation's numbers; part of the record's identity."""

    engine: EngineSettings = field(default_factory=EngineSettings)
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    n_boot: int = 1000  # bootstrap resamples (intervals only; not part of the identity)
    seed: int = 0
    benchmark: str = DEFAULT  # what answers are scored by (workspace/benchmarks/)

    @property
    def bench(self) -> Benchmark:
        return get_benchmark(self.benchmark)

    @property
    def needs_judge(self) -> bool:
        """Whether answers are judged pairwise (else scored alone, by the benchmark: no judge is asked)."""
        return self.bench.needs_judge

    def identity(self) -> dict:
        return {"engine": self.engine.identity(), **self.bench.settings_identity(self.judge)}

    @classmethod
    def from_identity(cls, identity: dict, benchmark: str | None, n_boot: int = 1000, seed: int = 0) -> EvalSettings:
        """The settings a record was made with, from its header's settings (engine settings, the scorer's identity)
        and benchmark (None: a record made before benchmarks existed)."""
        bench = get_benchmark(benchmark)
        try:
            judge = bench.judge_settings(identity)
        except DataError as e:
            raise EvaluationError(str(e)) from e
        return cls(EngineSettings(**identity["engine"]), judge or JudgeSettings(), n_boot=n_boot, seed=seed,
                   benchmark=bench.name)  # fmt: skip


@dataclass
class Setup:
    """The three servers an evaluation talks to, and the call cache in front of them."""

    weak: ModelClient
    strong: ModelClient
    judge: ModelClient

    @classmethod
    def from_endpoints(
        cls, urls: dict[str, str | None] | None = None, cache: CallCache | None = None,
        settings: ClientSettings | None = None, reuse: Continuations | None = None,
    ) -> Setup:  # fmt: skip
        """Clients for each role found as `resolve_endpoint` finds them, all sharing one call cache and one store
        of known continuations (`workspace.reuse`; None: every request goes to its server or the call cache)."""
        urls = urls or {}
        return cls(*(ModelClient(resolve_endpoint(r, urls.get(r)), settings, cache, reuse)
                     for r in ("weak", "strong", "judge")))  # fmt: skip

    @property
    def models(self) -> Models:
        return Models(self.weak, self.strong)

    async def names(self, judge: bool = True) -> dict[str, str]:
        """Served model name per role (from the endpoint when known: no request); `judge=False` leaves the judge
        out (a benchmark scored by tests never asks it)."""
        clients = (self.weak, self.strong, self.judge)[: 3 if judge else 2]
        got = await asyncio.gather(*(c.model() for c in clients))
        return dict(zip(("weak", "strong", "judge"), got, strict=False))

    async def decoding(self, judge: bool = True) -> dict:
        """How this setup decodes, for the record's header: the sampling every request states, each role's fixed
        chat-template arguments, and what `cdw serve` recorded of each server's engine (nothing for a server given
        by URL)."""
        roles = (("weak", self.weak), ("strong", self.strong), ("judge", self.judge))[: 3 if judge else 2]
        kwargs = await asyncio.gather(*(c.template_kwargs() for _, c in roles))
        return {"request": dict(GREEDY),
                "chat_template_kwargs": {role: kw for (role, _), kw in zip(roles, kwargs, strict=True) if kw},
                "servers": {role: dict(c.endpoint.engine) for role, c in roles if c.endpoint.engine}}  # fmt: skip

    async def servers(self, judge: bool = True) -> dict[str, str]:
        """Server version per role, for the record (best effort)."""
        out = {}
        for role, c in (("weak", self.weak), ("strong", self.strong), ("judge", self.judge))[: 3 if judge else 2]:
            reps = await c.status()
            out[role] = ", ".join(f"{r.url} vllm {r.version}" for r in reps)
        return out

    async def close(self) -> None:
        await asyncio.gather(self.weak.close(), self.strong.close(), self.judge.close())

    async def __aenter__(self) -> Setup:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def code_version() -> CodeVersion:
    """The git commit of this workspace and whether its tree had uncommitted changes (None when not a checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        # Records and findings are what runs write: they do not make the code dirty.
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!records",
                                 ":!findings"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10,
                                check=True).stdout  # fmt: skip
        return CodeVersion(commit, bool(status.strip()))
    except (OSError, subprocess.SubprocessError):
        return CodeVersion(None, None)
