"""Append-only record logs: one JSON Lines file per record, written by one process at a time, signed.

One JSON Lines file per record (`records/<kind>/<id>.jsonl`, e.g. `records/evaluations/…`):
the first line is the header (what was evaluated, with what), every later line one event (a generation, a
preference, a timing). Lines are appended and fsynced as the run progresses, so a killed run loses at most
the line it was writing; reopening drops a torn last line and carries on. A record is written by one process
at a time (an exclusive lock); readers never need the lock. Numbers are never read from a record: readers
recompute them from the events (ARCHITECTURE.md “Records and findings”).

Every writer session ends with a **signature** line: this workspace's Ed25519 signature over every byte before
it (`workspace/records/signing.py`). An edit anywhere in the file breaks it; `Record.signature` says who signed what.

`records/` sits in the project checkout so records can be shared with the findings that cite them;
`CDW_RECORDS_DIR` moves it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers.settings import paths

from ..fileio import DamagedLineError, parse_lines
from . import signing


class StoreError(RuntimeError):
    """A record cannot be read or written as asked (damaged file, another writer, a changed header)."""


def records_dir() -> Path:
    """The folder of record logs (`CDW_RECORDS_DIR`, default `records/` in the project)."""
    return paths().records


def record_path(kind: str, record_id: str) -> Path:
    if not record_id or any(c in record_id for c in "/\\.") or not kind.isidentifier():
        raise StoreError(f"not a record id: {kind}/{record_id!r}")
    return records_dir() / kind / f"{record_id}.jsonl"


@dataclass(frozen=True)
class SignatureCheck:
    """Who signed a record, and whether every signature in it holds."""

    key: str | None  # the signing key (None: unsigned, or signatures by different keys)
    problem: str | None  # None: every signature holds and the last line is one


@dataclass(frozen=True)
class Record:
    """A record as read from disk: its header and its events (signature lines apart), in the order written."""

    kind: str
    id: str
    header: dict
    events: tuple[dict, ...]
    path: Path
    signature: SignatureCheck = SignatureCheck(None, "not read")
    # Events written in each writer session, in order (a session ends with its signature line; a last count
    # after the last signature is of lines no session signed).
    sessions: tuple[int, ...] = ()

    def of_type(self, type_: str) -> Iterator[dict]:
        return (e for e in self.events if e.get("type") == type_)


def _parse(path: Path, data: bytes) -> tuple[list[dict], list[int], int]:
    """`fileio.parse_lines`, its damage reported as a StoreError (a record that cannot be read)."""
    try:
        return parse_lines(path, data)
    except DamagedLineError as e:
        raise StoreError(str(e)) from e


def _check_signatures(data: bytes, objs: list[dict], starts: list[int]) -> SignatureCheck:
    """Each signature line must sign every byte before it, all by one key, and the record must end with one."""
    keys = set()
    for obj, start in zip(objs, starts, strict=True):
        if obj.get("type") != "signature":
            continue
        before = data[:start]
        key, sig = obj.get("key"), obj.get("signature")
        if obj.get("sha256") != signing.digest(before) or not signing.check(before, str(key), str(sig)):
            return SignatureCheck(None, f"the signature at byte {start} does not match the lines before it (edited)")
        keys.add(key)
    if not keys:
        return SignatureCheck(None, "unsigned")
    if len(keys) > 1:
        return SignatureCheck(None, f"signed by {len(keys)} different keys")
    if objs[-1].get("type") != "signature":
        return SignatureCheck(keys.pop(), "lines were added after the last signature")
    return SignatureCheck(keys.pop(), None)


def read_record(kind: str, record_id: str) -> Record | None:
    """Read a record, or None when it does not exist. A torn final line is ignored."""
    path = record_path(kind, record_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    objs, starts, good = _parse(path, data)
    if not objs or objs[0].get("type") != "header":
        raise StoreError(f"{path}: no header line; the record cannot be read")
    sig = _check_signatures(data[:good], objs, starts)
    events = tuple(o for o in objs[1:] if o.get("type") != "signature")
    return Record(kind, record_id, objs[0], events, path, sig, _sessions(objs))


def _sessions(objs: list[dict]) -> tuple[int, ...]:
    """Events per writer session: each signature line closes one."""
    out, n = [], 0
    for o in objs[1:]:
        if o.get("type") == "signature":
            out.append(n)
            n = 0
        else:
            n += 1
    return (*out, n) if n else tuple(out)


def list_records(kind: str) -> list[str]:
    """Ids of the records of one kind, oldest file first."""
    folder = records_dir() / kind
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
    return [p.stem for p in files]


class RecordWriter:
    """Appends events to one record; holds its lock until closed (use as a context manager).

    Opening an existing record checks that the header is the same (same evaluation), truncates a torn final
    line, and lets the caller resume from `record.events`.
    """

    def __init__(self, kind: str, record_id: str, header: dict):
        self.path = record_path(kind, record_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {"type": "header", **header}
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{self.path} is being written by another process; wait for it or stop it") from None
        self._fd = fd
        self._lock = threading.Lock()
        self._appended = False
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        objs, starts, good = _parse(self.path, data)
        if good < len(data):
            os.ftruncate(fd, good)
        if not objs:
            os.ftruncate(fd, 0)
            self._write([header])
            objs, starts = [header], [0]
        elif _comparable(objs[0]) != _comparable(header):
            os.close(fd)
            raise StoreError(f"{self.path} holds a different record under the same id; not overwriting it")
        self._signed = objs[-1].get("type") == "signature"
        events = tuple(o for o in objs[1:] if o.get("type") != "signature")
        sig = _check_signatures(data[:good], objs, starts)
        self.record = Record(kind, record_id, objs[0], events, self.path, sig)

    def _write(self, objs: list[dict]) -> None:
        blob = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objs)
        with self._lock:
            os.lseek(self._fd, 0, os.SEEK_END)
            os.write(self._fd, blob)
            os.fsync(self._fd)
            self._appended = True

    def append(self, type_: str, **fields: Any) -> None:
        """Append one event, durably."""
        if type_ in ("header", "signature"):
            raise StoreError(f"{type_!r} lines are written by the store itself")
        self._write([{"type": type_, **fields}])

    def record_now(self) -> Record:
        """The record as it stands on disk now (events appended so far included)."""
        rec = read_record(self.record.kind, self.record.id)
        assert rec is not None
        return rec

    def sign(self) -> None:
        """Append this workspace's signature over every byte before it (done by `close` when needed)."""
        with self._lock:
            os.lseek(self._fd, 0, os.SEEK_SET)
            data = b""
            while chunk := os.read(self._fd, 1 << 20):
                data += chunk
        key, sig = signing.sign(data)
        self._write([{"type": "signature", "key": key, "sha256": signing.digest(data), "signature": sig}])

    def close(self) -> None:
        if self._fd >= 0:
            try:
                if self._appended or not self._signed:
                    self.sign()
            finally:
                os.close(self._fd)  # releases the lock
                self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _comparable(header: dict) -> dict:
    # When a record was created (with which server versions and decoding, by which code) is not part of what it is.
    return {k: v for k, v in header.items() if k not in ("created", "servers", "code", "decoding")}
