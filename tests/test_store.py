"""Record logs (workspace/records/log.py): append-only, torn lines survived, damage reported, one writer at a time."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from workspace.records.log import RecordWriter, StoreError, list_records, read_record


def test_events_are_appended_and_read_back_in_order(records_dir):
    with RecordWriter("evaluations", "abc", {"policy": "never"}) as w:
        w.append("generation", prompt_id="p1", text="x")
        w.append("generation", prompt_id="p2", text="y")
    rec = read_record("evaluations", "abc")
    assert rec.header["policy"] == "never"
    assert [e["prompt_id"] for e in rec.of_type("generation")] == ["p1", "p2"]
    assert list_records("evaluations") == ["abc"]


def test_a_torn_last_line_is_dropped_and_the_writer_carries_on(records_dir):
    with RecordWriter("evaluations", "abc", {"policy": "never"}) as w:
        w.append("generation", prompt_id="p1")
    path = records_dir / "evaluations" / "abc.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"type": "generation", "prom')
    assert len(read_record("evaluations", "abc").events) == 1
    with RecordWriter("evaluations", "abc", {"policy": "never"}) as w:
        assert len(w.record.events) == 1
        w.append("generation", prompt_id="p2")
    assert [e["prompt_id"] for e in read_record("evaluations", "abc").events] == ["p1", "p2"]


def test_damage_inside_a_record_is_an_error_naming_the_line(records_dir):
    with RecordWriter("evaluations", "abc", {"policy": "never"}) as w:
        w.append("generation", prompt_id="p1")
        w.append("generation", prompt_id="p2")
    path = records_dir / "evaluations" / "abc.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(StoreError, match="line 2"):
        read_record("evaluations", "abc")


def test_a_different_header_under_the_same_id_is_refused(records_dir):
    RecordWriter("evaluations", "abc", {"policy": "never"}).close()
    with pytest.raises(StoreError, match="different record"):
        RecordWriter("evaluations", "abc", {"policy": "always"})


def _hold(path_env: str, ready, release) -> None:
    os.environ["CDW_RECORDS_DIR"] = path_env
    with RecordWriter("evaluations", "abc", {"policy": "never"}):
        ready.set()
        release.wait(10)


def test_two_writers_at_once_the_second_gets_a_clear_error(records_dir):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(records_dir), ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StoreError, match="another process"):
            RecordWriter("evaluations", "abc", {"policy": "never"})
    finally:
        release.set()
        p.join(10)
    RecordWriter("evaluations", "abc", {"policy": "never"}).close()  # free again once the first is done


def test_bad_record_ids_are_refused(records_dir):
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(StoreError):
            RecordWriter("evaluations", bad, {})
