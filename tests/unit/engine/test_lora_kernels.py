"""The Triton BGMV kernels (``engine/lora_kernels.py``) on the CPU, through Triton's own interpreter.

``TRITON_INTERPRET=1`` runs the very kernels CUDA compiles, program by program, on CPU tensors: each row's delta
must equal the torch gather's, bare rows must stay exactly as they were, and an engine decoding with them must
give every row the tokens the torch kernels give it, graphed step included. The interpreter has to be chosen
before Triton is first imported (xgrammar imports it with the engine), so the interpreted tests run in a pytest
process of their own, started by the first test here with the variable set; in the main process they skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import EngineConfig, GenerationRequest, InferenceEngine, SamplingParams
from engine.lora_kernels import bgmv_unavailable, lora_bgmv
from tests.unit.engine.helpers import ADAPTER_NAMES, chat

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in its own process with TRITON_INTERPRET=1 "
                                                         "(test_the_kernels_pass_under_the_interpreter)")


@pytest.mark.skipif(INTERPRETED, reason="this is the interpreted process")
def test_the_kernels_pass_under_the_interpreter():
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings",
                           str(Path(__file__).relative_to(root))], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "6 passed, 1 skipped" in proc.stdout, proc.stdout[-2000:]


def _reference(x, a, b, index, out):
    delta = torch.bmm(torch.bmm(x.float()[:, None], a.float()[index].transpose(1, 2)), b.float()[index])[:, 0]
    return out.float() + delta


@interpreted
@pytest.mark.parametrize("dtype, rank, atol", [(torch.float32, 8, 1e-4), (torch.float32, 12, 1e-4),
                                               (torch.bfloat16, 16, 0.5)])
def test_each_row_adds_its_own_entry_and_bare_rows_stay_bare(dtype, rank, atol):
    torch.manual_seed(rank)
    entries, in_features, out_features = 5, 300, 200  # not multiples of the blocks: masked tails
    a = torch.randn(entries, rank, in_features, dtype=dtype)
    b = torch.randn(entries, rank, out_features, dtype=dtype)
    a[0], b[0] = 0, 0
    wide = torch.randn(6, 2 * in_features, dtype=dtype)
    x = wide[:, :in_features]  # strided rows, as a reshape of a layer input can be
    index = torch.tensor([0, 1, 4, 4, 2, 0])
    out = torch.randn(6, out_features, dtype=dtype)
    before, expected = out.clone(), _reference(x, a, b, index, out)
    lora_bgmv(x, a, b, index, out)
    assert torch.allclose(out.float(), expected, atol=atol, rtol=1e-2)
    assert torch.equal(out[0], before[0]) and torch.equal(out[5], before[5])  # entry 0: not even rewritten
    assert not torch.allclose(out[1].float(), before[1].float())


def test_the_kernels_need_cuda_or_the_interpreter(monkeypatch):
    # (the flag is read per call; only the kernels themselves need it set before Triton's import)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "CUDA" in bgmv_unavailable(torch.device("cpu"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert bgmv_unavailable(torch.device("cpu")) is None


@interpreted
@pytest.mark.parametrize("graphs", ["off", "static"])
def test_an_engine_decoding_with_bgmv_gives_the_torch_kernels_tokens(base_model, tokenizer,
                                                                     adapter_dirs, graphs):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(decode_graphs=graphs, lora_decode_kernel="gather"))
    for name, path in adapter_dirs.items():
        engine.load_adapter(name, path)
    adapters = [None, *ADAPTER_NAMES]
    rows = [GenerationRequest(prompt=chat(tokenizer, f"Report {i} on the vote."), adapter=adapters[i % 4],
                              params=SamplingParams(max_new_tokens=5, ignore_eos=True, temperature=0.7 * (i % 2),
                                                    seed=i)) for i in range(5)]
    torch_kernels = [engine.generate([r])[0].text for r in rows]
    engine.set_lora_decode_kernel("bgmv")
    assert [h.future.result(300).text for h in [engine.submit(r) for r in rows]] == torch_kernels
    stats = engine.stats()
    assert stats["lora_decode_kernel"] == "bgmv" and stats["continuous_decode_steps"] >= 4
    if graphs == "static":
        assert stats["decode_graph_replays"] == stats["continuous_decode_steps"]
