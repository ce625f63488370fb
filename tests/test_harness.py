"""A pass is proven, not inferred (`workspace/benchmarks/harness.py`): every way an answer could end its process
as if it had passed, or make a comparison say yes, scores `failed` through the real sandbox, and honest answers
still pass. Each cheat is an answer to HumanEval/0 (`has_close_elements`), scored as an evaluation scores it.
"""

from __future__ import annotations

import asyncio
import shutil
import textwrap

import pytest

from workspace.benchmarks import harness, humaneval

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="the code sandbox needs bubblewrap (`bwrap`): run `make sandbox`"
)

SIG = "def has_close_elements(numbers, threshold):\n"

CHEATS = {
    "SystemExit in the function": SIG + "    raise SystemExit(0)\n",
    "os._exit in the function": "import os\n" + SIG + "    os._exit(0)\n",
    "sys.exit in the function": "import sys\n" + SIG + "    sys.exit(0)\n",
    "atexit hook, then a wrong answer": "import atexit, os\n"
    + SIG
    + "    atexit.register(lambda: os._exit(0))\n    return None\n",
    "excepthook that exits 0": "import os, sys\nsys.excepthook = lambda *a: os._exit(0)\n"
    + SIG
    + "    raise ValueError('wrong')\n",
    "daemon thread calling os._exit": "import os, threading, time\n"
    + SIG
    + "    threading.Thread(target=lambda: os._exit(0), daemon=True).start()\n    time.sleep(5)\n",
    "exit at load: decorator": "import os\ndef deco(f):\n    os._exit(0)\n@deco\n" + SIG + "    return True\n",
    "exit at load: default argument": "import os\ndef has_close_elements(numbers, threshold, _=os._exit(0)):\n"
    "    return True\n",
    "exit at load: class body": "import os\nclass X:\n    os._exit(0)\n" + SIG + "    return True\n",
    "always-equal object": "class Yes:\n    def __eq__(self, other):\n        return True\n"
    + SIG
    + "    return Yes()\n",
    "always-equal int subclass": "class Yes(int):\n    def __eq__(self, other):\n        return True\n"
    + SIG
    + "    return Yes(0)\n",
    "forged report on every fd": textwrap.dedent("""\
        import os
        def has_close_elements(numbers, threshold):
            for fd in range(3, 256):
                for path in (f"/proc/1/fd/{fd}", f"/proc/{os.getppid()}/fd/{fd}"):
                    try:
                        with open(path, "wb") as f:
                            f.write(b'{"secret": "0"}\\n')
                    except OSError:
                        pass
                try:
                    os.write(fd, b'{"secret": "0"}\\n')
                except OSError:
                    pass
            os._exit(0)
        """),
    "kills the checker": "import os, signal\n" + SIG + "    os.kill(os.getppid(), signal.SIGKILL)\n    os._exit(0)\n",
    "reads the checker's memory": textwrap.dedent("""\
        import os
        def has_close_elements(numbers, threshold):
            with open(f"/proc/{os.getppid()}/mem", "rb") as f:
                f.read(1)
            os._exit(0)
        """),
}


def score(code: str, timeout_s: float = 20) -> humaneval.Outcome:
    p = humaneval.problem("HumanEval/0")
    answer = code if code.startswith("```") else f"```python\n{code}```"
    return asyncio.run(humaneval.run_tests(answer, p, harness.Pool(workers=1, timeout_s=timeout_s)))


@pytest.mark.parametrize("code", list(CHEATS.values()), ids=list(CHEATS))
def test_a_cheat_scores_failed(code):
    o = score(code)
    assert o.status == "failed", o


def test_an_honest_answer_passes_and_its_program_is_the_recorded_text():
    p = humaneval.problem("HumanEval/0")
    o = score(humaneval.canonical_answer(p))
    assert o.status == "passed", o
    assert o.program == humaneval.program_hash(humaneval.program(humaneval.canonical_answer(p), p))


def test_a_right_answer_that_exits_afterwards_still_passes_only_through_the_check():
    """An answer whose load starts a thread that ends its process later: the check had already returned."""
    p = humaneval.problem("HumanEval/0")
    late = "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(5), os._exit(0)), daemon=True)"
    o = score(f"```python\n{late}.start()\n{p.prompt}{p.canonical_solution}```")
    assert o.status == "passed", o


def test_results_cross_as_plain_data():
    """A tuple stays a tuple, an iterator an iterator (a test comparing it to a list fails, as it did in one
    process), and `tuple(...)` of a generator works."""
    job = humaneval.harness.TestJob(
        "def f(kind):\n    return {'tuple': (1, 2), 'gen': (i for i in (1, 2)), 'dict': {(1, 2): {3}}}[kind]\n",
        "def check(candidate):\n    assert candidate('tuple') == (1, 2)\n    assert candidate('gen') != [1, 2]\n"
        "    assert tuple(candidate('gen')) == (1, 2)\n    assert candidate('dict') == {(1, 2): {3}}\n",
        "f",
    )
    r = harness.run_job(job, timeout_s=20)
    assert r.status == "passed", r


def test_a_hang_is_a_timeout():
    o = score(SIG + "    while True:\n        pass\n", timeout_s=1)
    assert o.status == "timeout", o


# ---------------------------------------------------------------- cdw score


def cdw_score(tmp_path, text: str, *args: str):
    from click.testing import CliRunner

    from workspace.cli import main

    f = tmp_path / "answer.md"
    f.write_text(text)
    return CliRunner().invoke(main, ["score", *args, str(f)])


def test_cdw_score_shows_status_program_and_output(tmp_path):
    import json

    p = humaneval.problem("HumanEval/0")
    r = cdw_score(tmp_path, f"```python\n{CHEATS['os._exit in the function']}```", "--benchmark", "humaneval",
                  "--problem", "HumanEval/0", "--json")  # fmt: skip
    assert r.exit_code == 1, r.output
    out = json.loads(r.output)
    assert (
        out["status"] == "failed" and "os._exit(0)" in out["program"] and "check(has_close_elements)" in out["program"]
    )
    assert "line 12 of the tests" in out["output"], out["output"]
    r = cdw_score(tmp_path, humaneval.canonical_answer(p), "--benchmark", "humaneval", "--problem", "HumanEval/0")
    assert r.exit_code == 0 and r.output.startswith("passed humaneval HumanEval/0"), r.output
    r = cdw_score(tmp_path, "no code here", "--benchmark", "humaneval", "--problem", "HumanEval/0", "--json")
    assert json.loads(r.output) == {"status": "no_code", "program": "",
                                    "output": "no parsable code defining has_close_elements"}  # fmt: skip


def test_cdw_score_refuses_what_it_cannot_score(tmp_path):
    r = cdw_score(tmp_path, "x", "--benchmark", "humaneval", "--problem", "HumanEval/999")
    assert r.exit_code == 1 and "not one of humaneval's problems" in r.output, r.output
    r = cdw_score(tmp_path, "x", "--benchmark", "alpaca_eval", "--problem", "1")
    assert r.exit_code == 1 and "judged against a reference" in r.output, r.output
