"""Graphed decode steps (``engine/graphs.py``): static buffers, buckets, and the adapters' stacked buffers.

CUDA captures the step function and replays it; on the CPU ``decode_graphs="static"`` runs that same function
eagerly on the same static buffers and buckets, so these tests check everything a capture records: padding
rows in free slots, attention over a bucketed kv length, the in-step masks, the LoRA entries read from a
static buffer, and that loading an adapter never needs a new capture while a rebuild of the buffers does.
Every row must give exactly the tokens it gives alone through the eager ``generate``.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from engine import EngineConfig, GenerationRequest, InferenceEngine, SamplingParams
from engine.graphs import DecodeGraphs, kv_buckets, row_buckets
from tests.unit.engine.helpers import ADAPTER_NAMES, chat, make_adapter
from tests.unit.engine.test_constraints import SCHEMAS


def _request(tokenizer, i: int, adapter: str | None, tokens: int, **params) -> GenerationRequest:
    return GenerationRequest(
        prompt=chat(tokenizer, f"Story {i}: " + "the council met again " * (i % 5)), adapter=adapter,
        params=SamplingParams(**{"max_new_tokens": tokens, "ignore_eos": True, **params}))


def _graphed(base_model, tokenizer, adapter_dirs=None, **config) -> InferenceEngine:
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(decode_graphs="static", **config))
    for name, path in (adapter_dirs or {}).items():
        engine.load_adapter(name, path)
    return engine


def _wait(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the scheduler"
        time.sleep(0.002)


def test_buckets():
    assert row_buckets(1) == [1]
    assert row_buckets(5) == [1, 2, 4, 5]
    assert row_buckets(32) == [1, 2, 4, 8, 16, 24, 32]
    assert row_buckets(30) == [1, 2, 4, 8, 16, 24, 30]
    assert kv_buckets(2560) == [128, 256, 512, 1024, 2048, 2560]
    assert kv_buckets(300) == [128, 256, 300] and kv_buckets(256) == [128, 256] and kv_buckets(96) == [96]


def test_graphed_rows_give_the_tokens_they_give_alone(base_model, tokenizer, adapter_dirs):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    adapters = [None, *ADAPTER_NAMES]
    rows = [_request(tokenizer, i, adapters[i % 4], 5 + 3 * (i % 6), temperature=0.8 if i % 3 == 0 else 0.0,
                     seed=i) for i in range(11)]
    alone = [engine.generate([r])[0].text for r in rows]
    handles = [engine.submit(r) for r in rows]
    assert [h.future.result(120).text for h in handles] == alone
    stats = engine.stats()
    assert stats["decode_graphs"] == "static" and stats["decode_graphs_off_reason"] is None
    # Every decode step ran through a bucket's step function; 11 rows run at the 16-row bucket, 5 padding rows,
    # and the batch shrank through smaller buckets as rows finished.
    assert stats["decode_graph_replays"] == stats["continuous_decode_steps"] > 0
    assert stats["decode_graph_padded_rows"] > 0
    assert [16, 128, True] in stats["decode_graph_buckets"]
    assert stats["decode_graph_captures"] == len(stats["decode_graph_buckets"])


def test_a_row_joining_mid_decode_changes_nothing(base_model, tokenizer, adapter_dirs):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    long = _request(tokenizer, 1, ADAPTER_NAMES[0], 140)  # crosses from the 128 into the 256 kv bucket
    late = [_request(tokenizer, i, [None, *ADAPTER_NAMES][i % 4], 8, temperature=0.9, seed=40 + i)
            for i in range(2, 6)]
    alone = [engine.generate([r])[0].text for r in [long, *late]]
    first = engine.submit(long)
    _wait(lambda: engine.stats()["continuous_decode_steps"] >= 10)
    others = [engine.submit(r) for r in late]
    assert [h.future.result(120).text for h in [first, *others]] == alone
    stats = engine.stats()
    assert stats["continuous_rows_joined_mid_decode"] >= 1
    assert {b[1] for b in stats["decode_graph_buckets"]} >= {128, 256}


def test_bare_base_rows_take_the_graph_without_lora(base_model, tokenizer, adapter_dirs):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    rows = [_request(tokenizer, i, None, 6) for i in range(3)]
    alone = [engine.generate([r])[0].text for r in rows]
    assert [h.future.result(60).text for h in [engine.submit(r) for r in rows]] == alone
    assert {b[2] for b in engine.stats()["decode_graph_buckets"]} == {False}


def test_constrained_rows_stay_valid_json(base_model, tokenizer, adapter_dirs):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    rows = [GenerationRequest(prompt=chat(tokenizer, f"Give item {i} as JSON."), adapter=ADAPTER_NAMES[i % 3],
                              params=SamplingParams(max_new_tokens=60, temperature=0.7, seed=i),
                              json_schema=SCHEMAS[i % len(SCHEMAS)].model_json_schema()) for i in range(4)]
    results = [h.future.result(120) for h in [engine.submit(r) for r in rows]]
    for i, result in enumerate(results):
        SCHEMAS[i % len(SCHEMAS)].model_validate(json.loads(result.text))
    assert [r.text for r in results] == [engine.generate([r])[0].text for r in rows]


def test_loading_an_adapter_during_decode_needs_no_new_capture(base_model, tokenizer, adapter_dirs):
    first, second = ADAPTER_NAMES[0], ADAPTER_NAMES[1]
    engine = _graphed(base_model, tokenizer, {first: adapter_dirs[first]})
    row = _request(tokenizer, 2, first, 100)
    joiner = _request(tokenizer, 3, second, 6)
    alone = engine.generate([row])[0].text
    handle = engine.submit(row)
    _wait(lambda: engine.stats()["continuous_decode_steps"] >= 5)
    captured = engine.stats()["decode_graph_buckets"]
    engine.load_adapter(second, adapter_dirs[second])  # copied into a free entry of the live buffers
    joined = engine.submit(joiner)
    assert handle.future.result(120).text == alone
    assert joined.future.result(60).text == engine.generate([joiner])[0].text
    stats = engine.stats()
    assert stats["decode_graph_invalidations"] == 0 and stats["lora_buffer_reallocations"] == 0
    assert set(map(tuple, captured)) <= set(map(tuple, stats["decode_graph_buckets"]))


def test_a_reused_entry_carries_nothing_of_the_unloaded_adapter(base_model, tokenizer, adapter_dirs):
    first, second = ADAPTER_NAMES[0], ADAPTER_NAMES[1]
    engine = _graphed(base_model, tokenizer, {first: adapter_dirs[first]}, max_loaded_adapters=1)
    engine.submit(_request(tokenizer, 1, first, 6)).future.result(60)
    engine.unload_adapter(first)
    engine.load_adapter(second, adapter_dirs[second])  # the same entry, the same captured step
    row = _request(tokenizer, 4, second, 8)
    assert engine.submit(row).future.result(60).text == engine.generate([row])[0].text
    assert engine.stats()["decode_graph_invalidations"] == 0


def test_a_rebuild_of_the_buffers_drops_the_lora_graphs(base_model, tokenizer, adapter_dirs, tmp_path, tiny_base_dir):
    engine = _graphed(base_model, tokenizer, {ADAPTER_NAMES[0]: adapter_dirs[ADAPTER_NAMES[0]]})
    engine.submit(_request(tokenizer, 1, ADAPTER_NAMES[0], 4)).future.result(60)
    assert engine.stats()["decode_graph_invalidations"] == 0
    wide = make_adapter(tiny_base_dir, tmp_path / "wide", seed=7, r=16)  # a higher rank grows every buffer
    engine.load_adapter("wide/default@1.0", wide)
    row = _request(tokenizer, 5, "wide/default@1.0", 8)
    assert engine.submit(row).future.result(60).text == engine.generate([row])[0].text
    stats = engine.stats()
    assert stats["lora_buffer_reallocations"] == 1 and stats["decode_graph_invalidations"] == 1


def test_a_failed_capture_turns_graphs_off_and_the_rows_decode_eagerly(base_model, tokenizer, adapter_dirs,
                                                                      monkeypatch):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    rows = [_request(tokenizer, i, ADAPTER_NAMES[i % 3], 6) for i in range(3)]
    alone = [engine.generate([r])[0].text for r in rows]

    def refuse(self, rows, kv_len, lora):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(DecodeGraphs, "_forward", refuse)  # what a capture of the step raises on CUDA
    assert [h.future.result(60).text for h in [engine.submit(r) for r in rows]] == alone
    stats = engine.stats()
    assert stats["decode_graphs"] == "off" and "stream is capturing" in stats["decode_graphs_off_reason"]
    assert stats["continuous_rows_finished"] == 3 and stats["decode_graph_replays"] == 0


@pytest.mark.parametrize("config, reason", [
    ({}, "no CUDA device (cpu)"),
    ({"decode_graphs": "off"}, "decode_graphs is 'off'"),
    ({"decode_graphs": "static", "lora_kernel": "peft"}, "lora_kernel 'peft'"),
])
def test_where_decode_is_not_graphed_the_stats_say_why(base_model, tokenizer, config, reason):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(**config))
    engine.submit(_request(tokenizer, 0, None, 3)).future.result(60)
    stats = engine.stats()
    assert stats["decode_graphs"] == "off" and reason in stats["decode_graphs_off_reason"]
    assert "decode_graph_replays" not in stats


def test_the_graphed_step_never_needs_the_host(base_model, tokenizer, adapter_dirs):
    """What a CUDA capture refuses -- a value read back to the host mid-step (``.item()``, ``bool(tensor)``,
    a data-dependent shape) -- is also what stops dynamo from tracing the step as one graph: trace it whole."""
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    engine.submit(_request(tokenizer, 0, ADAPTER_NAMES[0], 3)).future.result(60)
    graphs = engine.decode_graphs
    torch._dynamo.reset()
    for lora in (True, False):
        traced = torch.compile(graphs.step_function(4, 128, lora), backend="eager", fullgraph=True)
        with torch.inference_mode():
            assert traced().shape == (4, base_model.config.vocab_size)


def test_graphs_pause_and_resume_between_steps(base_model, tokenizer, adapter_dirs):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    row = _request(tokenizer, 3, ADAPTER_NAMES[1], 8)
    alone = engine.generate([row])[0].text
    engine.set_decode_graphs(False)
    assert engine.submit(row).future.result(60).text == alone
    stats = engine.stats()
    assert stats["decode_graph_replays"] == 0 and stats["decode_graphs_off_reason"] == "paused"
    engine.set_decode_graphs(True)
    assert engine.submit(row).future.result(60).text == alone
    assert engine.stats()["decode_graph_replays"] == 7  # 8 tokens: the prefill's, then 7 decode steps
    eager = InferenceEngine(base_model, tokenizer, EngineConfig(decode_graphs="off"))
    with pytest.raises(ValueError, match="decode_graphs is 'off'"):
        eager.set_decode_graphs(True)


def test_every_bucket_captured_at_start_serves_without_a_capture(base_model, tokenizer, adapter_dirs):
    config = {"max_batch_size": 4, "max_prompt_tokens": 200, "max_new_tokens_limit": 100}  # slots of 300 tokens
    engine = _graphed(base_model, tokenizer, **config)
    assert engine.capture_decode_graphs().result(120) == 3 * 3  # rows 1, 2, 4 x kv 128, 256, 300; bare only
    for name, path in adapter_dirs.items():
        engine.load_adapter(name, path)
    assert engine.capture_decode_graphs().result(120) == 3 * 3  # now the LoRA buckets
    assert engine.capture_decode_graphs().result(120) == 0  # nothing left
    rows = [_request(tokenizer, i, [None, *ADAPTER_NAMES][i % 4], 4 + 6 * i) for i in range(4)]
    alone = [engine.generate([r])[0].text for r in rows]
    assert [h.future.result(120).text for h in [engine.submit(r) for r in rows]] == alone
    stats = engine.stats()
    assert stats["decode_graph_captures"] == 18 and stats["decode_graph_replays"] > 0
    off = InferenceEngine(base_model, tokenizer, EngineConfig(decode_graphs="off"))
    assert off.capture_decode_graphs().result(10) == 0


def test_a_capture_asked_for_while_rows_run_waits_for_them(base_model, tokenizer, adapter_dirs):
    engine = _graphed(base_model, tokenizer, adapter_dirs, max_batch_size=2, max_prompt_tokens=100,
                      max_new_tokens_limit=60)
    row = _request(tokenizer, 1, ADAPTER_NAMES[0], 60)
    alone = engine.generate([row])[0].text
    handle = engine.submit(row)
    _wait(lambda: engine.stats()["continuous_decode_steps"] >= 3)
    order = []
    handle.future.add_done_callback(lambda _: order.append("row"))
    captured = engine.capture_decode_graphs()
    captured.add_done_callback(lambda _: order.append("captures"))
    assert handle.future.result(120).text == alone
    assert captured.result(120) > 0
    assert order == ["row", "captures"]  # they ran once the loop was idle, never into a running row's slot


def test_out_of_memory_while_capturing_fails_the_step_not_the_graphs(base_model, tokenizer, adapter_dirs,
                                                                     monkeypatch):
    engine = _graphed(base_model, tokenizer, adapter_dirs)
    real = DecodeGraphs._forward
    broken = {"on": True}

    def forward(self, rows, kv_len, lora):
        if broken["on"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, rows, kv_len, lora)

    monkeypatch.setattr(DecodeGraphs, "_forward", forward)
    with pytest.raises(torch.OutOfMemoryError):
        engine.submit(_request(tokenizer, 0, ADAPTER_NAMES[0], 6)).future.result(60)
    broken["on"] = False
    row = _request(tokenizer, 1, ADAPTER_NAMES[0], 6)
    assert engine.submit(row).future.result(60).text == engine.generate([row])[0].text
    stats = engine.stats()
    assert stats["decode_graphs"] == "static" and stats["decode_graph_replays"] > 0
    assert stats["continuous_rows_failed"] == 1
