"""`cdw verify|keys`: check an evaluation record offline; this workspace's signing key."""

from __future__ import annotations

import json
import os
import sys

import click

from .options import console, fail, run_closing, url_options, urls


@click.command()
@click.argument("evaluation_id")
@click.option("--replay", "replay_k", type=int, default=0, metavar="K",
              help="also decode and judge K seeded prompts again, without the call cache, and compare")  # fmt: skip
@click.option("--json", "as_json", is_flag=True)
@url_options
def verify(evaluation_id: str, replay_k: int, as_json: bool, **kw) -> None:
    """Check an evaluation record offline: ids, signatures and trusted key, texts vs segments, verdicts vs the
    texts they judged, baselines, and how many of its prompts it holds (and its writer sessions). An evaluation the
    early stopping rule ended holds only the prompts it ran: the stop is taken again on its results. Exit 0 when it
    verifies and is complete (or stopped, by a stop that follows from its results), 1 with the reasons when not."""
    from ..records.verify import check

    c = check("evaluation", evaluation_id)
    out = {"evaluation_id": evaluation_id, "valid": c.valid, "verified": c.verified, "reason": c.reason,
           "problems": list(c.problems), "signed_by": c.signed_by, "trusted_by": c.trusted_by,
           "coverage": c.coverage.to_json() if c.coverage else None}  # fmt: skip
    stopped, stop_problem = _stopped(evaluation_id) if c.valid else (None, None)
    out["stopped"], out["stop_problem"] = stopped, stop_problem
    complete = c.coverage is not None and (c.coverage.complete or (stopped is not None and stop_problem is None))
    ok = c.verified and complete
    if replay_k:
        from ..endpoints import EndpointError
        from ..evaluate import EvaluationError, Setup, replay

        try:
            setup = Setup.from_endpoints(urls(kw))  # no call cache: ask the servers again
        except EndpointError as e:
            fail(str(e))
        r = run_closing(replay(evaluation_id, setup, replay_k), setup, EvaluationError)
        out["replay"] = r.to_json()
        ok = ok and r.agrees
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        if c.verified:
            console.print(f"[green]✓[/] {evaluation_id} verifies (signed by {c.trusted_by})")
        else:
            console.print(f"[red]✗[/] {evaluation_id} does not verify: {c.reason}")
            for p in c.problems[:20]:
                console.print(f"  [red]-[/] {p}")
        if c.coverage is not None:
            mark = "[green]✓[/]" if complete else "[red]✗[/]"
            console.print(f"{mark} {c.coverage.describe()}")
        if stopped is not None:
            mark, why = ("[green]✓[/]", "the stop follows from its results") if stop_problem is None else \
                ("[red]✗[/]", stop_problem)  # fmt: skip
            console.print(f"{mark} stopped early after {stopped['n']} of {stopped['of']} prompts: {stopped['reason']}; "
                          f"{why}")  # fmt: skip
        if "replay" in out:
            r = out["replay"]
            if r["policy_changed"]:
                console.print(f"[red]✗[/] replay: {r['policy_changed']}")
            else:
                console.print(f"replay of {len(r['prompt_ids'])} prompts: {r['same_text']} same text, "
                              f"{r['same_verdict']} same verdict (±{r['tolerance']})")  # fmt: skip
            for m in r["mismatches"]:
                console.print(f"  [red]-[/] {m['prompt_id']}: {m['what']}")
    sys.exit(0 if ok else 1)


def _stopped(evaluation_id: str) -> tuple[dict | None, str | None]:
    """The stopped line that ended the evaluation (None: not stopped) and why it does not follow from the record's
    results (None: it does)."""
    from ..evaluate import EvaluationError, load_evaluation
    from ..records.log import StoreError
    from ..records.schema import to_fields

    try:
        ev = load_evaluation(evaluation_id)
    except (EvaluationError, StoreError):
        return None, None  # the offline checks above say what is wrong with it
    if ev.stopped is None:
        return None, None
    return to_fields(ev.stopped), ev.stop_problem()


@click.command()
def keys() -> None:
    """This workspace's public key: the line to add to records/trusted_keys.txt (by a commit the group reviews)."""
    from ..records.signing import key_path, public_key, trusted_keys, trusted_keys_file

    key = public_key()
    trusted = trusted_keys().get(key)
    console.print(f"{key} {os.environ.get('USER', 'someone')}@workspace")
    console.print(f"[dim]private key {key_path()} · "
                  f"{'trusted as ' + trusted.who if trusted else 'not in ' + str(trusted_keys_file())}[/]")  # fmt: skip
