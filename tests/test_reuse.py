"""Known continuations (workspace/reuse.py): what a known greedy answer answers exactly, and what it must leave to
the server; the store's persistence under concurrent and killed writers. The engine's exactness with reuse is in
tests/test_engine_reuse.py."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tests.fakeserver import first_stop
from workspace.client import ChatCompletion, ChatToken, Completion, TokenLogprob, TopLogprob
from workspace.reuse import (
    ContinuationStore,
    check_stop_strings,
    completion_of,
    continue_from,
    known_from_chat,
    known_from_completion,
)

SCOPE = b"s" * 32
PROMPT = [900, 901, 902]


def completion(pieces, text=None, finish="length", stop_reason=None, k=2, ids=None, tops=None) -> Completion:
    """A server's completion with these token pieces (ids 1, 2, ...; k alternatives each unless `tops`)."""
    ids = ids or list(range(1, len(pieces) + 1))
    tokens = []
    for n, (i, p) in enumerate(zip(ids, pieces, strict=True)):
        top = tops[n] if tops else [(p, -0.1 * n)] + [(f"alt{a}", -1.0 - a) for a in range(k - 1)]
        tokens.append(TokenLogprob(i, p, -0.1 * n, tuple(TopLogprob(t, v) for t, v in top)))
    text = "".join(p for p in pieces if not p.startswith("<|")) if text is None else text
    return Completion(text, tuple(ids), tuple(tokens), finish, stop_reason)


def known(pieces, **kw):
    k = known_from_completion(completion(pieces, **kw), kw.get("k", 2))
    assert k is not None
    return k


WORDS = known(["Hello", ",", " world", ".", "\n", "How", " are", " you", "?", "<|im_end|>"], finish="stop")


def test_a_prefix_of_the_known_answer_is_answered_with_the_rest_of_it():
    a = continue_from(WORDS, 2, 100)
    assert (a.start, a.end, a.text, a.finish_reason, a.stop_reason) == (2, 10, " world.\nHow are you?", "stop", None)
    a = continue_from(WORDS, 0, 100)
    assert a.text == "Hello, world.\nHow are you?" and a.end == 10


def test_a_shorter_max_tokens_truncates_with_finish_length():
    a = continue_from(WORDS, 1, 3)
    assert (a.end, a.text, a.finish_reason) == (4, ", world.", "length")
    # The end-of-sequence token as the last allowed token: vLLM checks it before the length.
    a = continue_from(WORDS, 5, 5)
    assert (a.end, a.text, a.finish_reason, a.stop_reason) == (10, "How are you?", "stop", None)


def test_an_answer_past_what_is_known_is_a_miss():
    open_ended = known(["a", " b", " c"], finish="length")
    assert continue_from(open_ended, 1, 2).text == " b c"
    assert continue_from(open_ended, 1, 3) is None  # the third token after " a" is not known
    assert continue_from(open_ended, 3, 1) is None  # nothing known after the last token


def test_an_extra_end_of_sequence_id_is_reported_as_the_server_did():
    k = known(["Hi", "<|endoftext|>"], finish="stop", stop_reason=151643)
    a = continue_from(k, 0, 10)
    assert (a.finish_reason, a.stop_reason, a.text) == ("stop", 151643, "Hi")


def test_a_stop_string_inside_a_token_cuts_the_text_and_keeps_the_token():
    k = known(["def", " f", "():\n", "    ", "return"])
    a = continue_from(k, 0, 10, stop=["\n"], include_stop=True)
    assert (a.end, a.text, a.finish_reason, a.stop_reason) == (3, "def f():\n", "stop", "\n")
    a = continue_from(k, 0, 10, stop=["\n"], include_stop=False)
    assert (a.end, a.text) == (3, "def f():")
    # A stop string straddling two tokens is found at the token that completes it.
    a = continue_from(k, 0, 10, stop=[":\n  "], include_stop=True)
    assert (a.end, a.text) == (4, "def f():\n  ")


def test_only_generated_text_is_searched_for_stop_strings():
    k = known(["a", "\n", "b", "c", "\n"])
    assert continue_from(k, 2, 10, stop=["\n"], include_stop=True).text == "bc\n"
    assert continue_from(k, 2, 10, stop=["\nb"], include_stop=True) is None  # "\n" before the start: not output


