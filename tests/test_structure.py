"""Where a token stands in the answer (workspace/policies/structure.py) and the span rules that follow it: prose
and fenced code, Python's logical lines, strings, comments, signatures and bodies, tracked incrementally."""

from __future__ import annotations

import random

import pytest

from tests.fakeserver import STRONG_SCRIPT, WEAK_SCRIPT
from workspace.policies import SpanRule, TokenSignal, parse_span
from workspace.policies.structure import Tracker, Where, structural_cut, track

CODE = "```python\n"


def at(text: str, marker: str, after: bool = True) -> Where:
    """Where the point just after (or before) the first `marker` in `text` stands."""
    i = text.index(marker) + (len(marker) if after else 0)
    return track(text[:i])


def test_prose_before_and_after_the_code():
    text = STRONG_SCRIPT
    assert at(text, "Here is").part == "prose" and not at(text, "Here is").code
    fence = at(text, "```py")
    assert fence.fence and not fence.code and fence.blocks == 0
    inside = at(text, "import m")
    assert inside.code and inside.lang == "python" and inside.blocks == 1 and inside.statement == "import"
    after = at(text, "It tries")
    assert not after.code and not after.fence and after.blocks == 1 and after.part == "prose"
    assert at(text, "print(is_prime(7))\n```").fence  # the closing fence line


def test_an_unclosed_fence_runs_to_the_end_and_fences_need_three_backticks_at_a_line_start():
    w = track(CODE + "def f(x):\n    return x\n")
    assert w.code and w.body and w.line_start
    assert not track("Use ``` to fence code, `x` inline.\nok").code  # not at a line's start
    w = track(CODE + "x = 1\n``y")  # two backticks, then something else: code
    assert w.code and not w.fence and not w.line_start
    assert track(CODE + "x = 1\n  ```\nafter").part == "prose"  # an indented closing fence closes the block
    assert track("~~~\nnot a fence").part == "prose"
    w = track("```\nx = 1\n")
    assert w.code and w.lang == ""  # an unnamed block is read as Python
    assert track("```JavaScript extra\nvar").lang == "javascript"


def test_nested_blocks_indentation_and_function_bodies():
    text = CODE + (
        "class A:\n"
        "    def m(self, n):\n"
        "        for i in range(n):\n"
        "            if i:\n"
        "                yield i\n"
        "        return\n"
        "\n"
        "    x = 1\n"
        "y = 2\n"
    )
    w = at(text, "yield")
    assert (w.indent, w.depth, w.body, w.def_indent, w.statement) == (16, 4, True, 4, "yield")
    w = at(text, "        return")
    assert (w.indent, w.depth, w.body, w.def_indent) == (8, 2, True, 4)
    w = at(text, "\n\n")  # a blank line: nothing says yet that the body ended
    assert w.body and w.line_start
    w = at(text, "    x")  # back at the class's level: out of the method
    assert (w.indent, w.depth, w.body, w.def_indent, w.part) == (4, 1, False, -1, "code")
    assert at(text, "\ny").depth == 0 and at(text, "\ny").part == "code"
    assert at(text, "            if i:").opens_block and at(text, "                y").first_in_block
    assert not at(text, "        return").first_in_block


def test_tabs_indent_to_the_next_multiple_of_eight():
    text = CODE + "def f(x):\n\tif x:\n\t\treturn 1\n  \treturn 2\n"
    assert at(text, "\tif").indent == 8
    assert at(text, "\t\tret").indent == 16 and at(text, "\t\tret").depth == 2
    assert at(text, "  \tret").indent == 8 and at(text, "  \tret").depth == 1
    assert track(text + "\t ").indent == 9 and track(text + "\t ").line_start


