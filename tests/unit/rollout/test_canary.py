"""Canaries on a real store: the gate's verdicts, the controller's stage machine, the replicas' split and
records, persistence across restarts, and the ``justnews canary`` commands."""

from __future__ import annotations

import asyncio
import json

import pytest

from agent_graph import get_spec, load_agent_map, run_heuristic
from cluster.cli import main as justnews
from deployments.agent.server import AgentServer
from rollout import CanaryBounds, CanaryController, CanaryError, CanaryRouter, CanaryState, judge
from rollout.state import CanaryBook, RoleStats, VersionFigures, figures, percentile
from tests.store_helpers import publish_copy

NS = "critic/mistral_critic_v1"


class Clock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def candidate(store, tmp_path):
    """Publish ``v2`` of the critic adapter (same weights as seed-1), not promoted."""
    publish_copy(store, f"{NS}@seed-1", NS, "v2", tmp_path, promote=False)
    assert store.current_version(NS + "@current") == "seed-1"
    return "v2"


def _figs(base=(100, 0, 0.10), cand=(100, 0, 0.10)) -> dict[str, VersionFigures]:
    """Figures with (requests, errors, p95) per role."""
    def one(version, n, err, p95):
        stats = RoleStats(version=version, requests=n, errors=err, latencies=[p95] * max(n, 1))
        return figures(stats)
    return {"baseline": one("seed-1", *base), "candidate": one("v2", *cand)}


def _state(**kw) -> CanaryState:
    args = dict(agent="critic", adapter=NS, baseline="seed-1", candidate="v2", stages=[0.05, 0.25], window_s=60,
                stage_started_at=0.0, started_at=0.0, bounds=CanaryBounds(min_requests=20))
    args.update(kw)
    return CanaryState(**args)


# -- the gate -----------------------------------------------------------------------------------------

def test_gate_waits_for_the_window_and_for_traffic():
    assert judge(_state(), _figs(), now=30).action == "wait"
    verdict = judge(_state(), _figs(cand=(5, 0, 0.1)), now=61)
    assert verdict.action == "wait" and "candidate 5" in verdict.reason


def test_gate_widens_then_promotes_a_candidate_within_bounds():
    assert judge(_state(), _figs(cand=(30, 1, 0.104)), now=61).action == "widen"
    assert judge(_state(stage=1), _figs(cand=(30, 1, 0.104)), now=61).action == "promote"


@pytest.mark.parametrize("cand, why", [((30, 0, 0.2), "p95"), ((30, 3, 0.1), "error rate")])
def test_gate_rolls_back_a_slow_or_failing_candidate(cand, why):
    verdict = judge(_state(), _figs(cand=cand), now=61)
    assert verdict.action == "rollback" and why in verdict.reason


def test_p95_slack_absorbs_noise_on_small_latencies():
    bounds = CanaryBounds(min_requests=20, p95_slack_s=0.05)
    assert judge(_state(bounds=bounds), _figs(cand=(30, 0, 0.14)), now=61).action == "widen"
    assert judge(_state(bounds=bounds), _figs(cand=(30, 0, 0.16)), now=61).action == "rollback"


def test_percentiles_are_nearest_rank():
    samples = [i / 100 for i in range(1, 101)]
    assert (percentile(samples, 50), percentile(samples, 95), percentile(samples, 99)) == (0.5, 0.95, 0.99)
    assert percentile([], 95) is None


def test_bad_canaries_are_refused(store, candidate):
    ctl = CanaryController(store)
    with pytest.raises(CanaryError, match="already the baseline"):
        ctl.start(NS, "seed-1")
    with pytest.raises(CanaryError, match="increase"):
        ctl.start(NS, candidate, stages=[0.25, 0.05])
    with pytest.raises(CanaryError, match=r"\(0, 1\)"):
        ctl.start(NS, candidate, stages=[0.05, 1.0])
    with pytest.raises(LookupError):
        ctl.start(NS, "v9")
    ctl.start(NS, candidate)
    with pytest.raises(CanaryError, match="is running"):
        ctl.start(NS, candidate)


# -- routing and recording ----------------------------------------------------------------------------