def test_the_stop_string_that_completes_first_wins_then_list_order():
    k = known(["x", " one. two\n", "z"])
    a = continue_from(k, 0, 5, stop=["\n", ". "], include_stop=True)
    assert (a.text, a.stop_reason) == ("x one. ", ". ")  # ". " ends before "\n" in the same token
    k = known(["x", " ab", "z"])
    a = continue_from(k, 0, 5, stop=["b", "ab"], include_stop=True)
    assert (a.text, a.stop_reason) == ("x ab", "b")  # both end at the same place: the first listed


def test_stop_strings_as_the_toy_server_and_vllm_find_them():
    """Random answers and stop lists, token by token as vLLM checks (the toy server's independent rule)."""
    rng = random.Random(3)
    alphabet = ["a", "b", " ", "\n", ".", "ab", ". ", "\n\n", "b.", " a"]
    for _ in range(400):
        pieces = [rng.choice(alphabet) for _ in range(rng.randint(1, 12))]
        k = known(pieces)
        stop = rng.sample(["\n", ". ", "b", "ab", "a.", " a", "\n\n"], rng.randint(1, 4))
        start, n, include = rng.randint(0, len(pieces) - 1), rng.randint(1, 12), rng.random() < 0.5
        text, want = "", None
        for end in range(start + 1, min(start + n, len(pieces)) + 1):
            new = pieces[end - 1]
            text += new
            hit = first_stop(text, len(new), stop)
            if hit:
                want = (end, text[: hit[0] + (len(hit[1]) if include else 0)], "stop", hit[1])
                break
            if end - start == n:
                want = (end, text, "length", None)
        got = continue_from(k, start, n, stop, include)
        assert (None if got is None else (got.end, got.text, got.finish_reason, got.stop_reason)) == want


def test_check_stop_strings_searches_only_what_the_new_characters_complete():
    assert check_stop_strings("abc\n", 1, ["\n"], True) == ("\n", 4)
    assert check_stop_strings("a\nbc", 2, ["\n"], True) is None  # "\n" was there before these characters
    assert check_stop_strings("a\nbc", 3, ["\n"], False) == ("\n", 1)
    assert check_stop_strings("abc", 0, ["c"], True) is None


def test_fewer_logprobs_are_a_truncation_and_more_are_a_miss():
    k = known(["a", " b", " c"], k=3)
    a = continue_from(k, 0, 3)
    one = completion_of(k, a, 1)
    assert [len(t.top) for t in one.tokens] == [1, 1, 1] and one.tokens[1].top[0].text == " b"
    assert completion_of(k, a, 3).tokens == tuple(completion(["a", " b", " c"], k=3).tokens)
    assert completion_of(k, a, 4) is None
    assert completion_of(k, a, 0).tokens == () and completion_of(k, a, 0).text == "a b c"
    # Two alternatives that decode to the same text were merged by the server: which k it shows is unknown.
    merged = known(["a", " b"], k=3, tops=[[("a", -0.1), ("x", -1.0)], [(" b", -0.1), ("y", -1), ("z", -2)]])
    assert completion_of(merged, continue_from(merged, 0, 2), 2) is None
    assert completion_of(merged, continue_from(merged, 0, 2), 3) is not None


def test_split_characters_round_trip_and_never_start_an_answer():
    # vLLM 0.32 reports the first bytes of " é" as "" and the completing token as the whole character.
    k = known(["Caf", "", " é", " ok", "", " 中", "<|im_end|>"], finish="stop")
    assert k.text == "Caf é ok 中"
    assert continue_from(k, 1, 5) is not None and continue_from(k, 2, 5) is None  # inside " é": no start
    assert list(k.starts()) == [0, 1, 3, 4, 6]
    # An answer cut inside a character ends before it (the server holds partial bytes back).
    a = continue_from(k, 3, 2)
    assert (a.end, a.text, a.finish_reason) == (5, " ok", "length")
    assert continue_from(k, 3, 10).text == " ok 中"
    # A stop string is found only once the character is whole.
    a = continue_from(k, 0, 10, stop=["中"], include_stop=True)
    assert (a.end, a.text) == (6, "Caf é ok 中")
    # Servers that report U+FFFD pieces: which token completed the character is not known, so no answer ends
    # inside such a run, and a stop string found right after one may have been completed inside it.
    r = known(["Caf", " \ufffd", "\ufffd", " ok", "."], text="Caf é ok.")
    assert r.bounds == (0, 3, None, 5, 8, 9) and continue_from(r, 0, 3).text == "Caf é"
    assert continue_from(r, 0, 2) is None
    assert continue_from(r, 0, 5, stop=[" "], include_stop=True) is None
    assert continue_from(r, 0, 5, stop=["."], include_stop=True).text == "Caf é ok."


