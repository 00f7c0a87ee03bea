"""The loop the review queue exists for, on the embedded default without Ray: the critic answers through its
AgentServer on the real engine and adapter, the map's review rule queues the answers, an editor decides them
through the HTTP API (approving the right verdicts, correcting the wrong ones), ``justnews hitl export`` writes
the training file, ``justnews train ... --publish`` trains and promotes the next adapter version, and the
critic -- the same AgentServer, pinning ``@current`` per request -- now answers the corrected inputs as the
editor said, and inputs of the same kind it never saw mostly so too.

The agent is the fact checker (its contract carries the review rules' favourite fields: a verdict that can be
"unverified" and a confidence). The "editor" knows the right verdicts from the synthetic task's rule
(``training.synthetic``): supported when the evidence restates the claim, refuted when it denies it, unverified
without evidence. Right and wrong are judged as ``training.evaluate`` scores the agent (its verdicts).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fastapi.testclient import TestClient

from agent_graph import get_spec, load_agent_map
from agent_graph.schema import AgentMap, ReviewRules

from .conftest import train_argv

AGENT, N_REVIEWED, N_HELD_OUT, STEPS = "fact_checker", 48, 24, 120


def _engine_llm(store):
    """The BaseLLM's job in-process: chat template, adapter, schema-constrained greedy decoding."""
    from engine import GenerationRequest, SamplingParams
    from training.evaluate import load_engine

    engine = load_engine(store)

    async def call(model_id: str, body: dict) -> dict:
        if model_id and not engine.is_loaded(model_id):
            engine.load_adapter(model_id, store.resolve(model_id).path)
        prompt = engine.tokenizer.apply_chat_template(body["messages"], tokenize=False)
        [res] = engine.generate([GenerationRequest(
            prompt=prompt, adapter=model_id or None, json_schema=body["json_schema"],
            params=SamplingParams(temperature=0.0, max_new_tokens=body["max_new_tokens"]))])
        return {"text": res.text, "finish_reason": res.finish_reason, "prompt_tokens": res.prompt_tokens,
                "completion_tokens": res.completion_tokens, "adapter": model_id or None, "base": "base_models@current"}

    return call


def _answers(server, inputs) -> list[dict]:
    async def run():
        return [(await server.answer(i)).model_dump(mode="json") for i in inputs]
    return asyncio.run(run())


def _right(output: dict, expected) -> bool:
    from training.evaluate import SCORERS

    spec = get_spec(AGENT)
    return bool(SCORERS[AGENT](spec.output_model.model_validate(output), expected))


def _score(replies: list[dict], records) -> float:
    return sum(_right(r["output"], o) for r, (_, o) in zip(replies, records)) / len(records)


@pytest.mark.slow
def test_corrections_train_the_next_adapter(store, tmp_path, capsys):
    from deployments.agent.server import AgentServer
    from deployments.review.auth import Reviewers
    from deployments.review.metrics import review_hook
    from deployments.review.routes import HitlService, build_hitl_app
    from hitl import ReviewStore
    from hitl.cli import main as hitl_main
    from training.cli import main as train_main
    from training.synthetic import generate

    shipped = load_agent_map()
    agents = dict(shipped.agents)
    agents[AGENT] = agents[AGENT].model_copy(update={"review": ReviewRules(unverified=True, min_confidence=0.5,
                                                                           fallback=True, sample=1.0)})
    agent_map = AgentMap(agents=agents, legacy=shipped.legacy)
    reviewed = generate(AGENT, N_REVIEWED, 1101)
    held_out = generate(AGENT, N_HELD_OUT, 2202)

    url = f"sqlite:///{tmp_path}/hitl.db"
    queue = ReviewStore(url)
    server = AgentServer(AGENT, agent_map, llm=_engine_llm(store), pin=lambda ref: str(store.pin(ref)))
    hook = review_hook(AGENT, agent_map.entry(AGENT), store_root=None, url=url)

    # 1. The critic answers; the rules queue every answer (sample 1.0 for the test, plus blocking verdicts).
    before = []
    for (inp, _), reply in zip(reviewed, _answers(server, [i for i, _ in reviewed])):
        assert hook.offer(inp.model_dump(mode="json"), reply)
        before.append(reply)
    assert hook.router.writer.flush(30) and hook.stats()["written"] == N_REVIEWED
    assert {r["answered_by"] for r in before} == {f"{AGENT}/mistral_{AGENT}_v1@seed-1"}

    # 2. An editor decides every item through the admin JSON API.
    api = TestClient(build_hitl_app(HitlService(queue, reviewers=Reviewers.parse(""))))
    truth = {json.dumps(i.model_dump(mode="json"), sort_keys=True): o.model_dump(mode="json") for i, o in reviewed}
    items = api.get("/hitl/items", params={"agent": AGENT, "limit": 1000}).json()["items"]
    assert len(items) == N_REVIEWED and all("sampled" in it["reasons"] for it in items)
    corrected = 0
    for it in items:
        right = truth[json.dumps(it["input"], sort_keys=True)]
        if _right(it["output"], get_spec(AGENT).output_model.model_validate(right)):
            body = {"reviewer": "editor", "action": "approve"}
        else:
            body, corrected = {"reviewer": "editor", "action": "correct", "output": right}, corrected + 1
        assert api.post(f"/hitl/items/{it['id']}/decision", json=body).status_code == 200
    assert corrected >= N_REVIEWED // 3  # the random seed adapter is mostly wrong

    # 3. Export, train, publish and promote the next version, as an operator would.
    data = tmp_path / f"{AGENT}-hitl.jsonl"
    assert hitl_main(["--db", url, "export", "--agent", AGENT, "--out", str(data)]) == 0
    assert len(data.read_text().splitlines()) == N_REVIEWED
    started = time.monotonic()
    assert train_main(train_argv(AGENT, data, store.root, tmp_path / "run", steps=STEPS)) == 0
    train_s = time.monotonic() - started
    assert str(store.pin(f"{AGENT}/mistral_{AGENT}_v1@current")) == f"{AGENT}/mistral_{AGENT}_v1@hitl-1"

    # 4. The same agent, pinning @current per request, now answers as the editor said.
    after = _answers(server, [i for i, _ in reviewed])
    assert {r["answered_by"] for r in after} == {f"{AGENT}/mistral_{AGENT}_v1@hitl-1"}
    fit, was, held = _score(after, reviewed), _score(before, reviewed), _score(_answers(server, [i for i, _ in held_out]), held_out)
    with capsys.disabled():
        print(f"\nclose the loop ({AGENT}, {N_REVIEWED} reviewed, {corrected} corrected, train {train_s:.0f} s): "
              f"reviewed inputs {was:.2f} -> {fit:.2f}; held-out inputs of the same kind {held:.2f}")
    assert fit >= 0.9 and held >= 0.6
    hook.close()
    queue.close()