def test_docstrings_with_quotes_inside_and_strings_that_hold_code_characters():
    text = CODE + (
        "def f(s):\n"
        "    r'''It's \"quoted\": a ''' + 'x'\n"
        '    """Say "hi" or \'bye\': \\""" is escaped\n'
        "    # not a comment: inside the docstring\n"
        '    """\n'
        '    t = "a # b:"\n'
        "    return t\n"
    )
    assert at(text, "It's").docstring and at(text, "It's").part == "header"
    assert not at(text, "''' + ").string  # closed
    assert at(text, "+ 'x").string and not at(text, "+ 'x").docstring  # a string, not at the statement's start
    w = at(text, "is escaped")
    assert w.docstring and w.string
    w = at(text, "# not a")
    assert w.docstring and not w.comment and w.indent == 4  # the docstring's inner line keeps its statement's indent
    w = at(text, '    t = "a # b')
    assert w.string and not w.comment and not w.docstring and w.part == "body"
    assert not at(text, '    t = "a # b:"').opens_block  # a ':' inside a string does not open a block
    assert at(text, "    ret").part == "body"


def test_comments_holding_a_colon_do_not_open_blocks():
    text = CODE + "x = 1  # note: y\nif x:  # yes: it does\n    y = x\n"
    assert at(text, "# note").comment and not at(text, "# note: y").opens_block
    assert at(text, "if x:  # yes:").opens_block  # the statement ends with ':' (the comment is not code)
    assert at(text, "    y").first_in_block and at(text, "    y").depth == 1
    w = track(CODE + "# heading: a comment line\n")
    assert not w.opens_block and not w.first_in_block


def test_a_signature_over_several_lines_ends_at_its_own_colon():
    text = CODE + "def f(\n    a: int,\n    b=lambda x: x,\n) -> dict[str, int]:\n    return {}\n"
    for marker in ("def f(", "a: int,", "lambda x: x", ") -> dict[str, int]"):
        w = at(text, marker)
        assert w.signature and not w.body and w.continued == (marker != ") -> dict[str, int]"), marker
    assert at(text, "    ret").body and not at(text, "    ret").signature
    assert at(text, "int]:").body  # after the signature's colon: the body (a one-line def writes it here)
    w = track(CODE + "async def g():\n    await h()\n")
    assert w.body and at(CODE + "async def g():", "async def ").signature


def test_decorators_imports_and_demo_code_by_part():
    text = CODE + "import os\nfrom a import b\n\n@cache\ndef f():\n    '''Doc.'''\n    return 1\n\nprint(f())\n"
    parts = {m: at(text, m).part for m in ("import o", "from a", "@ca", "def f", "'''Do", "    ret", "print(")}
    assert parts == {"import o": "header", "from a": "header", "@ca": "header", "def f": "header",
                     "'''Do": "header", "    ret": "body", "print(": "code"}  # fmt: skip


def test_other_languages_track_indentation_only():
    w = track("```js\nfunction f(x) {\n  if (x) {\n    return '#:';\n")
    assert w.code and w.lang == "js" and w.depth == 2 and not w.string and not w.body and w.line_start
    assert at("```js\nfunction f(x) {\n", "function f(x) {").opens_block


def _texts() -> list[str]:
    return [
        STRONG_SCRIPT,
        WEAK_SCRIPT,
        "Intro é 🍕\n" + CODE + "def f():\n\t'''x\"\"\"y'''\n\tif a:  # c: d\n\t\tb = ('(', \"\\\"\")\n```\nbye",
        CODE + "x = (1,\n  2)\ny = \\\n  3\ns = '''a\n```\n",
        "``\n```\n``py\n``` x\nfoo\n",
    ]


@pytest.mark.parametrize("seed", range(6))
def test_incremental_tracking_equals_batch_tracking_at_random_cut_points(seed):
    rng = random.Random(seed)
    for text in _texts():
        cuts = sorted(rng.sample(range(1, len(text)), min(25, len(text) - 1))) + [len(text)]
        t, last = Tracker(), 0
        for c in cuts:
            t.feed(text[last:c])
            assert t.where() == track(text[:c]), (text[:c][-40:], c)
            snapshot = t.where()
            t.copy().feed("\n```\nprose: x\n")  # a copy is independent of its original
            assert t.where() == snapshot
            last = c


def test_where_defaults_and_token_signal_fields_keep_old_policies_working():
    s = TokenSignal(1, "x", -0.1, (-0.1,), 0, "line one\nli", 0)
    assert s.where == Where() and s.after == Where() and s.instruction == "" and s.line == "li"
    assert Where().part == "prose" and Where().line_start