def test_an_end_of_sequence_token_reported_as_empty_adds_no_text():
    k = known(["Hi", "!", ""], text="Hi!", finish="stop")
    a = continue_from(k, 1, 5)
    assert (a.end, a.text, a.finish_reason) == (3, "!", "stop")


def test_pieces_that_do_not_add_up_to_the_text_are_not_kept():
    assert known_from_completion(completion(["a", "b"], text="xyz"), 2) is None
    assert known_from_completion(completion(["a", "b"]), 2) is not None


def test_chat_answers_keep_their_bytes_and_answer_fewer_alternatives():
    out = ChatCompletion(
        "Hi there",
        "length",
        None,
        tuple(ChatToken(t, t.encode(), -0.5, ((t, -0.5), ("x", -2.0))) for t in ("Hi", " there")),
    )
    k = known_from_chat(out, [5, 6], 2)
    assert k.bytes == (tuple(b"Hi"), tuple(b" there"))
    from workspace.reuse import chat_of

    again = chat_of(k, continue_from(k, 0, 2), 2)
    assert again == out and again.origin == "reuse"
    assert chat_of(k, continue_from(k, 1, 1), None) == ChatCompletion(" there", "length", None)
    assert chat_of(k, continue_from(k, 1, 1), 1).tokens[0].top == ((" there", -0.5),)


# ---------------------------------------------------------------- the store


def test_the_store_finds_continuations_by_context_and_keeps_them_across_opens(tmp_path):
    path = tmp_path / "k.sqlite"
    store = ContinuationStore(path)
    out = completion(["Hello", ",", " world", "."])
    store.record_completion(SCOPE, PROMPT, out, 2)
    got = store.answer_completion(SCOPE, PROMPT + [1, 2], 2, 2, None)
    assert got.text == " world." and got.token_ids == (3, 4) and got.origin == "reuse"
    assert store.answer_completion(SCOPE, PROMPT + [1, 2], 3, 2, None) is None  # runs past what is known
    assert store.answer_completion(b"t" * 32, PROMPT + [1, 2], 2, 2, None) is None  # other settings or model
    assert store.answer_completion(SCOPE, [900, 901] + [1, 2], 2, 2, None) is None  # another context
    store.record_completion(SCOPE, PROMPT + [1], completion([",", " world"], ids=[2, 3]), 2)
    assert len(store) == 1  # already known: not stored twice
    store.close()
    again = ContinuationStore(path)
    assert again.answer_completion(SCOPE, PROMPT, 4, 1, None).text == "Hello, world."
    again.close()


def test_the_longest_known_answer_is_found_among_several(tmp_path):
    store = ContinuationStore(tmp_path / "k.sqlite")
    store.record_completion(SCOPE, PROMPT, completion(["a", " b"]), 2)
    store.record_completion(SCOPE, PROMPT + [1, 2], completion([" c", " d"], ids=[3, 4]), 2)
    assert store.answer_completion(SCOPE, PROMPT + [1, 2], 2, 2, None).text == " c d"
    assert store.answer_completion(SCOPE, PROMPT + [1], 2, 2, None) is None  # " b" known, " c" only from elsewhere
    store.record_completion(SCOPE, PROMPT, completion(["a", " b", " c", " d", " e"]), 2)
    assert store.answer_completion(SCOPE, PROMPT + [1], 3, 2, None).text == " b c d"


def test_chat_requests_are_found_by_text_and_proved_by_ids(tmp_path):
    store = ContinuationStore(tmp_path / "k.sqlite")
    head = b"h" * 32
    out = ChatCompletion(
        "Hi there.", "stop", None, tuple(ChatToken(t, t.encode(), -0.5) for t in ("Hi", " there", ".", "<|im_end|>"))
    )
    store.record_chat(SCOPE, head, "", PROMPT, out, [5, 6, 7, 8], 0)
    assert store.chat_candidates(SCOPE, head, "Hi there")
    assert not store.chat_candidates(SCOPE, head, "Hi ther")  # not a token boundary
    assert not store.chat_candidates(SCOPE, b"g" * 32, "Hi there")  # another conversation
    got = store.answer_chat(SCOPE, PROMPT + [5, 6], 5, 0, None, False)
    assert (got.text, got.finish_reason, got.stop_reason, len(got.tokens)) == (".", "stop", None, 2)
    # The same text tokenised differently is another context: no answer.
    assert store.answer_chat(SCOPE, PROMPT + [5, 66], 5, 0, None, False) is None


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from workspace.client import Completion, TokenLogprob, TopLogprob
    from workspace.reuse import ContinuationStore

    store = ContinuationStore(Path(sys.argv[1]))
    who, n = int(sys.argv[2]), int(sys.argv[3])
    for i in range(n):
        ids = (who, i, 1, 2)
        toks = tuple(TokenLogprob(t, f" w{t}", -0.5, (TopLogprob(f" w{t}", -0.5),)) for t in ids)
        store.record_completion(b"s" * 32, [7, who, i], Completion("".join(t.text for t in toks), ids, toks,
                                                                   "length", None), 1)
        print(i, flush=True)
