"""The newsroom pipeline as data: scout -> fact_checker -> analyst -> critic -> journalist -> synthesizer ->
chief_editor.

Each :class:`Step` names an agent and a small pure function that builds the step's input from the
article and the typed outputs of earlier steps. Calling an agent is injected: the serving layer passes
a function that calls deployments, tests pass one that runs the heuristics.

The journalist drafts the story from the facts that survived the check (every claim the fact checker did not
refute) and, like the synthesizer, is skipped when the critic rejects the article.

An article with ``images`` first has each read by the newsreader (steps ``newsreader_0``, ``newsreader_1``
...); what it read (kind, headline, caption) reaches the journalist as one fact per image and the synthesizer
as lines after the article's text. An article without images runs exactly :data:`NEWSROOM`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Mapping

from pydantic import BaseModel, ConfigDict, Field

from .agents.analyst import AnalystInput, AnalystOutput
from .agents.chief_editor import ChiefEditorInput
from .agents.critic import ClaimCheck, CriticInput, CriticOutput
from .agents.embeddings import EmbedInput
from .agents.fact_checker import MAX_CLAIMS, MAX_EVIDENCE, FactCheckerInput, FactCheckerOutput
from .agents.journalist import MAX_FACTS, JournalistInput
from .agents.newsreader import ImageSource, NewsreaderInput, NewsreaderOutput
from .agents.synthesizer import MAX_ARTICLES, SourceArticle, SynthesizerInput, SynthesizerOutput
from .contracts import Contract, Text, get_spec
from .fallback import Answer
from .heuristics import sentences

__all__ = ["Article", "Step", "StepRecord", "PipelineResult", "NEWSROOM", "newsroom", "run_pipeline", "arun_pipeline",
           "claims_of", "image_context", "image_facts"]

Outputs = Mapping[str, BaseModel]


class Article(Contract):
    """An article entering the newsroom."""

    id: Text(64) = Field(description="Caller's id of the article.")
    title: Text(200) = Field(description="Headline.")
    text: Text(8000) = Field(description="Body text.")
    claims: list[Text(300)] = Field(default_factory=list, max_length=MAX_CLAIMS,
                                    description="Claims to check; empty means the text's first sentences.")
    evidence: list[Text(1000)] = Field(default_factory=list, max_length=32,
                                       description="Candidate evidence passages; the scout keeps the closest.")
    related: list[SourceArticle] = Field(default_factory=list, max_length=MAX_ARTICLES - 1,
                                         description="Other coverage of the story, for the synthesis.")
    images: list[ImageSource] = Field(
        default_factory=list, description="Images of the article (base64 of a PNG, JPEG or WebP file, or a "
        "data:image/...;base64, URL), each read by the newsreader first; its reading goes to the draft and the "
        "synthesis. How "
        "many one request may carry, and how large each may be, are the service's admission limits (413).")


@dataclass(frozen=True)
class Step:
    """One pipeline step: which agent, how its input is built, and when it runs (always, if ``when`` is None)."""

    name: str
    agent: str
    build: Callable[[Article, Outputs], BaseModel]
    when: Callable[[Article, Outputs], bool] | None = None


def claims_of(article: Article) -> list[str]:
    """The article's claims, or its first sentences (clipped) when none were given."""
    if article.claims:
        return list(article.claims)
    return [s[:300] for s in sentences(article.text)[:4]] or [article.title]


def _scout(article: Article, _: Outputs) -> EmbedInput:
    return EmbedInput(texts=claims_of(article) + list(article.evidence))


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0


def _fact_check(article: Article, out: Outputs) -> FactCheckerInput:
    claims = claims_of(article)
    vectors = out["scout"].vectors  # type: ignore[attr-defined]
    claim_vecs, evidence_vecs = vectors[: len(claims)], vectors[len(claims):]
    # Keep the passages closest to any claim; sorted() is stable, so ties keep the caller's order.
    score = {j: max(_cosine(c, e) for c in claim_vecs) for j, e in enumerate(evidence_vecs)}
    keep = sorted(score, key=lambda j: -score[j])[:MAX_EVIDENCE]
    return FactCheckerInput(claims=claims, evidence=[article.evidence[j] for j in keep])


