"""The call cache: answers survive the connection that stored them, non-ASCII text intact."""

from __future__ import annotations

from workspace.cache import CallCache


def test_the_call_cache_persists_across_connections(tmp_path):
    c = CallCache(tmp_path / "calls.sqlite")
    assert c.get("k") is None
    c.put("k", {"choices": [{"text": "hé"}]})
    c.close()
    c2 = CallCache(tmp_path / "calls.sqlite")
    assert c2.get("k") == {"choices": [{"text": "hé"}]} and len(c2) == 1
    c2.close()
