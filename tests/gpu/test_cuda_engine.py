"""The engine's CUDA-only paths on a real GPU: captured decode graphs and the compiled Triton BGMV kernels.

Skipped without a CUDA device (the CPU suite checks the same step functions uncaptured and the kernels through
Triton's interpreter); run on a lent GPU by ``bench/on_device.sh``. Each row must give exactly the tokens it
gives through the eager path on the same device (fp32, so no bf16 rounding can flip a greedy choice between
the two paths' different GEMM shapes).
"""

from __future__ import annotations

import pytest
import torch

from engine import EngineConfig, GenerationRequest, InferenceEngine, SamplingParams
from tests.unit.engine.conftest import adapter_dirs, tiny_base_dir, tokenizer  # noqa: F401 (fixtures)
from tests.unit.engine.helpers import ADAPTER_NAMES, chat

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def cuda_engine(tiny_base_dir, tokenizer, adapter_dirs):  # noqa: F811
    from transformers import AutoModelForCausalLM

    def build(**config) -> InferenceEngine:
        model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).to("cuda")
        engine = InferenceEngine(model, tokenizer, EngineConfig(**config))
        for name, path in adapter_dirs.items():
            engine.load_adapter(name, path)
        return engine

    return build


def _rows(tokenizer, n: int) -> list[GenerationRequest]:  # noqa: F811
    adapters = [None, *ADAPTER_NAMES]
    return [GenerationRequest(prompt=chat(tokenizer, f"Story {i}: " + "the council met again " * (i % 5)),
                              adapter=adapters[i % 4],
                              params=SamplingParams(max_new_tokens=6 + 5 * (i % 4), ignore_eos=True,
                                                    temperature=0.8 if i % 3 == 0 else 0.0, seed=i))
            for i in range(n)]


def test_captured_graphs_give_the_eager_tokens(cuda_engine, tokenizer):  # noqa: F811
    engine = cuda_engine()
    rows = _rows(tokenizer, 11)
    eager = [engine.generate([r])[0].text for r in rows]
    graphed = [h.future.result(300).text for h in [engine.submit(r) for r in rows]]
    stats = engine.stats()
    assert stats["decode_graphs"] == "cuda", stats["decode_graphs_off_reason"]
    assert stats["decode_graph_captures"] > 0 and stats["decode_graph_replays"] == stats["continuous_decode_steps"]
    assert graphed == eager


def test_a_load_between_replays_needs_no_capture_and_changes_no_row(cuda_engine, tokenizer, adapter_dirs):  # noqa: F811
    engine = cuda_engine()
    name = ADAPTER_NAMES[2]
    engine.unload_adapter(name)
    long = GenerationRequest(prompt=chat(tokenizer, "A long report."), adapter=ADAPTER_NAMES[0],
                             params=SamplingParams(max_new_tokens=100, ignore_eos=True))
    alone = engine.generate([long])[0].text
    handle = engine.submit(long)
    engine.load_adapter(name, adapter_dirs[name])
    joiner = GenerationRequest(prompt=chat(tokenizer, "A short one."), adapter=name,
                               params=SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert engine.submit(joiner).future.result(300).text == engine.generate([joiner])[0].text
    assert handle.future.result(300).text == alone
    assert engine.stats()["decode_graph_invalidations"] == 0


@pytest.mark.parametrize("graphs", ["auto", "off"])
def test_compiled_bgmv_gives_the_torch_kernels_tokens(cuda_engine, tokenizer, graphs):  # noqa: F811
    engine = cuda_engine(decode_graphs=graphs, lora_decode_kernel="gather")
    rows = _rows(tokenizer, 9)
    torch_kernels = [h.future.result(300).text for h in [engine.submit(r) for r in rows]]
    engine.set_lora_decode_kernel("bgmv")
    assert [h.future.result(300).text for h in [engine.submit(r) for r in rows]] == torch_kernels
