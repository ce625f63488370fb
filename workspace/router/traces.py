"""Traces: per weak token, what a policy could read and what happened, written as JSON Lines.

A traces folder (default `.cdw/traces/<benchmark>-<split>/`, under CDW_HOME) holds:

- `meta.json` — how the traces were made: benchmark, prompt set, policy, models, engine settings, top-k.
- `decodes.jsonl` — one line per problem: `problem`, `instruction`, `answer` (the decoded text), `finish_reason`,
  `f_weak`. A problem is done (and skipped on resume) once its line is here.
- `tokens.jsonl` — one line per weak token the policy was shown, in order:

  | column | meaning | R2R / AutoJudge |
  |---|---|---|
  | `problem` | prompt id (`HumanEval/12`) | R2R `data_id` |
  | `position` | index among the answer's weak tokens (strong text counted in weak tokens) | R2R `token_id` |
  | `char_start`, `char_end` | the token's characters in `answer`: `answer[char_start:char_end]` | — |
  | `token_id`, `token` | the weak token and its text as the server decodes it alone | R2R `token` ids |
  | `logprob` | log p of the chosen (greedy) token | — |
  | `top_logprobs` | the top-k logprobs, most likely first | R2R `top_logits` (logprobs, not logits) |
  | `since_handoff` | weak tokens since the last strong span | — |
  | `prompt_tokens` | the instruction's length in weak tokens | — |
  | `deferred` | the policy handed off at this token (it is not in the answer) | — |

  A row can be zero-width (`char_start == char_end`): the token deferred at, and the end-of-sequence token, whose
  `token` is the server's text for it (`<|im_end|>` on vLLM) although it adds nothing to the answer.

  Features (`workspace/policies/features.py`) are computed from these columns, never stored, so a trace file
  made today feeds a feature list added tomorrow.
- `labels-<source>.jsonl` — written by `workspace.router.labels` (one line per labelled position, joined on
  `problem` + `position`; `label` 1 = the weak token is harmful, R2R's "divergent", AutoJudge's "important").

Converting to R2R's dataset is a rename of `problem`/`position` to `data_id`/`token_id` plus the label column;
to AutoJudge's mined-token table, keep rows with an `outcome` label.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from servers.settings import paths

from ..benchmarks import DEFAULT, PromptSet
from ..engine import Decode, EngineSettings, Models, decode_many
from ..fileio import DamagedLineError, append_lines, parse_lines
from ..policies import Policy, TokenSignal, load_policy


def traces_dir() -> Path:
    """Where traces go by default: `<CDW_HOME>/traces` (`.cdw/traces` in a checkout)."""
    return paths().home / "traces"


class TraceError(RuntimeError):
    """Traces that cannot be made or read (a damaged file, settings that differ from the folder's)."""


class TokenRow(msgspec.Struct, frozen=True):
    """One weak token a policy was shown (the columns of `tokens.jsonl`)."""

    problem: str
    position: int
    char_start: int
    char_end: int
    token_id: int
    token: str
    logprob: float
    top_logprobs: list[float]
    since_handoff: int
    prompt_tokens: int
    deferred: bool = False

    def signal(self, answer: str) -> TokenSignal:
        """The TokenSignal the policy saw (the answer before this token rebuilt from the decode's text)."""
        return TokenSignal(self.token_id, self.token, self.logprob, tuple(self.top_logprobs), self.position,
                           answer[: self.char_start], self.since_handoff, self.prompt_tokens)  # fmt: skip


class DecodeRow(msgspec.Struct, frozen=True):
    """One problem's decode (the lines of `decodes.jsonl`)."""

    problem: str
    instruction: str
    answer: str
    finish_reason: str
    f_weak: float | None
    error: str | None = None


@dataclass(frozen=True)
class Traces:
    """A traces folder read back: its meta, its decodes by problem and its token rows (in file order)."""

    path: Path
    meta: dict
    decodes: dict[str, DecodeRow]
    tokens: tuple[TokenRow, ...]

    def rows_of(self, problem: str) -> list[TokenRow]:
        return [r for r in self.tokens if r.problem == problem]

    def signals(self) -> Iterable[tuple[TokenRow, TokenSignal]]:
        for r in self.tokens:
            yield r, r.signal(self.decodes[r.problem].answer)


def rows_from_signals(problem: str, signals: Sequence[TokenSignal], d: Decode) -> list[TokenRow]:
    """Token rows for one decode: the last showing of each position (a draft ending inside a character is drafted
    again). A kept token ends where the next one starts (or where its weak segment ends), so the kept rows tile the
    weak text exactly; the token a policy deferred at starts where the strong span does and is zero-width."""
    last: dict[int, TokenSignal] = {}
    for s in signals:
        last[s.position] = s
    ordered = [last[p] for p in sorted(last)]
    strong_starts = {at for at, seg in _segment_starts(d) if seg.author == "strong"}
    rows = []
    for j, s in enumerate(ordered):
        start = len(s.text_so_far)
        nxt = len(ordered[j + 1].text_so_far) if j + 1 < len(ordered) else len(d.text)
        deferred = start in strong_starts and (j + 1 == len(ordered) or nxt != start)
        end = start if deferred else min(max(nxt, start), _weak_end(start, d))
        rows.append(TokenRow(problem, s.position, start, end, s.token_id, s.text, s.logprob, list(s.top),
                             s.since_handoff, s.prompt_tokens, deferred))  # fmt: skip
    return rows


def _segment_starts(d: Decode):
    at = 0
    for seg in d.segments:
        yield at, seg
        at += len(seg.text)


def _weak_end(start: int, d: Decode) -> int:
    """The end of the weak segment holding character `start` (a token never runs into a strong span)."""
    for at, seg in _segment_starts(d):
        if at <= start < at + len(seg.text):
            return at + len(seg.text)
    return len(d.text)


# ---------------------------------------------------------------- writing and reading


def read_jsonl(path: Path, typ: type[msgspec.Struct]) -> list:
    """Read a JSON Lines file of `typ`, skipping a torn last line (a crash mid-write: that problem is simply not
    done yet); a bad line before it is damage and raises TraceError naming the line."""
    try:
        objs, _, _ = parse_lines(path, path.read_bytes())
        return [msgspec.convert(obj, typ) for obj in objs]
    except FileNotFoundError:
        return []
    except (DamagedLineError, msgspec.ValidationError) as e:
        raise TraceError(f"{path}: {e}") from None


def read(path: str | Path) -> Traces:
    """A traces folder, with rows of unfinished problems left out and repeated rows (a resumed problem) kept once."""
    p = Path(path)
    meta_file = p / "meta.json"
    if not meta_file.exists():
        raise TraceError(f"{p} is not a traces folder (no meta.json); make one with `cdw traces collect`")
    meta = json.loads(meta_file.read_text())
    decodes = {d.problem: d for d in read_jsonl(p / "decodes.jsonl", DecodeRow)}
    seen: dict[tuple[str, int], TokenRow] = {}
    for r in read_jsonl(p / "tokens.jsonl", TokenRow):
        if r.problem in decodes:
            seen[(r.problem, r.position)] = r
    return Traces(p, meta, decodes, tuple(seen.values()))


def default_dir(benchmark: str, prompts: PromptSet) -> Path:
    """`.cdw/traces/humaneval-train` for the prompt set "humaneval:train" (names made safe for a folder)."""
    name = prompts.name if prompts.name.startswith(benchmark) else f"{benchmark}-{prompts.name}"
    return traces_dir() / name.replace(":", "-").replace("/", "_").replace("[", "").replace("]", "")


async def collect(
    prompts: PromptSet,
    models: Models,
    out: str | Path,
    *,
    policy: Policy | str = "never",
    settings: EngineSettings | None = None,
    benchmark: str = DEFAULT,
    model_names: dict[str, str] | None = None,
    progress: bool = True,
    on_problem: Callable[[str, Decode], None] | None = None,
) -> Traces:
    """Decode `prompts` under `policy` and write every weak token it was shown (resumable: problems already in
    `out` are skipped). A folder made with other settings is refused, not mixed.

    `never` (the default) traces the weak model's own answers; drafts ask for `settings.top_k` logprobs."""
    settings = settings or EngineSettings()
    pol = _AllLogprobs(load_policy(policy))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "cdw-traces/1",
        "benchmark": benchmark,
        "prompts": prompts.name,
        "prompts_hash": prompts.hash,
        "policy": pol.inner.describe(),
        "top_k": settings.top_k,
        "engine": settings.identity(),
        "models": model_names or {},
    }
    meta_file = out / "meta.json"
    if meta_file.exists():
        old = json.loads(meta_file.read_text())
        differ = {k for k in meta if k != "models" and old.get(k) != meta[k]}
        if model_names and old.get("models") and old["models"] != model_names:
            differ.add("models")
        if differ:
            raise TraceError(f"{out} holds traces made with other {', '.join(sorted(differ))}; choose another --out")
    else:
        meta_file.write_text(json.dumps(meta, indent=1))
    done = {d.problem for d in read_jsonl(out / "decodes.jsonl", DecodeRow)}
    todo = [p for p in prompts.prompts if p.id not in done]
    shown: dict[int, list[TokenSignal]] = {i: [] for i in range(len(todo))}
    enc = msgspec.json.Encoder()

    def on_signal(i: int, s: TokenSignal) -> None:
        shown[i].append(s)

    def on_done(i: int, d: Decode) -> None:
        p = todo[i]
        if d.error is None:  # a failed decode leaves no rows: it is traced again on the next run
            append_lines(out / "tokens.jsonl", (enc.encode(r) for r in rows_from_signals(p.id, shown[i], d)))
            row = DecodeRow(p.id, p.instruction, d.text, d.finish_reason, d.f_weak)
            append_lines(out / "decodes.jsonl", [enc.encode(row)])
        shown.pop(i, None)
        if on_problem is not None:
            on_problem(p.id, d)

    if todo:
        await decode_many([p.instruction for p in todo], pol, models, settings, progress=progress,
                          on_done=on_done, on_signal=on_signal)  # fmt: skip
    return read(out)


class _AllLogprobs(Policy):
    """The traced policy, with drafts asking for every logprob the engine allows (features read top-k)."""

    top_k = None

    def __init__(self, inner: Policy):
        self.inner = inner
        self.span = inner.span

    def decide(self, s: TokenSignal):
        return self.inner.decide(s)

    def on_handoff(self, strong_text: str) -> None:
        self.inner.on_handoff(strong_text)

    def describe(self) -> str:
        return self.inner.describe()
