"""The newsroom pipeline runs end to end on heuristic fakes, each step's typed output feeding the next."""

from __future__ import annotations

import asyncio

import pytest

from agent_graph import (NEWSROOM, Answer, Article, ContractError, PipelineResult, get_spec, load_agent_map, routes,
                         run_heuristic)
from agent_graph.heuristics import HEURISTICS
from agent_graph.pipeline import arun_pipeline, claims_of, newsroom, run_pipeline

from .images import encode
from .images import heuristic as run_with_images

ARTICLE = Article(
    id="a-1",
    title="Bridge costs 90 million",
    text=("The bridge costs 90 million euros. The council approved the bridge on Monday. "
          "Opponents call it a scandalous waste."),
    evidence=["The football club won on Sunday.",
              "Minutes: the council approved the bridge on Monday by 12 votes to 3.",
              "The approved budget of the bridge is 40 million euros."],
)


def heuristic_call(agent, inp):
    """The fake the tests inject: the agent's heuristic, checked to receive its own input type (its images
    decoded as the agent server would)."""
    assert isinstance(inp, get_spec(agent).input_model)
    name = next(n for n, h in HEURISTICS.items() if h.agent == agent)
    return run_with_images(name, inp)


def test_pipeline_is_data():
    assert [(s.name, s.agent) for s in NEWSROOM] == [
        ("scout", "scout"), ("fact_checker", "fact_checker"), ("analyst", "analyst"), ("critic", "critic"),
        ("journalist", "journalist"), ("synthesizer", "synthesizer"), ("chief_editor", "chief_editor")]


def test_outputs_feed_the_next_step():
    result = run_pipeline(ARTICLE, heuristic_call)
    assert [r.step for r in result.steps] == [s.name for s in NEWSROOM] and not any(r.skipped for r in result.steps)
    claims = claims_of(ARTICLE)
    assert result.record("scout").input["texts"] == claims + list(ARTICLE.evidence)

    # The scout's vectors order the evidence: the football passage shares nothing with any claim.
    fc_in = result.record("fact_checker").input
    assert fc_in["claims"] == claims and fc_in["evidence"][-1] == "The football club won on Sunday."

    facts = result.output("fact_checker")
    assert [v.verdict for v in facts.verdicts] == ["refuted", "supported", "unverified"]

    # The critic sees the fact checker's verdicts and the analyst's scores.
    critic_in = result.record("critic").input
    assert [(c["claim"], c["verdict"]) for c in critic_in["claim_checks"]] == list(
        zip(claims, [v.verdict for v in facts.verdicts]))
    analysis = result.output("analyst")
    assert (critic_in["bias"], critic_in["persuasion"], critic_in["sentiment"]) == (
        analysis.bias, analysis.persuasion, analysis.sentiment)

    # The journalist drafts from the claims the fact checker did not refute, on the article's title.
    draft_in = result.record("journalist").input
    assert draft_in["topic"] == ARTICLE.title and draft_in["style"] == "news"
    assert draft_in["facts"] == [c for c, v in zip(claims, [v.verdict for v in facts.verdicts]) if v != "refuted"]
    assert draft_in["facts"] == claims[1:]  # the refuted 90 million is not a fact to state
    assert result.output("journalist").facts_used

    # The chief editor sees the critic's verdict and issues, the fact-check counts and the synthesis.
    critic = result.output("critic")
    editor_in = result.record("chief_editor").input
    assert editor_in["critic_verdict"] == critic.verdict == "revise"
    assert len(editor_in["critic_issues"]) == len(critic.issues)
    assert (editor_in["claims_refuted"], editor_in["claims_unverified"]) == (1, 1)
    assert editor_in["text"] == result.output("synthesizer").summary
    assert result.output("chief_editor").decision == "revise"


def test_rejected_story_skips_synthesis():
    article = ARTICLE.model_copy(update={"claims": ["The bridge costs 90 million euros."]})
    result = run_pipeline(article, heuristic_call)
    assert result.output("critic").verdict == "reject"
    assert result.record("synthesizer").skipped and result.output("synthesizer") is None
    assert result.record("journalist").skipped and result.output("journalist") is None
    editor_in = result.record("chief_editor").input
    assert editor_in["text"] == article.text and result.output("chief_editor").decision == "reject"


def test_related_coverage_makes_a_synthesis():
    article = ARTICLE.model_copy(update={"related": [{"title": "Bridge vote", "text": "The vote was 12 to 3."}]})
    result = run_pipeline(article, heuristic_call)
    assert result.record("synthesizer").input["task"] == "synthesis"
    assert result.output("synthesizer").sources == [0, 1]


def test_result_records_who_answered_and_round_trips():
    agent_map = load_agent_map()

    def call(agent, inp):
        # Who answered travels with the output: the bare base for llm agents (a stand-in produces the
        # output here), the legacy heuristic for the others, as AgentServer would report it.
        spec = get_spec(agent)
        output = spec.validate_output(run_heuristic(agent_map.legacy[agent].target, inp), inp)
        chain = routes(agent_map, agent, spec.task_of(inp))
        route = next(r for r in chain if r.step == ("base" if spec.kind == "llm" else "legacy"))
        return Answer(agent, output, route)

    result = run_pipeline(ARTICLE.model_dump(), call)
    by = {r.step: r.answered_by for r in result.steps}
    assert by["critic"] == "base_models@v1-tiny-mistral"
    assert by["scout"] == "heuristic:hashed_bow"  # scout's chain: its own model (offline here), then legacy
    again = PipelineResult.model_validate_json(result.model_dump_json())
    assert again == result and again.output("critic") == result.output("critic")


