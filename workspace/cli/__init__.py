"""`cdw`: the command line. Each command is a thin shell over the Python API; this module only gathers them."""

from __future__ import annotations

import click

from . import agents, evaluate, forum, headroom, mcp, records, router, score, search, serve
from .options import fit_to_terminal


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Collaborative Decoding Workspace: a weak model writes, a policy hands spans to a strong model."""
    fit_to_terminal()


for command in (
    serve.models, serve.serve, serve.status, serve.check,
    evaluate.decode_cmd, evaluate.eval_cmd, evaluate.sweep, search.search_cmd, evaluate.baselines,
    evaluate.judge_check_cmd,
    records.verify, records.keys, score.score_cmd,
    forum.findings_group, forum.leaderboard_cmd, forum.site_cmd, headroom.headroom_cmd,
    mcp.mcp_cmd, agents.agents_group, router.traces_group, router.probe_group,
):  # fmt: skip
    main.add_command(command)
