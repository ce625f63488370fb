"""`cdw`: the command line. Each command is a thin shell over the Python API; no logic lives here."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from servers import launcher, provision
from servers.presets import ROLES, PresetError, load_catalog
from servers.provision import ProvisionError

from . import health

console = Console(highlight=False, soft_wrap=True)
DEFAULT_PRESET = "cpu"


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)


def url_options(f):
    """--weak-url/--strong-url/--judge-url: point any command at OpenAI-compatible servers directly."""
    for role in reversed(ROLES):
        f = click.option(
            f"--{role}-url",
            default=None,
            metavar="URL[,URL…]",
            help=f"{role} server base URL(s), comma-separated replicas (else ${'CDW_' + role.upper() + '_URL'}, "
            "else what `cdw serve` started)",
        )(f)
    return f


def _urls(kw: dict) -> dict[str, str | None]:
    return {r: kw.pop(f"{r}_url", None) for r in ROLES}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Collaborative Decoding Workspace: a weak model writes, a policy hands spans to a strong model."""


# ---------------------------------------------------------------- models


@main.group()
def models() -> None:
    """Provision the models of a preset into the local cache."""


@models.command("fetch")
@click.argument("preset", default=DEFAULT_PRESET)
def models_fetch(preset: str) -> None:
    """Fetch (or build) every model PRESET serves: the hub first, else the offline sources. Idempotent."""
    try:
        for m in provision.fetch_preset(preset, log=lambda s: console.print(f"  {s}")):
            verb = "fetched" if m.fetched else "already here"
            console.print(f"[green]✓[/] {m.name}: {verb} → {m.path} (serves as {m.served_name!r}; {m.source})")
    except (PresetError, ProvisionError) as e:
        _fail(str(e))


@models.command("list")
def models_list() -> None:
    """Show every model of every preset and whether it is in the cache."""
    cat = load_catalog()
    t = Table("model", "source", "cached", "used by")
    for name, spec in cat.models.items():
        prov = provision.load_provenance(spec)
        users = [f"{p.name}/{r.role}" for p in cat.presets.values() for r in p.own_servers() if r.model == name]
        src = spec.hub or "built locally"
        t.add_row(name, src, prov["source"] if prov else "[dim]no[/]", ", ".join(users))
    console.print(t)


# ---------------------------------------------------------------- serve / status


