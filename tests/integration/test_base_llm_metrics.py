"""The BaseLLM replica's metrics as Prometheus scrapes them from the node's metrics agent: ours
(``justnews_llm_*``) and Ray's multiplexing gauges, both naming the adapters."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import INITIAL_RUNTIME, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

MODEL_ID = "analyst/mistral_analyst_v1@seed-1"
UNKNOWN = "analyst/mistral_missing_v9@v1"


def _samples(url: str) -> dict[str, list]:
    """Prometheus samples by name (only the metrics these tests read)."""
    try:
        text = httpx.get(url, timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "multiplexed" in sample.name or sample.name.startswith("ray_justnews_llm_"):
                out.setdefault(sample.name, []).append(sample)
    return out


def _has(samples: dict[str, list], name: str, **labels) -> bool:
    return any(
        s.value > 0 and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples.get(name, [])
    )


def test_prometheus_shows_adapters_in_ours_and_rays_metrics(llm_app):
    from deployments.errors import AdapterNotFoundError

    llm_app.deploy(INITIAL_RUNTIME)
    out = llm_app.generate(MODEL_ID, max_new_tokens=3).result(timeout_s=60)
    with pytest.raises(AdapterNotFoundError):
        llm_app.generate(UNKNOWN).result(timeout_s=60)
    pinned = out["adapter"]
    expected = [
        ("ray_serve_registered_multiplexed_model_id", {"model_id": MODEL_ID}),
        ("ray_serve_num_multiplexed_models", {}),
        ("ray_justnews_llm_adapter_loads_total", {"adapter": pinned}),
        ("ray_justnews_llm_adapter_load_latency_s_count", {"adapter": pinned}),
        ("ray_justnews_llm_adapter_load_failures_total", {"reason": "not_found"}),
        ("ray_justnews_llm_generated_tokens_total", {"adapter": pinned}),
        ("ray_justnews_llm_request_latency_s_count", {"adapter": pinned, "outcome": "ok"}),
        ("ray_justnews_llm_batch_size_count", {}),
        ("ray_justnews_llm_kv_slots", {}),  # the continuous loop's KV cache, allocated at start
    ]

    def missing() -> list[str]:
        samples = _samples(llm_app.metrics_url)
        return [f"{name}{labels}" for name, labels in expected if not _has(samples, name, **labels)]

    wait_for(lambda: not missing(), timeout_s=60, what="metrics to be exported")
