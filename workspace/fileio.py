"""File I/O every layer shares: atomic whole-file writes, durable JSON Lines appends and reads, file hashes.

Two rules hold for every file written here. A whole file is replaced atomically (`atomic_write`): readers see the
old file or the whole new one, never a part. A JSON Lines file only grows by whole lines (`append_lines`), so a
killed writer leaves at most one torn last line, which readers drop (`parse_lines`) and the next append cuts off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


class DamagedLineError(ValueError):
    """A complete line of a JSON Lines file that is not a JSON object: damage, never silently skipped."""


def atomic_write(dest: Path, text: str) -> None:
    """Write `text` (UTF-8) to `dest`, creating its folder; readers never see a partly written file."""
    # Temp file in the same folder + os.replace: readers see the old file or the whole new one, never a part.
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache and canonical.json are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB chunks (pinned downloads are checked against it)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def parse_lines(path: Path, data: bytes) -> tuple[list[dict], list[int], int]:
    """Parsed lines, the byte offset where each starts, and the byte length of the intact part.

    A last line without its newline is a write the run was killed in: it is dropped. Damage in a complete
    line is an error (DamagedLineError), never silently skipped.
    """
    complete = data[: data.rfind(b"\n") + 1]
    out, starts, pos = [], [], 0
    for i, line in enumerate(complete.split(b"\n")[:-1]):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise DamagedLineError(f"{path}: line {i + 1} is damaged ({e}); the record cannot be read") from e
        out.append(obj)
        starts.append(pos)
        pos += len(line) + 1
    return out, starts, len(complete)


def append_lines(path: Path, lines: Iterable[bytes]) -> None:
    """Append whole JSON lines to a plain JSON Lines file (not a record: no lock, no signature) in one O_APPEND
    write, fsynced. A torn last line left by a crash is cut off first, or it would glue to the first new line."""
    data = b"".join(line + b"\n" for line in lines)
    if not data:
        return
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            tail = os.pread(fd, min(size, 1 << 20), max(0, size - (1 << 20)))
            os.ftruncate(fd, size - len(tail) + tail.rfind(b"\n") + 1)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