def test_async_runner_matches_sync():
    async def call(agent, inp):
        return heuristic_call(agent, inp)

    assert asyncio.run(arun_pipeline(ARTICLE, call)) == run_pipeline(ARTICLE, heuristic_call)


def test_output_that_does_not_fit_its_input_is_refused():
    def call(agent, inp):
        out = heuristic_call(agent, inp)
        if agent == "fact_checker":
            return out.model_copy(update={"verdicts": out.verdicts[:1]})  # one verdict for three claims
        return out

    with pytest.raises(ContractError, match="verdicts has 1 items, expected one per input claims"):
        run_pipeline(ARTICLE, call)


def test_missing_step_is_named():
    result = run_pipeline(ARTICLE, heuristic_call)
    with pytest.raises(KeyError, match="no step 'newsreader_0'"):
        result.record("newsreader_0")


def test_article_without_claims_or_evidence():
    article = Article(id="a-2", title="Quiet day", text="Nothing happened. The mayor said so.")
    result = run_pipeline(article, heuristic_call)
    assert result.record("fact_checker").input["evidence"] == []
    assert [v.verdict for v in result.output("fact_checker").verdicts] == ["unverified", "unverified"]


def _images(*kinds: str) -> list[str]:
    import random

    from training.vision_task import make_example

    rng = random.Random(5)
    return [encode(make_example(rng, kind=kind, word="flood")[0], data_url=True) for kind in kinds]


def test_without_images_the_pipeline_is_the_newsroom_unchanged():
    assert newsroom(ARTICLE) == NEWSROOM and ARTICLE.images == []
    assert run_pipeline(ARTICLE, heuristic_call) == run_pipeline(ARTICLE, heuristic_call, NEWSROOM)


def test_images_are_read_first_and_their_reading_reaches_the_synthesis():
    article = ARTICLE.model_copy(update={"images": _images("chart", "map"),
                                         "claims": ["The council approved the bridge on Monday."]})
    result = run_pipeline(article, heuristic_call)
    assert [r.step for r in result.steps] == ["newsreader_0", "newsreader_1", *(s.name for s in NEWSROOM)]
    readings = [result.output("newsreader_0"), result.output("newsreader_1")]
    assert [r.image_kind for r in readings] == ["chart", "map"]
    # A record names the image by digest; the caller has the bytes.
    assert result.record("newsreader_0").input["image"].startswith("sha256:")
    synthesis_text = result.record("synthesizer").input["articles"][0]["text"]
    assert synthesis_text.startswith(article.text)
    assert synthesis_text.endswith("Images of the article:\n[image 0] chart: a chart\n[image 1] map: a map")
    # ... and the draft: one fact per image after the claims that stood.
    assert result.record("journalist").input["facts"] == [
        "The council approved the bridge on Monday.", "Image 0 of the article: chart: a chart",
        "Image 1 of the article: map: a map"]


def test_the_image_context_keeps_the_article_within_its_bound():
    article = ARTICLE.model_copy(update={"text": "word " * 1600, "images": _images("photo")})
    text = run_pipeline(article, heuristic_call).record("synthesizer").input["articles"][0]["text"]
    assert len(text) <= 6000 and text.endswith("[image 0] photo: a photo")


def test_the_image_context_names_a_headline_read():
    from agent_graph.agents.newsreader import NewsreaderOutput
    from agent_graph.pipeline import image_context

    read = NewsreaderOutput(image_kind="map", headline="flood", caption="a map about flood", confidence=0.8)
    assert image_context({"newsreader_0": read, "scout": None}) == "[image 0] map, headline 'flood': a map about flood"
    assert image_context({}) == ""
    from agent_graph.pipeline import image_facts

    assert image_facts({"newsreader_0": read}) == ["Image 0 of the article: map, headline 'flood': a map about flood"]


def test_a_draft_keeps_room_for_the_images_and_never_goes_without_a_fact():
    from agent_graph.agents.critic import CriticOutput
    from agent_graph.agents.fact_checker import MAX_CLAIMS, FactCheckerOutput
    from agent_graph.agents.journalist import MAX_FACTS
    from agent_graph.agents.newsreader import NewsreaderOutput

    def call_with(verdict):
        def call(agent, inp):  # the fact checker returns `verdict` for every claim; images read as plain photos
            if agent == "critic":  # never a rejection: the draft is written
                return CriticOutput(verdict="revise", issues=[])
            if agent == "fact_checker":
                return FactCheckerOutput(verdicts=[{"verdict": verdict, "evidence": [], "confidence": 0.9}] * len(inp.claims))
            if agent == "newsreader":
                return NewsreaderOutput(image_kind="photo", headline="", caption="a photo", confidence=0.2)
            return heuristic_call(agent, inp)
        return call

    claims = [f"Claim number {i} holds." for i in range(MAX_CLAIMS)]
    article = ARTICLE.model_copy(update={"claims": claims, "images": _images(*["photo"] * 8)})
    facts = run_pipeline(article, call_with("supported")).record("journalist").input["facts"]
    # 12 facts at most (7 claims + 8 images overflow): half of them kept for the images, claims first.
    assert len(facts) == MAX_FACTS and facts[: MAX_FACTS // 2] == claims[: MAX_FACTS // 2]
    assert facts[MAX_FACTS // 2:] == [f"Image {i} of the article: photo: a photo" for i in range(MAX_FACTS // 2)]
    refuted = run_pipeline(article.model_copy(update={"images": []}), call_with("refuted"))
    assert refuted.record("journalist").input["facts"] == [ARTICLE.title]
