"""The OpenAI surface on the running cluster: ``/v1/models`` lists exactly what the two endpoints accept, the
official client embeds (its default base64 path included), and chat completions pin ``@current`` and take the
canary split like the agents: a promote under chat traffic moves the answers to the new version, a running
canary splits them and the ingress records what each version did."""

from __future__ import annotations

import json
import time

import pytest

from tests.store_helpers import publish_copy

from .conftest import TOKEN
from .test_rollout import Load, _justnews

pytestmark = [pytest.mark.ray, pytest.mark.slow]

CHAT = [{"role": "user", "content": "Score: bridge budget"}]


def _client(cluster):
    import openai

    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=TOKEN, max_retries=0, timeout=300)


def test_models_lists_exactly_what_chat_and_embeddings_accept(cluster):
    client = _client(cluster)
    with cluster.client() as http:
        cards = http.get("/v1/models").json()["data"]
    chat = {c["id"] for c in cards if c["endpoint"] == "/v1/chat/completions"}
    embed = {c["id"] for c in cards if c["endpoint"] == "/v1/embeddings"}
    assert embed == {"scout", "memory", "all-MiniLM-L6-v2"} and not chat & embed
    assert {"base", "critic", "base:critic/mistral_critic_v1@current"} <= chat
    for model in ("base", "critic", "base:critic/mistral_critic_v1@current"):
        reply = client.chat.completions.create(model=model, messages=CHAT, max_tokens=4)
        assert reply.choices[0].message.content is not None and reply.system_fingerprint
    texts = ["The council approved a bridge.", "The bridge budget was criticised.", "The club won on Sunday."]
    vectors = {}
    for model in sorted(embed):
        reply = client.embeddings.create(model=model, input=texts)  # the client asks for base64 and decodes it
        assert reply.model == model and [d.index for d in reply.data] == [0, 1, 2]
        assert {len(d.embedding) for d in reply.data} == {384} and reply.usage.prompt_tokens > len(texts)
        vectors[model] = reply.data[0].embedding
    floats = client.embeddings.create(model="scout", input=texts[0], encoding_format="float").data[0].embedding
    # one text alone or in a batch of three: the same vector up to float noise; every id is the one model
    assert floats == pytest.approx(vectors["scout"], abs=1e-5) and floats == pytest.approx(vectors["memory"], abs=1e-5)
    with cluster.client() as http:
        wrong = [http.post("/v1/chat/completions", json={"model": "scout", "messages": CHAT}),
                 http.post("/v1/embeddings", json={"model": "critic", "input": "x"}),
                 http.post("/v1/embeddings", json={"model": "scout", "input": "x", "dimensions": 8}),
                 http.post("/v1/embeddings", json={"model": "scout", "input": ["x"] * 65})]
    assert [(r.status_code, r.json()["error"]["type"]) for r in wrong] == [
        (400, "invalid_request"), (400, "invalid_request"), (400, "invalid_request"), (413, "request_too_large")]
    assert "max_texts (64)" in wrong[3].json()["error"]["message"]


class ChatLoad(Load):
    """Callers sending the same chat completion in a loop; per caller, every (time sent, status, fingerprint)."""

    def __init__(self, cluster, model: str, callers: int = 3):
        super().__init__(cluster, model, {"model": model, "messages": CHAT, "max_tokens": 4}, callers)
        self.replies: list[list[tuple[float, int, str]]] = [[] for _ in range(callers)]  # type: ignore[assignment]
        self._ids = iter(range(callers))

    def _run(self) -> None:
        calls = self.replies[next(self._ids)]
        with self.cluster.client() as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                reply = client.post("/v1/chat/completions", json=self.body)
                calls.append((sent, reply.status_code,
                              reply.json().get("system_fingerprint", "") if reply.status_code == 200 else reply.text))

    def seen(self) -> list[str]:
        return [f for calls in self.replies for _, _, f in calls]

    def wait_for(self, predicate, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.2)


def test_a_promote_under_chat_traffic_moves_answers_to_the_new_pinned_version(cluster, tmp_path):
    from modelstore import ModelStore

    ns = "re_ranker/mistral_re_ranker_v1"
    store = ModelStore(cluster.store_root)
    old = store.current_version(f"{ns}@current")
    with ChatLoad(cluster, "re_ranker") as load:
        load.wait_for(lambda: len(load.seen()) >= 6)
        publish_copy(store, f"{ns}@{old}", ns, "chat-2", tmp_path)  # publish promotes: current is chat-2
        promoted_at = time.monotonic()
        load.wait_for(lambda: sum(f == f"{ns}@chat-2" for f in load.seen()) >= 6)
    assert {s for calls in load.replies for _, s, _ in calls} == {200}
    assert {f for f in load.seen()} == {f"{ns}@{old}", f"{ns}@chat-2"}
    for calls in load.replies:  # each caller moves forward once, never back
        versions = [f for _, _, f in calls]
        assert versions == sorted(versions, key=lambda f: f.endswith("@chat-2")), versions
        # a chat sent after the promote is answered by the new version (it pins when it arrives)
        assert all(f.endswith("@chat-2") for t, _, f in calls if t > promoted_at)


def test_a_running_canary_splits_chat_completions_and_the_ingress_records_them(cluster, tmp_path):
    from modelstore import ModelStore
    from rollout.state import CanaryBook

    agent, ns = "fact_checker", "fact_checker/mistral_fact_checker_v1"
    store = ModelStore(cluster.store_root)
    baseline = store.current_version(f"{ns}@current")
    publish_copy(store, f"{ns}@{baseline}", ns, "chat-canary", tmp_path, promote=False)
    started = _justnews("canary", "start", "--agent", agent, "--version", "chat-canary", "--stages", "0.5",
                        "--window", "3600", "--store-root", str(cluster.store_root))
    assert started.returncode == 0, started.stderr
    try:
        time.sleep(1.5)  # the ingress re-reads the canary's state at most every second
        with ChatLoad(cluster, agent, callers=2) as load:
            load.wait_for(lambda: len(load.seen()) >= 20)
            time.sleep(1.2)  # the ingress writes its tally on the first record after a second
            load.wait_for(lambda: len(load.seen()) >= 24)
        seen = load.seen()
        assert {s for calls in load.replies for _, s, _ in calls} == {200}
        candidate, base = seen.count(f"{ns}@chat-canary"), seen.count(f"{ns}@{baseline}")
        assert candidate + base == len(seen) and abs(candidate - base) <= 4, (candidate, base)  # 0.5: one in two
        book = CanaryBook(cluster.store_root)
        state = book.load(ns)
        stats_dir = cluster.store_root / ".canary" / agent / "mistral_fact_checker_v1" / "stats" / state.id
        assert any(p.name.startswith("ingress-") for p in stats_dir.rglob("*.json")), list(stats_dir.rglob("*"))
        figures = book.stage_figures(state)
        assert figures["candidate"].requests >= 5 and figures["baseline"].requests >= 5, figures
        assert figures["candidate"].errors == figures["baseline"].errors == 0
        with cluster.client() as http:
            [entry] = [c for c in http.get("/canary").json()["canaries"] if c["state"]["adapter"] == ns]
        assert entry["figures"]["candidate"]["requests"] >= 5, json.dumps(entry)[:2000]
    finally:
        rolled = _justnews("canary", "rollback", "--agent", agent, "--store-root", str(cluster.store_root))
        assert rolled.returncode == 0, rolled.stderr
