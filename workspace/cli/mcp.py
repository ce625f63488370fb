"""`cdw mcp`: serve the agents' tools (workspace/mcp_server.py) over MCP."""

from __future__ import annotations

import click

from .options import reuse_option, url_options, urls


@click.command("mcp")
@click.option("--http", is_flag=True, help="serve streamable HTTP on 127.0.0.1 instead of stdio")
@click.option("--port", default=8765, show_default=True, help="HTTP port (with --http)")
@click.option("--token", default=None, help="bearer token for --http (else $CDW_MCP_TOKEN, else one is generated)")
@click.option("--author", default=None, help="author of the findings agents share (else $CDW_AUTHOR, else login)")
@click.option("--no-cache", is_flag=True, help="do not answer repeated requests from the call cache")
@click.option("--policies", type=click.Path(file_okay=False), default=None,
              help="policy folder to load from and write to (else $CDW_POLICIES_DIR, else policies/)")  # fmt: skip
@click.option("--budget-evals", type=int, default=None, help="evaluations this server may start (enforced)")
@click.option("--budget-prompts", type=int, default=None, help="prompts its evaluations may cover in all (enforced)")
@click.option("--usage", type=click.Path(dir_okay=False), default=None,
              help="file the budgets count in (default: .usage.json in the policy folder)")  # fmt: skip
@click.option("--max-in-flight", type=int, default=None, help="requests in flight per model server (a share)")
@reuse_option
@url_options
def mcp_cmd(http: bool, port: int, token: str | None, author: str | None, no_cache: bool, policies, budget_evals,
            budget_prompts, usage, max_in_flight, no_reuse: bool, **kw) -> None:  # fmt: skip
    """Serve the agents' tools over MCP (stdio by default); AGENTS.md has a client configuration."""
    from pathlib import Path

    from ..mcp_server import serve, server_config

    config = server_config(urls(kw), author, not no_cache, Path(policies) if policies else None, budget_evals,
                           budget_prompts, Path(usage) if usage else None, max_in_flight, not no_reuse)  # fmt: skip
    serve(config, http=http, port=port, token=token)
