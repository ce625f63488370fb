"""`cdw traces collect|label|show` and `cdw probe train`: the learned-router workflow, over the Python API of
`workspace.router` (traces, labels, train)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from .options import console, eval_setup, fail, prompt_options, prompt_set, reuse_option, reuse_store, url_options, urls
from .tables import say, show

SOURCES = ("disagreement", "disagreement_words", "outcome")  # workspace.router.labels.SOURCES (not imported: startup)


@click.group("traces")
def traces_group() -> None:
    """Per-token traces of decodes, and labels for them (what a learned router trains on)."""


@traces_group.command("collect")
@click.option("--policy", "spec", default="never", show_default=True, help="the policy decoding while traced")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="traces folder (default .cdw/traces/<benchmark>-<split or set>)")  # fmt: skip
@prompt_options
@url_options
def traces_collect(spec: str, out: str | None, **kw) -> None:
    """Decode a prompt set and write every weak token's signals (resumable: done problems are skipped).

    Example: cdw traces collect --benchmark humaneval --split train
    """
    from ..policies import PolicyError
    from ..router.traces import TraceError, collect, default_dir

    prompts = prompt_set(kw)
    bench = kw["benchmark"]
    setup, settings = eval_setup(kw)
    folder = Path(out) if out else default_dir(bench, prompts)

    async def run():
        try:
            names = await setup.names(judge=False)
            return await collect(prompts, setup.models, folder, policy=spec, settings=settings.engine,
                                 benchmark=bench, model_names=names)  # fmt: skip
        finally:
            await setup.close()

    try:
        t = asyncio.run(run())
    except (TraceError, PolicyError) as e:
        fail(str(e))
    click.echo(f"{folder}: {len(t.decodes)} problems, {len(t.tokens)} token rows")


@traces_group.command("label")
@click.option("--traces", "path", required=True, type=click.Path(file_okay=False, exists=True), help="traces folder")
@click.option("--source", type=click.Choice(SOURCES), default="disagreement", show_default=True)
@click.option("--per-problem", default=16, show_default=True, help="positions labelled per problem (stratified)")
@click.option("--seed", default=0, show_default=True)
@click.option("--no-cache", is_flag=True, help="do not answer repeated requests from the call cache")
@reuse_option
@url_options
def traces_label(path: str, source: str, per_problem: int, seed: int, no_cache: bool, **kw) -> None:
    """Label sampled positions of a traces folder (resumable; a rerun is answered from the call cache)."""
    from ..cache import CallCache
    from ..endpoints import EndpointError
    from ..evaluate import Setup
    from ..router.labels import label
    from ..router.traces import TraceError, read

    try:
        traces = read(path)
        setup = Setup.from_endpoints(urls(kw), None if no_cache else CallCache(), reuse=reuse_store(kw))
    except (TraceError, EndpointError) as e:
        fail(str(e))

    async def run():
        try:
            return await label(traces, source, setup.models, per_problem=per_problem, seed=seed)
        finally:
            await setup.close()

    try:
        labels = asyncio.run(run())
    except TraceError as e:
        fail(str(e))
    pos = sum(r.label for r in labels)
    click.echo(f"{path}: {len(labels)} {source} labels, {pos} harmful ({pos / max(1, len(labels)):.1%})")


@traces_group.command("show")
@click.argument("path", type=click.Path(file_okay=False, exists=True))
def traces_show(path: str) -> None:
    """What a traces folder holds: problems, token rows, labels per source and their positive rates."""
    from ..router.labels import SOURCES, read_labels
    from ..router.traces import TraceError, read

    try:
        t = read(path)
    except TraceError as e:
        fail(str(e))
    m = t.meta
    head = [f"{path}: {m.get('prompts')}", f"under {m.get('policy')}", f"{len(t.decodes)} problems",
            f"{len(t.tokens)} token rows", f"top-{m.get('top_k')} logprobs", f"models {m.get('models')}"]  # fmt: skip
    say(console, head)
    for s in SOURCES:
        labs = read_labels(t, s)
        if labs:
            pos = sum(r.label for r in labs)
            click.echo(f"  labels {s}: {len(labs)}, harmful {pos} ({pos / len(labs):.1%})")


@click.group("probe")
def probe_group() -> None:
    """Learned routers: train one on labelled traces; use it as `probe(path=..., tau=...)`."""


@probe_group.command("train")
@click.option("--traces", "path", required=True, type=click.Path(file_okay=False, exists=True), help="traces folder")
@click.option("--source", type=click.Choice(SOURCES), default="disagreement", show_default=True)
@click.option("--model", "kind", type=click.Choice(["trees", "logistic"]), default="trees", show_default=True)
@click.option("--holdout", default=0.25, show_default=True, help="share of the traces' problems held out for AUCs")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="weights file to write (.json)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def probe_train(path: str, source: str, kind: str, holdout: float, seed: int, out: str, as_json: bool) -> None:
    """Fit a probe (problem-level split), report held-out ROC/PR-AUC beside margin, entropy and top-1, and write
    its weights as JSON.

    Example: cdw probe train --traces .cdw/traces/humaneval-train --out probes/humaneval-trees.json
    """
    from ..router.traces import TraceError, read
    from ..router.train import ProbeError, save, train

    if not out.endswith(".json"):
        fail("--out: a probe's weights are a .json file")
    try:
        obj, report = train(read(path), source, kind, test_fraction=holdout, seed=seed)
    except (TraceError, ProbeError) as e:
        fail(str(e))
    save(obj, out)
    if as_json:
        click.echo(json.dumps({"weights": out, **report.to_json()}, indent=2))
        return
    title = (f"held-out problems: {report.test_problems} ({kind}, {source} labels, {report.train_rows} training "
             f"rows, {report.positive_rate:.1%} harmful)")  # fmt: skip
    rows = [[name, str(s.roc_auc), str(s.pr_auc), str(s.n), str(s.positives)] for name, s in report.held_out.items()]
    show(console, title, ["scorer", "ROC-AUC", "PR-AUC", "rows", "harmful"], rows)
    click.echo("top features: " + ", ".join(f"{n} {v:.3f}" for n, v in report.importances[:6]))
    rates = ", ".join(f"{r}: {t}" for r, t in report.tau_for_rate.items())
    click.echo(f"probe τ by share of tokens it defers at: {rates}")
    click.echo("margin's share of tokens by τ: " + ", ".join(f"{t}: {r}" for t, r in report.margin_rate.items()))
    click.echo(f"wrote {out}: use it as probe(path='{out}', tau=0.5, span=newline)")
