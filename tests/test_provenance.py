"""Who wrote what a benchmark scores (`workspace/benchmarks/provenance.py`): text traced to the answer, HumanEval's
extraction traced character by character, the weak share of the extracted program (f_weak_code) and of its weak
characters that copy the prompt, and the parts of a Python answer (`workspace/benchmarks/pyanatomy.py`).

The problems here are made up (no data file needed); each expected count is built from the pieces the answer is
made of, never read back from the code under test.
"""

from __future__ import annotations

import pytest

from workspace.benchmarks import get, humaneval, pyanatomy
from workspace.benchmarks.provenance import NOT_ANSWER, Traced, authors, copied_lines, scored_share

PROMPT = (
    'from typing import List\n\n\ndef close(xs: List[float], t: float) -> bool:\n    """ Any two closer than t? """\n'  # noqa: E501
)
P = humaneval.Problem("Toy/0", PROMPT, "close", "", "def check(candidate):\n    pass\n")
INSTRUCTION = humaneval.INSTRUCTION.format(prompt=PROMPT.strip("\n"))
IMPORT = "from typing import List"
SIGNATURE = "def close(xs: List[float], t: float) -> bool:"
DOC = '    """ Any two closer than t? """'
BODY = (
    "    for i, a in enumerate(xs):\n        if any(abs(a - b) < t for b in xs[i + 1 :]):\n"
    "            return True\n    return False"
)


def share(parts: list[tuple[str, str]], p: humaneval.Problem = P, instruction: str = INSTRUCTION):
    """The scored share of the answer the (author, text) parts make up, through HumanEval's extraction."""
    answer = "".join(t for _, t in parts)
    trace = humaneval.extract_traced(answer, p) or Traced.answer("")
    return scored_share(trace.origin, trace.text, authors(parts, answer), instruction)


# ---------------------------------------------------------------- Traced is str, with origins

TEXTS = ["a\r\nb\rc\n", "x\x0cy\u2028z\n\n", "\t\tdef f():\n\treturn 1\n", "é😀\r\n\r\r\n", "", "\n\nx", "last"]


