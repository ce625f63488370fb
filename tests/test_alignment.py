"""Token boundaries from per-token strings, in the ways servers report characters split across tokens."""

from __future__ import annotations

import pytest

from workspace.alignment import align


def test_clean_pieces_give_every_boundary():
    al = align(" The gear turns.", [" The", " gear", " turns", "."])
    assert al.bounds == (0, 4, 9, 15, 16) and al.overhang == ""


@pytest.mark.parametrize(
    "pieces, bounds",
    [
        # vLLM 0.32 (measured on the cpu preset): "" for the first pieces, the whole character on the last one
        (["Hi", "", "", " 🍕", " now"], (0, 2, None, None, 4, 8)),
        # a tokenizer's decode of one token: U+FFFD per piece, plain characters kept
        (["Hi", " \ufffd", "\ufffd", "\ufffd", " now"], (0, 2, None, None, 4, 8)),
        (["Hi", "bytes:\\xf0\\x9f", "bytes:\\x8d\\x95", " now"], (0, 2, None, 4, 8)),
    ],
)
def test_split_characters_have_no_inner_boundaries(pieces, bounds):
    al = align("Hi 🍕 now", pieces)
    assert al.bounds == bounds
    assert al.safe_at_or_before(len(pieces) - 2) == 1  # a handoff inside the pizza moves back to its first token


def test_special_tokens_are_zero_width():
    al = align("Done.", ["Done", ".", "<|im_end|>"])
    assert al.bounds == (0, 4, 5, 5)


def test_a_stop_string_inside_the_last_token_leaves_an_overhang():
    # the server stopped at ". " inside the token " It": the text ends with the space
    al = align(" around. ", [" around", ".", " It"])
    assert al.overhang == "It" and al.text == " around. It" and al.bounds == (0, 7, 8, 11)
    assert al.heal(9) == 2  # cut after ". ": round down to " around." — the next word's space is not ours


def test_overhang_inside_a_split_character():
    # "! " is a sentence end; vLLM emits it only once the emoji after the space completes
    al = align("Hello! ", ["Hello", "!", "", " 😊"])
    assert al is not None and al.overhang == "😊" and al.heal(7) == 2


def test_heal_rounds_down_and_up_only_when_the_first_token_straddles():
    al = align(" A bicycle gear", [" A", " bicycle", " gear"])
    assert al.heal(3) == 1  # words:1 cuts at "b": keep " A"
    assert al.heal(1) == 1  # the first token straddles the cut: keep it whole
    assert al.heal(100) == 3


def test_pieces_that_do_not_add_up_are_refused():
    assert align("abc", ["a", "x", "c"]) is None
    assert align("abcdef", ["ab", "cd"]) is None
    assert align("ab", ["", ""]) is None
