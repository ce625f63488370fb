"""The call cache: an SQLite file mapping the hash of an exact request to its answer.

Greedy decoding makes a request's answer a function of the request, so a re-run or a sweep that revisits a prefix
is answered from here. WAL mode lets several processes share it.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from servers.settings import paths


class CallCache:
    """Answers of deterministic requests, keyed by a hash of the exact request (see `ModelClient.request`)."""

    def __init__(self, path: Path | None = None):
        self.path = path or paths().cache / "calls.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, body TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> Any | None:
        row = self._db.execute("SELECT body FROM calls WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, body: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?)", (key, json.dumps(body, ensure_ascii=False)))
        self._db.commit()

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._db.close()
