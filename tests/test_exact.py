"""`cdw check --exact`: never and always against the models' own answers, on the toy servers."""

from __future__ import annotations

from dataclasses import dataclass

from click.testing import CliRunner

from tests.fakeserver import STRONG_EXTRA, ToyModel
from workspace.client import ModelClient
from workspace.endpoints import Endpoint
from workspace.evaluate import Setup, check_exact


def setup_of(toys) -> Setup:
    return Setup(*(ModelClient(Endpoint(r, (toys[r].url,), toys[r].model.name)) for r in ("weak", "strong", "judge")))


async def test_never_and_always_equal_the_toys_own_answers(toys):
    async with setup_of(toys) as setup:
        report = await check_exact(setup, n=3, max_tokens=40)
    assert report.ok and report.max_tokens == 40 and report.benchmark == "alpaca_eval"
    assert [(c.policy, c.role, c.equal, c.n, c.first) for c in report.checks] == [
        ("never", "weak", 3, 3, None), ("always", "strong", 3, 3, None)]  # fmt: skip


@dataclass
class Drifting(ToyModel):
    """A strong model whose fresh answers see one more character of prompt than its continuations do: its own
    answers and always-defer part ways, as near-ties flipped by batch-dependent kernels would make them."""

    def render(self, messages, add_generation_prompt, continue_final, template_kwargs=None):
        text = super().render(messages, add_generation_prompt, continue_final, template_kwargs)
        return text + "~" if add_generation_prompt and not continue_final else text


async def test_a_difference_is_reported_where_it_starts(toys):
    toys.strong.model = Drifting(name="strong", seed=2, reverse=True, eos_after=100, extra=STRONG_EXTRA)
    async with setup_of(toys) as setup:
        report = await check_exact(setup, n=3, max_tokens=40)
    never, always = report.checks
    assert never.ok and not always.ok and not report.ok
    d = always.first
    assert d.prompt_id.startswith("alpaca_eval/") and d.offset >= 0 and d.decoded != d.own
    assert d.decoded[min(d.offset, 30) :][:1] != d.own[min(d.offset, 30) :][:1]  # the windows part at the offset


def test_cdw_check_exact_prints_the_counts_and_fails_on_a_difference(toys, monkeypatch):
    from workspace.cli import main

    for k, v in toys.env.items():
        monkeypatch.setenv(k, v)
    r = CliRunner().invoke(main, ["check", "--exact", "--n", "2", "--max-tokens", "30"])
    assert r.exit_code == 0, r.output
    assert "never = the weak model's own answers: 2/2" in r.output
    assert "always = the strong model's own answers: 2/2" in r.output
    toys.strong.model = Drifting(name="strong", seed=2, reverse=True, eos_after=100, extra=STRONG_EXTRA)
    r = CliRunner().invoke(main, ["check", "--exact", "--n", "2", "--max-tokens", "30"])
    assert r.exit_code == 1 and "first difference:" in r.output and "0/2" in r.output, r.output
