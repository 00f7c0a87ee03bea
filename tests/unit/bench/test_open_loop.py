"""The open-loop mode of ``bench/mixed_adapters.py`` on the tiny base: a handful of requests, a few seconds.

Checks what the benchmark's figures rest on -- one schedule replayed on both engines, every request answered,
latencies measured from the arrival, the static batcher making a late request wait for the running batch while
the continuous engine lets it join -- and the two ratio lines it prints last. No assertion on wall-clock values.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import torch

from bench import mixed_adapters as bench
from tests.unit.engine.conftest import adapter_dirs, tiny_base_dir, tokenizer  # noqa: F401  (fixtures)

TINY = ["--mix-new-tokens", "3", "10", "--mix-prompt-words", "4", "30", "--max-batch-size", "4"]


@pytest.fixture
def make_engine(tiny_base_dir, adapter_dirs, tokenizer):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from engine import EngineConfig, InferenceEngine

    def make():
        model = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
        engine = InferenceEngine(model, tokenizer, EngineConfig(max_batch_size=8, max_prompt_tokens=256,
                                                                max_new_tokens_limit=128))
        for name, path in adapter_dirs.items():
            engine.load_adapter(name, path)
        return engine

    return make


def _args(tmp_path, *extra: str):
    return bench.build_parser().parse_args(["--open-loop", *TINY, "--out", str(tmp_path), *extra])


def test_one_schedule_on_both_engines_every_request_answered(make_engine, adapter_dirs, tmp_path, capsys):  # noqa: F811
    result = bench.open_loop(_args(tmp_path, "--rate", "20", "--requests", "8"), make_engine, list(adapter_dirs))

    static, continuous = result["static"]["records"], result["continuous"]["records"]
    shape = [(r["index"], r["adapter"], r["max_new_tokens"], r["prompt_tokens"]) for r in static]
    assert shape == [(r["index"], r["adapter"], r["max_new_tokens"], r["prompt_tokens"]) for r in continuous]
    assert [r["arrival"] for r in static] == pytest.approx([r["arrival"] for r in continuous])
    assert [r["index"] for r in static] == list(range(8))
    assert {r["adapter"] for r in static} - {None} <= set(adapter_dirs)
    for r in [*static, *continuous]:
        assert r["completion_tokens"] == r["max_new_tokens"]  # EOS ignored: every request ran to its length
        assert r["arrival"] <= r["sent"] <= r["first_token"] <= r["last_token"] <= r["done"]
        assert 0 <= r["ttft"] <= r["e2e"]
    batches = result["static"]["batches"]
    assert sorted(r["batch"] for r in static) == sorted(b["index"] for b in batches for _ in range(b["size"]))
    assert max(b["size"] for b in batches) <= 4
    for name in ("static", "continuous"):
        summary = result["summary"][name]
        assert summary["requests"] == 8
        assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in result[name]["records"])
        assert summary["ttft_p50_s"] <= summary["ttft_p95_s"]
    assert result["search"] == [] and result["rate"] == 20

    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ttft_p95_continuous_vs_static: \S+", lines[-2])
    assert re.fullmatch(r"throughput_continuous_vs_static: \S+", lines[-1])
    ttft_ratio, throughput_ratio = (float(line.split(": ")[1]) for line in lines[-2:])
    assert ttft_ratio == pytest.approx(result["ratios"]["ttft_p95_continuous_vs_static"], abs=1e-3)
    assert throughput_ratio == pytest.approx(result["ratios"]["throughput_continuous_vs_static"], abs=1e-3)
    written = json.loads((tmp_path / "open_loop.json").read_text())
    assert len(written["static"]["records"]) == len(written["continuous"]["records"]) == 8
    assert len((tmp_path / "open_loop.csv").read_text().strip().splitlines()) == 1 + 16


def _late_arrivals(tokenizer):  # noqa: F811
    """A long request, then short ones every 30 ms while it is still generating."""
    from engine import GenerationRequest, SamplingParams

    def request(i: int, tokens: int) -> GenerationRequest:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"Summarise: story {i}"}], tokenize=False)
        return GenerationRequest(prompt=prompt, params=SamplingParams(max_new_tokens=tokens, ignore_eos=True))

    return [bench.Arrival(0, 0.0, request(0, 96))] + [bench.Arrival(i, 0.03 * i, request(i, 4)) for i in range(1, 11)]


def test_static_makes_a_late_request_wait_for_the_running_batch_continuous_lets_it_join(make_engine, tokenizer):  # noqa: F811
    arrivals = _late_arrivals(tokenizer)
    static, continuous = make_engine(), make_engine()
    bench.warm_up(static, tokenizer, [], continuous=False)
    bench.warm_up(continuous, tokenizer, [], continuous=True)
    run = asyncio.run(bench.run_static(static, arrivals, max_batch_size=8, batch_wait_s=0.01))
    waited = 0
    for r in run["records"]:
        for b in run["batches"]:
            if b["start"] < r["sent"] < b["end"] and r["batch"] != b["index"]:  # arrived while b was running
                assert r["batch"] > b["index"]
                assert r["first_token"] >= b["end"]  # so its TTFT covers the rest of b
                assert r["first_token"] - r["arrival"] >= b["end"] - r["sent"]
                waited += 1
    assert waited, "no request arrived while a batch was running; the long request should have made one"

    run = asyncio.run(bench.run_continuous(continuous, arrivals))
    long, late = run["records"][0], run["records"][1:]
    half = long["first_token"] + 0.5 * (long["last_token"] - long["first_token"])
    joined = [r for r in late if long["first_token"] < r["sent"] < half]  # arrived while the long one decoded
    assert joined, "no short request arrived during the long one's first half"
    for r in joined:  # it did not wait for the long request to finish
        assert r["first_token"] < long["last_token"]
        assert r["done"] < long["done"]
    assert run["engine"]["rows_joined_mid_decode"] >= len(joined)


@pytest.mark.parametrize("target, probes, rate", [("0", 1, 50.0), ("1e9", 2, 100.0)])
def test_rate_search_takes_the_first_rate_past_the_target(make_engine, adapter_dirs, tmp_path, capsys,  # noqa: F811
                                                          target, probes, rate):
    args = _args(tmp_path, "--rates", "50", "100", "--requests", "3", "--ttft-target", target)
    result = bench.open_loop(args, make_engine, list(adapter_dirs))
    assert [p["rate"] for p in result["search"]] == [50.0, 100.0][:probes]
    assert result["rate"] == rate
    assert result["ttft_target_reached"] == (target == "0")
    assert result["summary"]["static"] == {k: v for k, v in result["search"][-1].items() if k != "rate"}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("throughput_continuous_vs_static: ")
