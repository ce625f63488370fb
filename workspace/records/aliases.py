"""Aliases: an evaluation id that a change of policy identity re-keyed, pointing at the record that holds it.

A policy's identity is part of its evaluation's id. When the rule that computes identities changes (an *identity
epoch*), the same command computes a new id for an evaluation already on record. The project's committed
`records/aliases.json` maps such new ids to the records' own ids, so the command reads its record back instead of
starting a new run. The records themselves are never rewritten: they keep their ids, headers and signatures.

Like the trusted keys, the aliases are the project's own (`servers.settings.paths().aliases`), never a file found
inside a records folder `CDW_RECORDS_DIR` points at: a folder of records cannot choose which record a command reads.

An alias cannot make a command read another evaluation: `resolve` follows one only to a record whose header names
the same policy spec and the same baselines the command asked for (only the policy's source hash may differ).
"""

from __future__ import annotations

import json

from servers.settings import paths

from .log import StoreError, read_record, record_path


def table() -> dict[str, dict]:
    """new evaluation id -> {"id": the record's id, "why": ...}, from the project's aliases file; empty without one."""
    path = paths().aliases
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["evaluations"])
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}: not an aliases file ({type(e).__name__}: {e})") from None


def resolve(evaluation_id: str, policy: str, baselines: str) -> str:
    """The id of the record that holds this evaluation: its own when a record has it (or none does and no alias
    names it), else the aliased record's, if that record is of the same policy spec and baselines."""
    if record_path("evaluations", evaluation_id).exists():
        return evaluation_id
    entry = table().get(evaluation_id)
    if entry is None:
        return evaluation_id
    record = read_record("evaluations", entry["id"])
    if record is None:
        return evaluation_id
    header = record.header
    if header.get("policy") != policy or header.get("baselines") != baselines:
        raise StoreError(
            f"alias {evaluation_id} -> {entry['id']}: that record is of {header.get('policy')!r} on baselines "
            f"{header.get('baselines')}, not {policy!r} on {baselines}"
        )
    return entry["id"]