def _analysis(article: Article, _: Outputs) -> AnalystInput:
    return AnalystInput(title=article.title, text=article.text)


def _critique(article: Article, out: Outputs) -> CriticInput:
    facts: FactCheckerOutput = out["fact_checker"]  # type: ignore[assignment]
    analysis: AnalystOutput = out["analyst"]  # type: ignore[assignment]
    checks = [ClaimCheck(claim=c, verdict=v.verdict) for c, v in zip(claims_of(article), facts.verdicts)]
    return CriticInput(headline=article.title, text=article.text, claim_checks=checks,
                       sentiment=analysis.sentiment, bias=analysis.bias, persuasion=analysis.persuasion)


def _not_rejected(_: Article, out: Outputs) -> bool:
    return out["critic"].verdict != "reject"  # type: ignore[attr-defined]


def _reading(i: int) -> Callable[[Article, Outputs], NewsreaderInput]:
    def build(article: Article, _: Outputs) -> NewsreaderInput:
        return NewsreaderInput(image=article.images[i])

    return build


_IMAGE_CONTEXT_CHARS = 2000


def _readings(out: Outputs) -> list[str]:
    # What the newsreader read of each image, in image order: "chart, headline 'flood': a chart about flood".
    lines: list[str] = []
    while (reading := out.get(f"newsreader_{len(lines)}")) is not None:
        read: NewsreaderOutput = reading  # type: ignore[assignment]
        headline = f", headline {read.headline!r}" if read.headline else ""
        lines.append(f"{read.image_kind}{headline}: {read.caption}")
    return lines


def image_context(out: Outputs) -> str:
    """What the newsreader read of the article's images, one line each (``""`` when there were none).

    ``[image 0] chart, headline 'flood': a chart about flood``; clipped to a bounded length.
    """
    text = "\n".join(f"[image {i}] {line}" for i, line in enumerate(_readings(out)))
    return text if len(text) <= _IMAGE_CONTEXT_CHARS else text[: _IMAGE_CONTEXT_CHARS - 3] + "..."


def image_facts(out: Outputs) -> list[str]:
    """The newsreader's readings as facts a draft may state, one per image (``"Image 0 of the article: chart,
    headline 'flood': a chart about flood"``), each within a fact's 300 characters."""
    return [f"Image {i} of the article: {line}"[:300] for i, line in enumerate(_readings(out))]


