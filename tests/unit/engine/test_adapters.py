"""Adapter residency: validation, idempotent loads, capacity, deferred unload, memory accounting."""

from __future__ import annotations

import shutil
import threading

import pytest

from engine import (
    AdapterLoadError,
    AdapterNotLoaded,
    EngineConfig,
    GenerationRequest,
    InferenceEngine,
    SamplingParams,
    TooManyAdapters,
)
from tests.unit.engine.helpers import ADAPTER_NAMES, chat

A, B, C = ADAPTER_NAMES


def _bad_dir(kind, src, tmp_path):
    target = tmp_path / kind
    if kind == "missing":
        return target
    shutil.copytree(src, target)
    if kind == "no_config":
        (target / "adapter_config.json").unlink()
    elif kind == "no_weights":
        (target / "adapter_model.safetensors").unlink()
    elif kind == "pickle":
        (target / "adapter_model.bin").write_bytes(b"not really a pickle")
    elif kind == "wrong_shape":
        import json

        cfg = json.loads((target / "adapter_config.json").read_text())
        cfg["r"] = 4  # weights are rank 8: loading must fail, not silently mis-shape
        (target / "adapter_config.json").write_text(json.dumps(cfg))
    return target


@pytest.mark.parametrize("kind,message", [
    ("missing", "does not exist"),
    ("no_config", "no adapter_config.json"),
    ("no_weights", "no adapter_model.safetensors"),
    ("pickle", "pickle weights"),
    ("wrong_shape", "does not load into the base"),
])
def test_bad_adapter_dirs_refused(engine, adapter_dirs, tmp_path, kind, message):
    with pytest.raises(AdapterLoadError, match=message):
        engine.load_adapter("x", _bad_dir(kind, adapter_dirs[A], tmp_path))
    assert engine.loaded_adapters() == []
    engine.load_adapter(A, adapter_dirs[A])  # the base is still usable after a failed load
    assert engine.loaded_adapters() == [A]


def test_load_is_idempotent_and_capacity_is_enforced(base_model, tokenizer, adapter_dirs):
    engine = InferenceEngine(base_model, tokenizer, EngineConfig(max_loaded_adapters=2))
    engine.load_adapter(A, adapter_dirs[A])
    engine.load_adapter(A, str(adapter_dirs[A]))
    engine.load_adapter(B, adapter_dirs[B])
    assert engine.stats()["adapter_loads"] == 2
    with pytest.raises(TooManyAdapters, match=r"max_loaded_adapters is 2"):
        engine.load_adapter(C, adapter_dirs[C])
    with pytest.raises(AdapterLoadError, match="unload it first"):
        engine.load_adapter(A, adapter_dirs[B])
    engine.unload_adapter(A)
    engine.load_adapter(C, adapter_dirs[C])
    assert engine.loaded_adapters() == sorted([B, C])
    with pytest.raises(AdapterNotLoaded):
        engine.unload_adapter(A)


def test_memory_footprint_counts_each_adapter(loaded_engine):
    mem = loaded_engine.memory_footprint()
    assert mem["base_bytes"] > 0
    # r=8 on 7 projections of 4 layers, fp32: every adapter the same size, well under the base.
    sizes = set(mem["adapters"].values())
    assert len(mem["adapters"]) == 3 and len(sizes) == 1 and 0 < sizes.pop() < mem["base_bytes"]
    loaded_engine.unload_adapter(B)
    assert sorted(loaded_engine.memory_footprint()["adapters"]) == sorted([A, C])
    assert loaded_engine.stats()["resident_adapters"] == 2


def test_unload_during_a_batch_is_deferred_until_it_ends(loaded_engine, tokenizer):
    request = GenerationRequest(prompt=chat(tokenizer, "Write a headline"), adapter=A, params=SamplingParams(max_new_tokens=6))
    expected = loaded_engine.generate([request])[0].text
    seen = {}

    def on_step(step):
        if step != 1:
            return
        # Another thread unloads while this batch is between decode steps (not holding the model lock).
        unloader = threading.Thread(target=loaded_engine.unload_adapter, args=(A,))
        unloader.start()
        unloader.join(timeout=30)
        seen["finished"] = not unloader.is_alive()
        seen["visible"] = loaded_engine.is_loaded(A)
        seen["pending"] = loaded_engine.stats()["pending_unloads"]
        seen["resident"] = sorted(loaded_engine.memory_footprint()["adapters"])

    result = loaded_engine.generate([request], on_step=on_step)[0]
    assert seen == {"finished": True, "visible": False, "pending": [A], "resident": sorted([A, B, C])}
    assert result.text == expected  # the running row kept its adapter to the end
    assert loaded_engine.stats()["pending_unloads"] == []
    assert sorted(loaded_engine.memory_footprint()["adapters"]) == sorted([B, C])
    with pytest.raises(AdapterNotLoaded):
        loaded_engine.generate([request])


def test_reload_cancels_a_pending_unload(loaded_engine, tokenizer, adapter_dirs):
    request = GenerationRequest(prompt=chat(tokenizer, "hi"), adapter=A, params=SamplingParams(max_new_tokens=3))

    def on_step(step):
        if step == 0:
            loaded_engine.unload_adapter(A)
            loaded_engine.load_adapter(A, adapter_dirs[A])

    loaded_engine.generate([request], on_step=on_step)
    assert loaded_engine.is_loaded(A)
    assert loaded_engine.stats()["adapter_unloads"] == 0


def test_first_load_during_a_bare_batch_keeps_bare_rows_bare(engine, tokenizer, adapter_dirs):
    request = GenerationRequest(prompt=chat(tokenizer, "Write a headline"), params=SamplingParams(max_new_tokens=6))
    expected = engine.generate([request])[0].text
    result = engine.generate([request], on_step=lambda step: step == 1 and engine.load_adapter(A, adapter_dirs[A]))
    assert result[0].text == expected


def test_stacked_plan_is_reused_until_residency_changes(engine, adapter_dirs):
    names = list(adapter_dirs)
    engine.load_adapter(names[0], adapter_dirs[names[0]])
    engine.load_adapter(names[1], adapter_dirs[names[1]])
    registry = engine._adapters
    slot = registry.acquire({names[0]})[names[0]]
    registry.release({names[0]})
    first = registry.stacked_plan([slot])
    assert registry.stacked_plan([slot]) is first  # no re-stacking per generate call
    assert len(first.index_of) == 2  # every resident adapter, not only the batch's
    engine.load_adapter(names[2], adapter_dirs[names[2]])
    after_load = registry.stacked_plan([slot])
    assert after_load is not first and len(after_load.index_of) == 3
    engine.unload_adapter(names[1])
    assert len(registry.stacked_plan([slot]).index_of) == 2
