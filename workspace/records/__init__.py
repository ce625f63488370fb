"""Evaluation records: what was run and what came back, kept so that every number can be recomputed and checked.

- ``schema``: every line of a record as a typed struct, one codec, record ids;
- ``log``: the append-only record files (``RecordWriter``, ``read_record``, ``list_records``);
- ``signing``: this workspace's Ed25519 key and the keys a group trusts;
- ``verify``: the offline checks of a record (``check(kind, id)``).

Nothing is re-exported here: importing the log (as the CLI does) does not load the checks, which need the judge
and the benchmarks.
"""