def _draft(article: Article, out: Outputs) -> JournalistInput:
    # The claims the fact checker did not refute, then one fact per image read, within the contract's 12; an
    # article whose every claim was refuted and that has no image keeps its title as the one fact.
    verdicts = [v.verdict for v in out["fact_checker"].verdicts]  # type: ignore[attr-defined]
    kept = [c for c, v in zip(claims_of(article), verdicts) if v != "refuted"]
    images = image_facts(out)
    facts = (kept[: MAX_FACTS - min(len(images), MAX_FACTS // 2)] + images)[:MAX_FACTS] or [article.title[:300]]
    return JournalistInput(topic=article.title, facts=facts, style="news")


def _synthesis(article: Article, out: Outputs) -> SynthesizerInput:
    images = image_context(out)
    block = f"\n\nImages of the article:\n{images}" if images else ""
    own = SourceArticle(title=article.title, text=article.text[: 6000 - len(block)] + block)
    return SynthesizerInput(task="synthesis" if article.related else "summary", articles=[own, *article.related])


def _decision(article: Article, out: Outputs) -> ChiefEditorInput:
    critic: CriticOutput = out["critic"]  # type: ignore[assignment]
    verdicts = [v.verdict for v in out["fact_checker"].verdicts]  # type: ignore[attr-defined]
    synthesis: SynthesizerOutput | None = out.get("synthesizer")  # type: ignore[assignment]
    return ChiefEditorInput(
        headline=article.title, text=synthesis.summary if synthesis else article.text,
        critic_verdict=critic.verdict, critic_issues=[f"{i.kind} ({i.severity}): {i.note}" for i in critic.issues],
        claims_refuted=verdicts.count("refuted"), claims_unverified=verdicts.count("unverified"))


NEWSROOM: tuple[Step, ...] = (
    Step("scout", "scout", _scout),
    Step("fact_checker", "fact_checker", _fact_check),
    Step("analyst", "analyst", _analysis),
    Step("critic", "critic", _critique),
    Step("journalist", "journalist", _draft, when=_not_rejected),
    Step("synthesizer", "synthesizer", _synthesis, when=_not_rejected),
    Step("chief_editor", "chief_editor", _decision),
)


def newsroom(article: Article) -> tuple[Step, ...]:
    """The steps for ``article``: one newsreader step per image, then :data:`NEWSROOM`."""
    reads = tuple(Step(f"newsreader_{i}", "newsreader", _reading(i)) for i in range(len(article.images)))
    return reads + NEWSROOM


class StepRecord(BaseModel):
    """What one step received and returned, and which model answered."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: str = Field(description="Step name.")
    agent: str = Field(description="Agent called.")
    skipped: bool = Field(False, description="True when the step's condition did not hold.")
    input: dict[str, Any] | None = Field(None, description="The step's input, as JSON (an image as its sha256 "
                                         "digest and length: the caller has it).")
    output: dict[str, Any] | None = Field(None, description="The step's output, as JSON.")
    answered_by: str | None = Field(None, description="Adapter ref, base ref or legacy id that answered.")


class PipelineResult(BaseModel):
    """Every step's record, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    article_id: str = Field(description="The article's id.")
    steps: list[StepRecord] = Field(description="One record per step, in pipeline order.")

    def record(self, step: str) -> StepRecord:
        """The record of ``step``; KeyError names the steps that exist."""
        for rec in self.steps:
            if rec.step == step:
                return rec
        raise KeyError(f"no step {step!r} (steps: {', '.join(r.step for r in self.steps)})")

    def output(self, step: str) -> BaseModel | None:
        """The typed output of ``step``, or None if it was skipped."""
        rec = self.record(step)
        return None if rec.output is None else get_spec(rec.agent).output_model.model_validate(rec.output)


Call = Callable[[str, BaseModel], Any]


def _drive(article: Article, steps: tuple[Step, ...]) -> Generator[tuple[str, BaseModel], Any, PipelineResult]:
    # One generator holds the pipeline logic; the sync and async runners only differ in how they call.
    outputs: dict[str, BaseModel] = {}
    records = []
    for step in steps:
        if step.when is not None and not step.when(article, outputs):
            records.append(StepRecord(step=step.name, agent=step.agent, skipped=True))
            continue
        spec = get_spec(step.agent)
        inp = step.build(article, outputs)
        result = yield step.agent, inp
        output, by = (result.output, result.answered_by) if isinstance(result, Answer) else (result, None)
        output = spec.validate_output(output, inp)
        outputs[step.name] = output
        records.append(StepRecord(step=step.name, agent=step.agent, input=spec.record_input(inp),
                                  output=output.model_dump(mode="json"), answered_by=by))
    return PipelineResult(article_id=article.id, steps=records)


def run_pipeline(article: Article | Mapping[str, Any], call: Call,
                 steps: tuple[Step, ...] | None = None) -> PipelineResult:
    """Run ``steps`` on ``article``, calling ``call(agent, input)`` for each.

    Args:
        article: the article (or its JSON object).
        call: returns the agent's output model, or an :class:`~agent_graph.fallback.Answer` (which also
            records the model that answered).
        steps: the pipeline; default :func:`newsroom` of the article (:data:`NEWSROOM` without images).

    Raises:
        ContractError: a step's output does not fit its input.
    """
    article = Article.model_validate(article)
    gen = _drive(article, newsroom(article) if steps is None else steps)
    try:
        agent, inp = next(gen)
        while True:
            agent, inp = gen.send(call(agent, inp))
    except StopIteration as done:
        return done.value


async def arun_pipeline(article: Article | Mapping[str, Any], call: Callable[[str, BaseModel], Awaitable[Any]],
                        steps: tuple[Step, ...] | None = None) -> PipelineResult:
    """:func:`run_pipeline` with an async ``call`` (the serving layer awaits deployment handles)."""
    article = Article.model_validate(article)
    gen = _drive(article, newsroom(article) if steps is None else steps)
    try:
        agent, inp = next(gen)
        while True:
            agent, inp = gen.send(await call(agent, inp))
    except StopIteration as done:
        return done.value