@pytest.mark.parametrize("text", TEXTS)
def test_traced_operations_are_strs_own(text):
    t = Traced.answer(text)
    assert t.crlf_to_lf().text == text.replace("\r\n", "\n")
    assert [c.text for c, _ in t.lines()] == text.splitlines()
    assert Traced.join_lines(t.lines()).text == "\n".join(text.splitlines())
    assert t.lstrip("\n").text == text.lstrip("\n")
    assert Traced.join("\n\n", [t, t]).text == f"{text}\n\n{text}"
    for op in (t.crlf_to_lf(), Traced.join_lines(t.lines()), t.lstrip("\n")):
        assert len(op.origin) == len(op.text)
        for ch, at in zip(op.text, op.origin, strict=True):
            # a character is where it came from; a "\n" that joins lines stands for the line break it replaced
            assert text[at] == ch or (ch == "\n" and text[at] in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
    assert Traced.join("--", [t, t]).origin[len(text) : len(text) + 2] == (NOT_ANSWER, NOT_ANSWER)


ANSWERS = {
    "prose around": f"Sure:\n```python\n{IMPORT}\n\n\n{SIGNATURE}\n{DOC}\n{BODY}\n```\nIt is quadratic.",
    "crlf": f"Sure:\n```python\n{IMPORT}\n\n{SIGNATURE}\n{BODY}\n```\n".replace("\n", "\r\n"),
    "unfenced": f"Here is the solution:\n\n{IMPORT}\n{SIGNATURE}\n{BODY}\nThat is all.",
    "body only": f"```python\n{BODY}\n```",
    "demo": f"```python\n{SIGNATURE}\n{BODY}\n\n# Example\nprint(close([1.0], 0.5))\nr = close([], 1)\n```",
    "truncated": f"```python\n{IMPORT}\n{SIGNATURE}\n{BODY}\n\ndef helper(xs):\n    return [x for x in",
    "tabs": f"```python\n{SIGNATURE}\n\tfor i in range(len(xs)):\n\t\treturn True\n\treturn False\n```",
    "two blocks": f"```python\nprint(1)\n```\nthen\n```python\n{SIGNATURE}\n{BODY}\n```",
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_extraction_is_traced_to_the_answer(name):
    answer = ANSWERS[name]
    trace = humaneval.extract_traced(answer, P)
    assert trace is not None and trace.text == humaneval.extract(answer, P)
    inside = [at for at in trace.origin if at != NOT_ANSWER]
    assert inside == sorted(inside) and len(set(inside)) == len(inside)  # in order, each character once
    for ch, at in zip(trace.text, trace.origin, strict=True):
        assert at == NOT_ANSWER or answer[at] == ch or (ch == "\n" and answer[at] in "\r\n")
    prompt_chars = sum(1 for at in trace.origin if at == NOT_ANSWER)
    if name == "body only":  # completed by the prompt: its characters are nobody's
        assert prompt_chars >= len(IMPORT + SIGNATURE + DOC)
    if name == "demo":
        assert "print" not in trace.text and "r = close" not in trace.text


# ---------------------------------------------------------------- f_weak_code and the copy share


def test_only_the_program_counts_and_the_copied_lines_are_the_prompts():
    head = f"Here it is:\n```python\n{IMPORT}\n\n\n{SIGNATURE}\n"
    tail = "```\nIt compares every pair once, which is quadratic in the length of the list."
    parts = [("weak", head), ("strong", f"{BODY}\n\nprint(close([1.0, 2.0], 0.5))\n"), ("weak", tail)]
    s = share(parts)
    # program: the import, a blank line the extraction puts between statements (nobody's), the signature, the body;
    # the import's line ending is not in it (the blank line stands there), the signature's is
    assert (s.weak, s.strong) == (len(IMPORT) + len(SIGNATURE) + 1, len(BODY))
    assert s.weak_copied == s.weak  # both lines are the prompt's, word for word
    assert s.weak / (s.weak + s.strong) < 0.5 < len(head + tail) / len("".join(t for _, t in parts))  # f_weak


def test_weak_lines_that_are_not_the_prompts_are_not_copies():
    extra = "import math"
    parts = [("weak", f"```python\n{extra}\n{IMPORT}\n{SIGNATURE}\n    return False\n"), ("strong", "```")]
    s = share(parts)
    # statements are joined by a blank line nobody wrote: the imports' line endings are not in the program
    copied = len(IMPORT) + len(SIGNATURE) + 1
    assert s.strong == 0 and s.weak == len(extra) + copied + len("    return False")
    assert s.weak_copied == copied


def test_a_line_split_between_authors_counts_each_character_for_its_writer():
    cut = SIGNATURE.index("t: float")
    parts = [("weak", f"```python\n{SIGNATURE[:cut]}"), ("strong", f"{SIGNATURE[cut:]}\n{BODY}\n```")]
    s = share(parts)
    assert (s.weak, s.strong) == (cut, len(SIGNATURE) - cut + 1 + len(BODY))
    assert s.weak_copied == cut  # the weak part of a copied line


def test_a_bare_body_counts_the_prompt_for_no_one():
    s = share([("weak", "```python\n"), ("strong", f"{BODY}\n"), ("weak", "```\nDone.")])
    assert (s.weak, s.strong, s.weak_copied) == (0, len(BODY), 0)


def test_no_code_scores_no_characters():
    s = share([("weak", "I cannot write that function.")])
    assert (s.weak, s.strong, s.weak_copied) == (0, 0, 0)


def test_multibyte_characters_and_tabs():
    body = "\tfor x in xs:\n\t\tif x == 'é😀':\n\t\t\treturn True\n\treturn False"
    split = body.index("😀")  # a segment boundary next to a character of four UTF-8 bytes
    parts = [("weak", f"```python\n{SIGNATURE}\n{body[:split]}"), ("strong", f"{body[split:]}\n```")]
    s = share(parts)
    assert (s.weak, s.strong) == (len(SIGNATURE) + 1 + split, len(body) - split)


def test_authors_must_make_up_the_answer():
    assert authors([("weak", "ab"), ("strong", "c")], "abc") == "wws"
    with pytest.raises(ValueError, match="segments do not make up"):
        authors([("weak", "ab")], "abc")
    with pytest.raises(ValueError, match="segments do not make up"):
        authors([("weak", "xy"), ("strong", "c")], "abc")


def test_copied_lines_are_whole_non_blank_lines_of_the_instruction():
    instruction = "Write it.\n\n    return x\ndef f(x):\n"
    got = copied_lines("def f(x):\n    return x\n\nreturn x\ndef f(x): ", instruction)
    assert got == [True, True, False, False, False]  # blank: never; indentation and trailing space count


def test_benchmarks_say_what_they_score():
    he, judged = get("humaneval"), get("alpaca_eval")
    assert he.has_f_weak_code and not judged.has_f_weak_code
    assert judged.scored_trace("anything", "alpaca_eval/000") is None
    assert judged.scored_share("ab", [("weak", "ab")], "alpaca_eval/000", "q") is None


# ---------------------------------------------------------------- the parts of an answer


def test_every_character_of_an_answer_gets_its_kind():
    pieces = [
        ("prose", "Here is the function:\n```python\n"),
        ("copied", f"{IMPORT}\n"),
        ("header", "import math\n"),
        ("blank", "\n"),
        ("implementation", "SCALE = 1.0\n"),
        ("copied", f"{SIGNATURE}\n"),
        ("header", '    """Whether two numbers are close."""\n'),
        ("comment", "    # every pair once\n"),
        ("implementation", f"{BODY}\n"),
        ("blank", "\n"),
        ("demo", "print(close([1.0], 0.5))\n"),
        ("comment", "# done"),
        ("prose", "\n```\nIt is quadratic."),  # the line break before a closing fence is the fence's
    ]
    answer = "".join(t for _, t in pieces)
    a = humaneval.anatomy(answer, P)
    for kind in pyanatomy.KINDS:
        assert a.count(kind) == sum(len(t) for k, t in pieces if k == kind), kind
    assert a.header_end == answer.index("    # every pair")  # after the docstring's line
    assert a.first_code_line == IMPORT and a.signature


def test_a_header_is_found_in_code_that_does_not_parse():
    answer = f"```python\n{SIGNATURE}\n{DOC}\n    return [\n```\nDone."
    a = humaneval.anatomy(answer, P)
    assert a.header_end == answer.index("    return [")
    assert a.count("other") == len("    return [")  # beyond what parses; the signature and docstring are copied
    no_doc = humaneval.anatomy(f"```python\n{SIGNATURE}\n    return (\n```", P)
    assert no_doc.header_end == len(f"```python\n{SIGNATURE}\n")
    other = humaneval.anatomy("```python\ndef closest(xs):\n    return xs\n```", P)
    assert other.header_end is None and not other.signature and other.count("other") > 0


def test_an_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown kind"):
        pyanatomy.letter("docstring")


def test_windows_line_endings_keep_their_kinds():
    answer = f"Here:\n```python\n{SIGNATURE}\n{DOC}\n{BODY}\n```\nDone.".replace("\n", "\r\n")
    a = humaneval.anatomy(answer, P)
    assert a.header_end == answer.index("    for i")
    body = f"{BODY}\r\n".replace("\n", "\r\n").replace("\r\r", "\r")
    assert a.count("implementation") == len(body) - 2  # the body's last line break is the closing fence's
    assert a.count("copied") == len(f"{SIGNATURE}\r\n{DOC}\r\n")