# ---------------------------------------------------------------- structural span rules


def cut(kind: str, before: str, text: str, n: int = 1) -> str | None:
    """The span a `kind` rule keeps of `text` when it starts after `before` (None: runs past the end)."""
    c = structural_cut(kind, n, Tracker().feed(before), text)
    return None if c is None else text[:c]


FUNC = CODE + "import math\n\n\ndef f(n):\n    if n < 2:\n        return 0\n    for k in range(n):\n        n += k\n"
REST = "    return n\n\n\nprint(f(3))\n```\nDone.\n"


def test_line_is_the_logical_line_and_the_block_it_opens():
    whole = FUNC + REST
    assert cut("line", CODE, whole[len(CODE) :]) == "import math\n"
    assert cut("line", FUNC[: FUNC.index("    if")], whole[FUNC.index("    if") :]) == (
        "    if n < 2:\n        return 0\n"
    )
    assert cut("line", CODE + "x = [", "1,\n  2]\ny = 3\n") == "1,\n  2]\n"  # a newline in brackets goes on
    assert cut("line", CODE + "def g():\n", "    '''A\n    doc.'''\n    return\n") == "    '''A\n    doc.'''\n"
    assert cut("line", "Prose ", "then more.\nNext") == "then more.\n"  # outside code: the line


def test_block_ends_where_the_indentation_returns_and_block_2_takes_the_enclosing_block():
    whole = FUNC + REST
    start = whole.index("    for")
    assert cut("block", whole[:start], whole[start:]) == "    for k in range(n):\n        n += k\n"
    mid = whole.index("+= k") + 2
    assert cut("block", whole[:mid], whole[mid:]) == " k\n"
    assert cut("block", whole[:mid], whole[mid:], n=2) == " k\n"  # the for line's level ends it
    assert cut("block", whole[:mid], whole[mid:], n=3) == " k\n    return n\n\n\n"  # then the def's
    assert cut("block", whole[:mid], whole[mid:], n=4) == " k\n    return n\n\n\nprint(f(3))\n"  # only the fence
    assert cut("block", whole[: whole.index("print")], "print(f(3))\n") is None  # the fence is not here yet


def test_body_keeps_the_rest_of_the_function_or_the_function_a_def_line_opens():
    whole = FUNC + REST
    start = whole.index("    if")
    assert cut("body", whole[:start], whole[start:]) == whole[start : whole.index("print")]
    start = whole.index("def f")
    assert cut("body", whole[:start], whole[start:]) == whole[start : whole.index("print")]
    start = whole.index("import")  # outside a function: as `block`
    assert cut("body", whole[:start], whole[start:]) == "import math\n\n\n"


def test_spans_at_a_line_start_skip_blank_lines_and_stop_at_the_closing_fence():
    before = CODE + "def f():\n    x = 1\n"
    assert cut("block", before, "\n    y = 2\n    z = 3\n") == "\n    y = 2\n"
    assert cut("body", before, "    y = 2\n```\nprose\n") == "    y = 2\n"  # the fence ends the code
    assert cut("block", before, "```\nprose\n") == "```\n"  # a span that starts on the fence line ends with it
    assert cut("block", before + "`", "``\nprose\n") == "``\n"
    assert cut("block", before + "    if x:", "  # a comment: with a colon\n        y\n    z\n") == (
        "  # a comment: with a colon\n        y\n"
    )


def test_structural_span_rules_parse_describe_and_stop():
    assert parse_span("block:2", 400) == SpanRule("block", 2, 400)
    assert [parse_span(s).describe() for s in ("line", "block", "block:2", "body")] == ["line", "block", "block:2",
                                                                                      "body"]  # fmt: skip
    rule = parse_span("body")
    assert rule.structural and not parse_span("newline").structural
    assert rule.stop_strings(track(CODE)) == ["\n```"] and rule.stop_strings(track("Hi")) == ["\n"]
    assert rule.cut("Some prose.\nMore") == len("Some prose.\n")  # no start given: the answer's start (prose)