def test_the_split_is_exact_and_follows_the_state_file(store, candidate):
    clock = Clock()
    ctl = CanaryController(store, clock=clock)
    ctl.start(NS, candidate, stages=[0.25, 0.5], window_s=60)
    router = CanaryRouter(store.root, "r1", refresh_s=1.0, clock=clock)
    picks = [router.choose(f"{NS}@seed-1") for _ in range(100)]
    assert sum(c.role == "candidate" for c in picks) == 25
    assert {c.model_id for c in picks if c.role == "candidate"} == {f"{NS}@v2"}
    # other versions and other adapters are not split
    assert router.choose(f"{NS}@v2").role is None
    assert router.choose("analyst/mistral_analyst_v1@seed-1").role is None
    ctl.rollback(NS)
    assert router.choose(f"{NS}@seed-1").role == "baseline"  # cached for refresh_s
    clock.t += 1.5
    assert all(router.choose(f"{NS}@seed-1").model_id == f"{NS}@seed-1" for _ in range(20))


def _serve(router: CanaryRouter, n: int, cand_latency: float, cand_outcome: str = "ok") -> None:
    for _ in range(n):
        choice = router.choose(f"{NS}@seed-1")
        if choice.role == "candidate":
            router.record(choice, cand_latency, cand_outcome)
        else:
            router.record(choice, 0.100, "ok")
    router.flush()


def test_a_good_candidate_is_widened_then_promoted_and_every_decision_is_logged(store, candidate):
    clock = Clock()
    ctl = CanaryController(store, clock=clock)
    ctl.start(NS, candidate, stages=[0.25, 0.5], window_s=60, bounds=CanaryBounds(min_requests=10))
    replicas = [CanaryRouter(store.root, f"r{i}", clock=clock) for i in range(2)]
    for r in replicas:
        _serve(r, 40, 0.101)
    assert ctl.tick() == []  # inside the window
    clock.t += 61
    [widen] = ctl.tick()
    assert widen.action == "widen" and widen.fraction == 0.5
    assert widen.figures["candidate"]["requests"] == 20 and widen.figures["baseline"]["requests"] == 60
    clock.t += 2  # replicas re-read the state: the new stage counts from zero
    for r in replicas:
        _serve(r, 40, 0.099)
    clock.t += 61
    [promote] = ctl.tick()
    assert promote.action == "promote" and promote.by == "gate"
    assert store.current_version(NS + "@current") == candidate
    assert [d.action for d in ctl.book.decisions(NS)] == ["start", "widen", "promote"]
    assert CanaryBook(store.root).load(NS).status == "promoted"


@pytest.mark.parametrize("latency, outcome, why", [(0.5, "ok", "p95"), (0.1, "schema", "schema failures")])
def test_a_slow_or_failing_candidate_is_rolled_back_and_current_never_moves(store, candidate, latency, outcome, why):
    clock = Clock()
    ctl = CanaryController(store, clock=clock)
    ctl.start(NS, candidate, stages=[0.25, 0.5], window_s=60, bounds=CanaryBounds(min_requests=10))
    router = CanaryRouter(store.root, "r1", clock=clock)
    _serve(router, 80, latency, outcome)
    clock.t += 61
    [decision] = ctl.tick()
    assert decision.action == "rollback" and why in decision.reason
    assert store.current_version(NS + "@current") == "seed-1"
    clock.t += 2
    assert router.choose(f"{NS}@seed-1").model_id == f"{NS}@seed-1"


def test_state_and_figures_survive_controller_and_replica_restarts(store, candidate):
    clock = Clock()
    CanaryController(store, clock=clock).start(NS, candidate, stages=[0.25, 0.5], window_s=60,
                                               bounds=CanaryBounds(min_requests=10))
    _serve(CanaryRouter(store.root, "replica-that-dies", clock=clock), 40, 0.1)
    # a new replica (new id) and a new controller, with only the files on disk in common
    _serve(CanaryRouter(store.root, "replacement", clock=clock), 40, 0.1)
    clock.t += 30
    restarted = CanaryController(store, clock=clock)
    assert restarted.tick() == []  # the window still runs from the original start
    [entry] = restarted.status(NS)
    assert entry["figures"]["candidate"]["requests"] == 20 and entry["figures"]["baseline"]["requests"] == 60
    clock.t += 31
    assert [d.action for d in restarted.tick()] == ["widen"]


def test_a_promote_outside_the_canary_ends_it(store, candidate, tmp_path):
    clock = Clock()
    ctl = CanaryController(store, clock=clock)
    ctl.start(NS, candidate)
    store.promote(f"{NS}@{candidate}")  # e.g. the controller died between promoting and recording it
    [d] = ctl.tick()
    assert d.action == "promote" and "already points" in d.reason
    ctl.start(NS, "seed-1")  # baseline is now v2
    publish_copy(store, f"{NS}@seed-1", NS, "v3", tmp_path)  # promoted by someone else
    [d] = ctl.tick()
    assert d.action == "abort" and "v3" in d.reason
    assert ctl.book.load(NS).status == "aborted"