@main.command()
@click.option(
    "--preset", default=None, help="cpu (default) | tiny | paper | paper-multi-gpu; with --stop: only this one"
)
@click.option("--roles", default=None, help="comma-separated subset of weak,strong,judge")
@click.option("--stop", is_flag=True, help="stop the servers `cdw serve` started (only those; by recorded pid)")
@click.option("--timeout", default=900.0, show_default=True, help="seconds to wait for each server's /health")
def serve(preset: str, roles: str | None, stop: bool, timeout: float) -> None:
    """Start one vLLM server per role of a preset in the background and wait until all are healthy."""
    if stop:
        stopped = launcher.stop(preset)
        for r in stopped:
            console.print(f"[green]✓[/] stopped {r.preset}/{r.role} (pid {r.pid}, {r.url})")
        if not stopped:
            console.print("no servers recorded as started by cdw")
        return
    preset = preset or DEFAULT_PRESET
    last: dict[str, str] = {}

    def on_event(e: launcher.StartEvent) -> None:
        if e.state != last.get(e.role) or (e.state == "starting" and int(e.elapsed) % 15 == 0):
            if e.state == "running":
                console.print(f"  {e.role}: already running at {e.detail}")
            elif e.state == "healthy":
                console.print(f"  [green]✓[/] {e.role}: healthy after {e.elapsed:.0f} s")
            elif e.state == "starting":
                console.print(f"  … {e.role}: starting ({e.elapsed:.0f} s)")
            last[e.role] = e.state

    t0 = time.monotonic()
    try:
        recs = launcher.serve(preset, roles.split(",") if roles else None, timeout=timeout, on_event=on_event)
    except (launcher.LaunchError, PresetError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the servers this call started were stopped", 130)
    console.print(f"[green]✓[/] preset {preset}: {len(recs)} server(s) up in {time.monotonic() - t0:.0f} s")
    for r in recs:
        console.print(f"  {'+'.join(r.serves)}: {r.url}  model {r.model}  log {r.log}")


@main.command()
@url_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def status(as_json: bool, **kw) -> None:
    """Per role: URL, served model, health, vLLM version, and where the endpoint came from."""
    rows = asyncio.run(health.status(_urls(kw)))
    if as_json:
        out = [
            {
                "role": s.role, "healthy": s.healthy, "error": s.error,
                "origin": s.endpoint.origin if s.endpoint else None, "note": s.endpoint.note if s.endpoint else "",
                "replicas": [vars(r) | {"models": list(r.models)} for r in s.replicas],
            }
            for s in rows
        ]  # fmt: skip
        click.echo(json.dumps(out, indent=2))
        return
    t = Table("role", "url", "model", "health", "vLLM", "from")
    for col in t.columns[:3]:
        col.no_wrap = True
    notes = []
    for s in rows:
        if s.endpoint is None:
            t.add_row(s.role, "—", "—", "[red]no server[/]", "", s.error or "")
            continue
        for r in s.replicas:
            state = "[green]healthy[/]" if r.healthy else f"[red]down[/] {r.error or ''}"
            t.add_row(s.role, r.url, ", ".join(r.models) or "?", state, r.version or "", s.endpoint.origin)
        if s.endpoint.note:
            notes.append(f"[yellow]{s.role}: {s.endpoint.note}[/]")
    console.print(t)
    for n in notes:
        console.print(n)
    if not all(s.healthy for s in rows):
        sys.exit(1)


@main.command()
@url_options
def check(**kw) -> None:
    """Send one real request to each role and show its answer."""
    ok = True
    for c in asyncio.run(health.check(_urls(kw))):
        mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
        console.print(f"{mark} [bold]{c.role}[/] ({c.seconds:.1f} s) {c.request}")
        console.print(f"    → {c.answer.strip()!r}" if c.ok else f"    {c.answer}")
        if c.detail:
            console.print(f"    {c.detail}")
        if c.note:
            console.print(f"    [yellow]note: {c.note}[/]")
        ok &= c.ok
    if not ok:
        sys.exit(1)


@main.command("decode")
@click.argument("instruction")
@click.option("--policy", "spec", default="margin(tau=0.05, span=sentence)", show_default=True, help="policy spec")
@click.option("--max-tokens", default=256, show_default=True, help="answer length limit (weak tokens)")
@click.option("--json", "as_json", is_flag=True, help="print the decode as JSON")
@url_options
def decode_cmd(instruction: str, spec: str, max_tokens: int, as_json: bool, **kw) -> None:
    """Collaboratively decode one INSTRUCTION; weak spans plain, strong spans highlighted."""
    from .endpoints import EndpointError
    from .engine import EngineSettings, Models, decode
    from .policies import PolicyError, load_policy

    try:
        policy = load_policy(spec)
        models = Models.from_endpoints(_urls(kw))
    except (PolicyError, EndpointError) as e:
        _fail(str(e))

    async def run():
        try:
            return await decode(instruction, policy, models, EngineSettings(max_tokens=max_tokens))
        finally:
            await models.close()

    d = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(d.to_json(), ensure_ascii=False, indent=2))
    else:
        for seg in d.segments:
            console.print(seg.text, style="bold magenta" if seg.author == "strong" else None, end="", markup=False)
        console.print()
        f = "n/a" if d.f_weak is None else f"{d.f_weak:.2f}"
        console.print(
            f"[dim]f_weak {f} · {d.num_deferrals} deferral(s) · {d.finish_reason} · {d.seconds:.1f} s · "
            f"{policy.describe()} · [bold magenta]strong[/bold magenta] / weak[/dim]"
        )
    if d.error:
        console.print(f"[bold red]error:[/] {d.error}")
        sys.exit(1)


if __name__ == "__main__":
    main()
