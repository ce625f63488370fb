"""A policy's identity is the code that decides its behaviour (workspace/policies/identity.py): editing anything
else — another family, a comment, a docstring, the file's place — keeps it; editing what it runs changes it."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.fakeserver import ToyModel
from workspace.cli import main
from workspace.policies import families, load_policy
from workspace.policies.identity import code_identity

FAMILIES = Path(families.__file__).read_text()
HELPER = """

def _halve(x):
    return x / 2


class Halved(Margin):
    def score(self, s):
        return _halve(super().score(s))
"""


def _module(tmp_path: Path, name: str, text: str):
    """Import `text` as a fresh module from its own file (a stand-in for an edited or moved families.py)."""
    path = tmp_path / name / "families_copy.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    # `register` would refuse a second class under a built-in name: the copies register nothing.
    text = text.replace("@register(", "@(lambda name: (lambda cls: cls))(")
    text = text.replace("from .", "from workspace.policies.")
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(f"cdw_identity_test_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_unrelated_edits_and_moves_keep_a_policys_identity(tmp_path):
    base = _module(tmp_path, "base", FAMILIES + HELPER)
    # Another family added, a comment and another class's docstring edited, the file moved elsewhere.
    edited = FAMILIES.replace("# ---------------------------------------------------------------- wrappers",
                              "# wrappers: policies over policies")  # fmt: skip
    edited = edited.replace('"""Defer when p1 < tau', '"""Defers when p1 is below tau')
    edited = edited.replace('    """Defer when p1 - p2 < tau (the weak model hesitates between two tokens)."""\n', "")
    other = _module(tmp_path, "moved/elsewhere", edited + HELPER + "\n\nclass NewFamily(Never):\n    top_k = 3\n")
    for name in ("Margin", "Never", "Always", "Hysteresis", "Budget", "Halved"):
        assert code_identity(getattr(base, name)) == code_identity(getattr(other, name)), name
    assert code_identity(other.NewFamily) != code_identity(other.Never)


def test_edits_to_what_a_policy_runs_change_its_identity(tmp_path):
    base = _module(tmp_path, "base", FAMILIES + HELPER)
    body = _module(tmp_path, "body", FAMILIES.replace("return s.p1 - s.p2", "return s.p1 - 2 * s.p2") + HELPER)
    helper = _module(tmp_path, "helper", FAMILIES + HELPER.replace("x / 2", "x / 3"))
    parent = _module(tmp_path, "parent", FAMILIES.replace("fire = v < self.tau if", "fire = v <= self.tau if") + HELPER)
    assert code_identity(body.Margin) != code_identity(base.Margin)
    assert code_identity(body.Entropy) == code_identity(base.Entropy)  # same file, untouched class
    assert code_identity(helper.Halved) != code_identity(base.Halved)  # a helper it calls
    assert code_identity(helper.Margin) == code_identity(base.Margin)
    assert code_identity(parent.Margin) != code_identity(base.Margin)  # a base class's code
    assert code_identity(parent.Never) == code_identity(base.Never)


def test_arguments_inner_policies_and_weights_are_part_of_the_record_identity():
    m = load_policy("margin(tau=0.1, span=newline)")
    assert m.source_hash() == load_policy("margin(tau=0.3)").source_hash()  # arguments live in the spec
    wrapped = load_policy("hysteresis(margin(tau=0.1), k=2)")
    assert wrapped.source_hash() != load_policy("hysteresis(entropy(tau=1.0), k=2)").source_hash()
    assert wrapped.source_hash() != load_policy("hysteresis(margin(tau=0.1), k=2)").inner.source_hash()
    a = load_policy("probe(path='probes/humaneval-logistic.json')").source_hash()
    assert a != load_policy("probe(path='probes/humaneval-trees.json')").source_hash()


# ---------------------------------------------------------------- the committed evaluations read back

ROOT = Path(__file__).resolve().parent.parent
# The evaluations recorded before the identity epoch, which read back only through records/aliases.json (records
# made since carry their current ids; a search's rung records name prompt sets no plain `cdw eval` spells).
_ALIASED = {e["id"] for e in json.loads((ROOT / "records" / "aliases.json").read_text())["evaluations"].values()}
COMMITTED = sorted(p for p in (ROOT / "records" / "evaluations").glob("*.jsonl") if p.stem in _ALIASED)


def _header(path: Path) -> dict:
    return json.loads(path.open().readline())


@pytest.fixture
def committed_records(tmp_path, monkeypatch):
    """A copy of the project's records folder (the command may write nothing to it, but it must not be the real
    one), trusted as the project trusts it."""
    folder = tmp_path / "records"
    shutil.copytree(ROOT / "records", folder)
    monkeypatch.setenv("CDW_RECORDS_DIR", str(folder))
    monkeypatch.setenv("CDW_TRUSTED_KEYS", str(ROOT / "records" / "trusted_keys.txt"))
    return folder


def test_every_alias_names_a_committed_evaluation():
    assert len(_ALIASED) == 13 and {p.stem for p in COMMITTED} == _ALIASED


# In the fast tier three records (each test copies the records folder and reads one back: ~0.7 s): a margin gate on
# humaneval:test, a probe (its weights file is part of its identity) and never-defer on all of humaneval; every other
# committed record (each policy family and prompt set) in the slow tier.
FAST_COMMITTED = {"0a202bb0d48f01b4", "79bdfc165298bf29", "e57dd0385e552233"}


@pytest.mark.parametrize(
    "path",
    [p if p.stem in FAST_COMMITTED else pytest.param(p, marks=pytest.mark.slow) for p in COMMITTED],
    ids=[p.stem for p in COMMITTED],
)
def test_the_commands_that_made_the_committed_evaluations_read_them_back(path, committed_records, start_toys,
                                                                          monkeypatch):  # fmt: skip
    """`cdw eval` as it made each committed evaluation, against servers that serve the same models: the record
    is found again through records/aliases.json and read back; no model is asked anything."""
    h = _header(path)
    models = _header(ROOT / "records" / "baselines" / f"{h['baselines']}.jsonl")["models"]
    toys = start_toys(weak=ToyModel(name=models["weak"]), strong=ToyModel(name=models["strong"], seed=2))
    for k, v in toys.env.items():
        monkeypatch.setenv(k, v)
    split = h["prompts"]["name"].partition(":")[2]
    args = ["eval", "--benchmark", h["benchmark"], "--policy", h["policy"], "--json", "--no-cache"]
    result = CliRunner().invoke(main, args + (["--split", split] if split else []))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["evaluation_id"] == path.stem and out["n"] == len(h["prompts"]["ids"])
    asked = {p: n for s in toys.values() for p, n in s.hits.items() if "completions" in p}
    assert not asked, f"the servers were asked to decode: {asked}"
    committed = sorted(p.name for p in (ROOT / "records" / "evaluations").glob("*.jsonl"))
    assert sorted(p.name for p in (committed_records / "evaluations").iterdir()) == committed  # nothing written


def test_an_alias_cannot_point_at_another_policys_record(committed_records):
    """An alias is followed only to a record of the same policy spec and baselines."""
    from workspace.records import aliases
    from workspace.records.log import StoreError

    new, entry = next(iter(aliases.table().items()))
    h = _header(committed_records / "evaluations" / f"{entry['id']}.jsonl")
    assert aliases.resolve(new, h["policy"], h["baselines"]) == entry["id"]
    assert aliases.resolve("0" * 16, h["policy"], h["baselines"]) == "0" * 16  # no alias: its own id
    with pytest.raises(StoreError, match="not"):
        aliases.resolve(new, "never", h["baselines"])


def test_a_records_folder_cannot_bring_its_own_aliases(toys, records_dir, tmp_path):
    """Aliases come only from the project's committed file: a records folder holding its own aliases.json, which
    maps the id a command computes to a forged record, is not followed (the command makes its own record)."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"Task {i}: do it."}) + "\n" for i in range(2)))
    args = ["eval", "--policy", "never", "--prompts", str(prompts), "--max-tokens", "8", "--json",
            *(f"--{role}-url={url}" for role, url in toys.urls.items())]  # fmt: skip
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    eid = json.loads(first.stdout)["evaluation_id"]
    # The forger: the record moved under another id (same policy and baselines), aliased from the command's id by
    # the folder's own aliases file.
    forged = "f" * 16
    (records_dir / "evaluations" / f"{eid}.jsonl").rename(records_dir / "evaluations" / f"{forged}.jsonl")
    (records_dir / "aliases.json").write_text(json.dumps({"evaluations": {eid: {"id": forged, "why": "forged"}}}))
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["evaluation_id"] == eid
    assert (records_dir / "evaluations" / f"{eid}.jsonl").is_file()  # evaluated anew, under its own id