""")


def _writer(path, who: int, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(who), str(n)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip


def _found(store: ContinuationStore, who: int, i: int) -> bool:
    out = store.answer_completion(SCOPE, [7, who, i, who], 3, 1, None)
    return out is not None and out.text == f" w{i} w1 w2"


def test_two_writing_processes_lose_nothing(tmp_path):
    path = tmp_path / "k.sqlite"
    ContinuationStore(path).close()
    procs = [_writer(path, who, 60) for who in (1, 2)]
    for p in procs:
        assert p.wait(60) == 0
    store = ContinuationStore(path)
    assert len(store) == 120
    assert all(_found(store, who, i) for who in (1, 2) for i in range(60))


def test_a_writer_killed_mid_write_loses_only_what_it_had_not_finished(tmp_path):
    path = tmp_path / "k.sqlite"
    p = _writer(path, 3, 100_000)
    done = []
    deadline = time.monotonic() + 30
    while len(done) < 300 and time.monotonic() < deadline:
        done.append(int(p.stdout.readline()))
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert len(done) >= 300
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = ContinuationStore(path)
    assert all(_found(store, 3, i) for i in done)  # every entry the writer reported written is there
    n = len(store)
    store.record_completion(SCOPE, [7, 3, 10**6], completion(["x"]), 1)  # and the file takes more
    assert len(store) == n + 1


@pytest.mark.parametrize("bad", ["maybe", "2"])
def test_a_bad_reuse_setting_is_a_clear_error(monkeypatch, bad):
    from servers import settings

    monkeypatch.setenv("CDW_REUSE", bad)
    with pytest.raises(ValueError, match="CDW_REUSE"):
        settings.reuse()
    for value, on in (("off", False), ("0", False), ("on", True), ("", True)):
        monkeypatch.setenv("CDW_REUSE", value)
        assert settings.reuse() is on


def test_a_store_that_cannot_be_written_costs_requests_not_answers(tmp_path):
    store = ContinuationStore(tmp_path / "k.sqlite")
    other = sqlite3.connect(tmp_path / "k.sqlite", timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the file
    store._db.execute("PRAGMA busy_timeout = 50")
    with pytest.warns(UserWarning, match="cannot write"):
        store.record_completion(SCOPE, PROMPT, completion(["a", " b"]), 2)
    assert store.failures >= 1
    other.rollback()
    store.record_completion(SCOPE, PROMPT, completion(["a", " b"]), 2)
    assert store.answer_completion(SCOPE, PROMPT, 2, 2, None).text == "a b"


def test_a_file_that_is_not_a_store_is_a_clear_error(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from workspace.cli import main

    monkeypatch.setenv("CDW_HOME", str(tmp_path))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "continuations.sqlite").write_bytes(b"not a database" * 100)
    r = CliRunner().invoke(main, ["decode", "hi", "--weak-url", "http://127.0.0.1:9", "--strong-url",
                                  "http://127.0.0.1:9"])  # fmt: skip
    assert r.exit_code != 0 and "known continuations cannot be opened" in r.output and "--no-reuse" in r.output


@pytest.mark.slow  # importing vLLM takes 10-20 s of CPU: the one test here that needs it
def test_the_stop_string_rule_is_vllms_own():
    pytest.importorskip("vllm")
    from vllm.v1.engine.detokenizer import check_stop_strings as vllm_check

    rng = random.Random(2)
    for _ in range(3000):
        text = "".join(rng.choice("ab .\n中") for _ in range(rng.randint(0, 12)))
        new = rng.randint(0, len(text))
        stop = rng.sample(["a", "b.", " ", "\n", ". ", "ab", "中", "a a"], rng.randint(1, 4))
        include = rng.random() < 0.5
        want = vllm_check(text, new, stop, include)
        if want is not None and want[1] == -1:
            want = (want[0], len(text))  # vLLM says "no truncation" where the stop string ends the text
        assert check_stop_strings(text, new, stop, include) == want