def test_gc_keeps_the_versions_of_a_running_canary(store, candidate, tmp_path):
    CanaryController(store).start(NS, candidate)
    publish_copy(store, f"{NS}@seed-1", NS, "v3", tmp_path, promote=False)
    assert store.gc(NS + "@current", keep=1) == []
    CanaryController(store).rollback(NS)
    assert store.gc(NS + "@current", keep=1) == [candidate]


# -- the agent server ---------------------------------------------------------------------------------

def _critic_text() -> str:
    spec = get_spec("critic")
    legacy = load_agent_map().legacy["critic"].target
    return json.dumps(spec.validate_output(run_heuristic(legacy, spec.example), spec.example).model_dump(mode="json"))


def _agent(store, replies: dict[str, str], calls: list[str]) -> AgentServer:
    async def llm(model_id: str, body: dict) -> dict:
        calls.append(model_id)
        return {"text": replies.get(model_id, _critic_text()), "finish_reason": "stop", "prompt_tokens": 1,
                "completion_tokens": 1, "adapter": model_id, "base": "base_models@v1-tiny-mistral"}

    return AgentServer("critic", load_agent_map(), llm=llm, pin=lambda ref: str(store.pin(ref)),
                       canary=CanaryRouter(store.root, "agent-r1"))


def test_the_agent_splits_records_and_falls_back_from_a_broken_candidate(store, candidate):
    CanaryController(store).start(NS, candidate, stages=[0.5])
    calls: list[str] = []
    server = _agent(store, {f"{NS}@{candidate}": "not json"}, calls)

    async def run():
        return [await server.answer(get_spec("critic").example) for _ in range(10)]

    replies = asyncio.run(run())
    server.flush()
    assert all(r.output for r in replies)  # every caller got an answer
    assert sum(r.fallback for r in replies) == 5  # the candidate's five fell back to the base
    assert calls.count(f"{NS}@{candidate}") == 5
    figs = CanaryBook(store.root).stage_figures(CanaryBook(store.root).load(NS))
    assert (figs["candidate"].requests, figs["candidate"].schema_failures) == (5, 5)
    assert (figs["baseline"].requests, figs["baseline"].errors) == (5, 0)
    assert server.stats()["schema_failures"] == {f"{NS}@{candidate}": 5}


def test_mirroring_sends_the_rest_to_the_candidate_without_answering_with_it(store, candidate):
    CanaryController(store).start(NS, candidate, stages=[0.25], mirror=True)
    calls: list[str] = []
    server = _agent(store, {f"{NS}@{candidate}": _critic_text()}, calls)

    async def run():
        out = [await server.answer(get_spec("critic").example) for _ in range(8)]
        await asyncio.sleep(0.05)  # let the shadow calls finish
        return out

    replies = asyncio.run(run())
    server.flush()
    assert sum(r.answered_by.endswith(f"@{candidate}") for r in replies) == 2
    assert calls.count(f"{NS}@{candidate}") == 8  # 2 routed + 6 mirrored
    figs = CanaryBook(store.root).stage_figures(CanaryBook(store.root).load(NS))
    assert (figs["candidate"].requests, figs["candidate"].mirrored) == (8, 6)


# -- the commands -------------------------------------------------------------------------------------

def test_canary_commands_start_show_and_roll_back(store, candidate, capsys):
    root = str(store.root)
    assert justnews(["canary", "start", "--agent", "critic", "--version", candidate, "--fraction", "0.1",
                     "--window", "60", "--store-root", root]) == 0
    assert "takes 10% of critic's traffic" in capsys.readouterr().out
    router = CanaryRouter(store.root, "r1")
    _serve(router, 30, 0.2)
    assert justnews(["canary", "status", "--agent", "critic", "--store-root", root]) == 0
    out = capsys.readouterr().out
    assert "candidate  v2" in out and "baseline   seed-1" in out and "observing stage 0" in out
    assert justnews(["canary", "start", "--agent", "critic", "--version", candidate, "--store-root", root]) == 2
    assert "is running" in capsys.readouterr().err
    assert justnews(["canary", "rollback", "--agent", "critic", "--store-root", root]) == 0
    assert justnews(["canary", "status", "--json", "--store-root", root]) == 0
    [entry] = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert entry["state"]["status"] == "rolled_back" and entry["decisions"][-1]["by"] == "operator"
    assert justnews(["canary", "rollback", "--agent", "critic", "--store-root", root]) == 2
    assert "no canary of critic/mistral_critic_v1 is running" in capsys.readouterr().err
