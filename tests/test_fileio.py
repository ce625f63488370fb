"""Shared file I/O: whole-file writes are atomic, JSON Lines files grow by whole lines, damage is reported."""

from __future__ import annotations

import hashlib

import pytest

from workspace.fileio import DamagedLineError, append_lines, atomic_write, parse_lines, sha256_file


def test_atomic_write_replaces_the_whole_file_and_leaves_no_temp_file(tmp_path):
    dest = tmp_path / "sub" / "f.json"
    atomic_write(dest, "first")
    atomic_write(dest, "second é")
    assert dest.read_text(encoding="utf-8") == "second é"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.json"]
    assert sha256_file(dest) == hashlib.sha256("second é".encode()).hexdigest()


def test_append_cuts_a_torn_last_line_before_adding_whole_ones(tmp_path):
    path = tmp_path / "rows.jsonl"
    append_lines(path, [b'{"a": 1}'])
    with path.open("ab") as f:
        f.write(b'{"a": 2')  # a writer killed mid-line
    objs, starts, good = parse_lines(path, path.read_bytes())
    assert objs == [{"a": 1}] and starts == [0] and good == len(b'{"a": 1}\n')
    append_lines(path, [b'{"a": 3}'])
    assert path.read_bytes() == b'{"a": 1}\n{"a": 3}\n'


def test_a_damaged_complete_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "rows.jsonl"
    with pytest.raises(DamagedLineError, match="line 2 is damaged"):
        parse_lines(path, b'{"a": 1}\n[1]\n')
