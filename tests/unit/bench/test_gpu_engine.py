"""``bench/gpu_engine.py`` on the tiny shape on the CPU: a few rows, a few tokens, two adapters, no compile.

Checks what the GPU figures rest on -- every case measured with a positive throughput, every continuous case one
prefill then one decode step per further token, the JSON written, exact prompt lengths, adapters that load into
the engine as written -- and the two ratio lines printed last. No assertion on wall-clock values.
"""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch

from bench import gpu_engine as bench

NEW_TOKENS = 3
TINY = ["--shape", "tiny", "--device", "cpu", "--rows", "1", "3", "--hf-rows", "3", "--new-tokens", str(NEW_TOKENS),
        "--prompt-tokens", "20", "--warmup-tokens", "2", "--adapters", "2", "--no-compile"]


@pytest.fixture(scope="module")
def tokenizer():
    from modelstore.tiny import build_tokenizer

    return build_tokenizer()


def test_every_case_measured_and_the_ratio_lines_last(tmp_path, capsys):
    # Graphed decode as on CUDA, its step run eagerly on the CPU: the mixed rows are measured again without it.
    doc = bench.main([*TINY, "--decode-graphs", "static", "--out", str(tmp_path)])

    expected = {f"continuous/{mode}/{rows}" for mode in bench.MODES for rows in (1, 3)}
    expected |= {f"static/{mode}/3" for mode in bench.MODES} | {"hf/eager/3", "hf/static/3"}
    expected |= {"continuous/mixed_gather/3"}  # the mixed rows again, the per-row gather on every decode step
    expected |= {"continuous/mixed_eager/3"}  # ... and with decode graphs paused
    written = json.loads((tmp_path / "tiny-cpu.json").read_text())
    assert set(written["cases"]) == set(doc["cases"]) == expected
    for name, case in written["cases"].items():
        assert "error" not in case, (name, case.get("error"))
        assert case["tokens_per_s"] > 0 and case["decode_tokens_per_s"] > 0, name
        assert case["decode_steps"] == NEW_TOKENS - 1, name
        assert case["ttft_ms"] >= 0 and case["peak_memory_bytes"] > 0, name
        if case["path"] == "continuous":
            assert case["prefills"] == 1, name  # all rows joined in one prefill
            assert case["prefix_hits"] == 0, name  # fresh prompts: no run is served from a warm-up's blocks
    assert written["cases"]["continuous/mixed/3"]["adapters"] == 2
    assert written["cases"]["continuous/mixed_gather/3"]["lora_decode_kernel"] == "gather"
    assert written["cases"]["continuous/mixed_eager/3"]["decode_graphs"] == "off"
    assert written["decode_graphs"]["decode_graphs"] == "static"
    assert written["decode_graphs"]["decode_graph_replays"] > 0
    assert written["cases"]["hf/static/3"]["compiled"] is False
    assert written["lora_layers_stripped"] == 4 * 7 + 1  # tiny: 4 layers x 7 projections, and lm_head
    assert written["roofline"]["floor_ms_per_step"] > 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"mixed2_dense_vs_gather_decode_ms_at_3: \S+", lines[-5])
    assert lines[-4] == "mixed2_bgmv_vs_dense_decode_ms_at_3: nan"  # measured on CUDA only
    assert re.fullmatch(r"mixed2_graphed_vs_eager_decode_ms_at_3: \S+", lines[-3])
    assert all(float(line.split(": ")[1]) > 0 for line in (lines[-5], lines[-3]))
    assert re.fullmatch(r"mixed2_vs_compiled_hf_at_3: \S+", lines[-2])
    assert re.fullmatch(r"roofline_fraction_at_3: \S+", lines[-1])
    values = [float(line.split(": ")[1]) for line in lines[-2:]]
    assert all(math.isfinite(v) and v > 0 for v in values)
    assert values[0] == pytest.approx(written["ratios"]["mixed2_vs_compiled_hf_at_3"], rel=1e-3)


def test_ratio_names_at_the_defaults():
    doc = {"cases": {"continuous/mixed/32": {"tokens_per_s": 300.0, "decode_tokens_per_s": 400.0},
                     "hf/static/32": {"tokens_per_s": 200.0, "decode_tokens_per_s": 250.0, "compiled": True}},
           "roofline": {"tokens_per_s": {"32": 1000.0}}}
    got = bench.ratios(doc, argparse.Namespace(hf_rows=32, adapters=8))
    assert list(got)[:2] == ["mixed8_vs_compiled_hf_at_32", "roofline_fraction_at_32"]
    assert got["mixed8_vs_compiled_hf_at_32"] == pytest.approx(1.5)
    assert got["roofline_fraction_at_32"] == pytest.approx(0.4)


def test_prompts_have_the_exact_length_and_differ(tokenizer):
    make = bench.PromptMaker(tokenizer, 37, seed=0)
    prompts = make(4) + make(4)
    assert len(set(prompts)) == 8
    assert {len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts} == {37}


def test_adapters_load_into_the_engine_as_written(tokenizer, tmp_path):
    from safetensors.torch import load_file

    from engine import EngineConfig, InferenceEngine

    config = bench.shape_config("tiny", tokenizer, 2, torch.float32)
    model = bench.build_model(config, torch.device("cpu"), torch.float32, seed=0)
    dirs = bench.write_adapters(config, tmp_path, count=2, rank=4, dtype=torch.float32, seed=1)
    engine = InferenceEngine(model, tokenizer, EngineConfig())
    for i, path in enumerate(dirs):
        engine.load_adapter(f"a{i}", path)
    saved = load_file(str(dirs[1] / "adapter_model.safetensors"))
    assert len(saved) == 2 * (2 * 7 + 1)  # A and B of 2 layers x 7 projections and lm_head
    # The engine's second adapter sits at entry 2 of every layer's stacked buffers (B^T times alpha / r), in the
    # module order PEFT wraps them -- the order of the saved keys.
    buffers = engine.adapters.stacked.tensors()
    layer_names = sorted({k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in saved},
                         key=[n for n, _ in model.named_modules()].index)
    assert len(buffers) == 2 * len(layer_names)
    scaling = json.loads((dirs[1] / "adapter_config.json").read_text())
    scaling = scaling["lora_alpha"] / scaling["r"]
    for (a, b), name in zip(zip(buffers[::2], buffers[1::2]), layer_names):
        assert torch.equal(a[2], saved[f"base_model.model.{name}.lora_A.weight"]), name
        assert torch.allclose(b[2], saved[f"base_model.model.{name}.lora_B.weight"].T * scaling), name
    assert bench.strip_lora(model) == 2 * 7 + 1
    assert not any("lora_" in n for n, _ in model.named_parameters())
