"""Prompt sets, whichever benchmark they belong to: the Prompt and PromptSet types and JSONL prompt files.

`PromptSet.hash` identifies a set in evaluation records: sha256 over the (id, instruction) pairs in order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Log = Callable[[str], None] | None


class DataError(Exception):
    """A prompt set could not be loaded: the message says what failed and what to do."""


@dataclass(frozen=True)
class Prompt:
    """One instruction. `id` is stable across runs and machines (evaluation records key on it)."""

    id: str
    instruction: str
    dataset: str = ""  # AlpacaEval's source dataset (helpful_base, koala, oasst, selfinstruct, vicuna)


def _canonical_json(obj) -> bytes:
    # Fixed separators, no ASCII escaping: the same bytes on every machine and Python version.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class PromptSet:
    """An ordered, named tuple of prompts with distinct ids."""

    name: str
    prompts: tuple[Prompt, ...]

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        seen: set[str] = set()
        for p in self.prompts:
            if p.id in seen:
                raise DataError(f"prompt set {self.name!r}: duplicate prompt id {p.id!r}; ids must be unique")
            seen.add(p.id)

    @property
    def hash(self) -> str:
        """sha256 (hex) over the (id, instruction) pairs in order, as canonical JSON: stable across machines."""
        return hashlib.sha256(_canonical_json([[p.id, p.instruction] for p in self.prompts])).hexdigest()

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.prompts)

    def head(self, n: int) -> PromptSet:
        """The first `n` prompts; the name records the cut (e.g. "canonical[:10]"). All of them: `self`."""
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(self.prompts):
            raise DataError(f"{self.name}: cannot take the first {n!r} prompts; choose 1 to {len(self.prompts)}")
        if n == len(self.prompts):
            return self
        return PromptSet(f"{self.name}[:{n}]", self.prompts[:n])

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


def _log(log: Log, msg: str) -> None:
    if log is not None:
        log(msg)


def load_prompts(path: str | Path) -> PromptSet:
    """A prompt set from a JSONL file: one object per line with "instruction" (a non-empty string) and
    optionally "id" (string or integer; default "<file stem>/<line number>") and "dataset". Blank lines are
    skipped; other keys are ignored. The set is named after the file stem. Raises DataError naming the file
    and line for a malformed line, and for an empty file or duplicate ids."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read prompts from {path}: {e}") from e
    prompts = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        instruction = obj.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f'{where}: needs an "instruction" that is a non-empty string')
        pid = obj.get("id", f"{path.stem}/{n}")
        if isinstance(pid, bool) or not isinstance(pid, (str, int)) or not str(pid):
            raise DataError(f'{where}: "id" must be a non-empty string or an integer')
        dataset = obj.get("dataset", "")
        if not isinstance(dataset, str):
            raise DataError(f'{where}: "dataset" must be a string')
        prompts.append(Prompt(str(pid), instruction, dataset))
    if not prompts:
        raise DataError(f"{path}: no prompts (the file is empty); expected one JSON object per line")
    try:
        return PromptSet(path.stem, tuple(prompts))
    except DataError as e:
        raise DataError(f"{path}: {e}") from e
