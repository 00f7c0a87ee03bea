"""Deterministic last-resort answers, one small pure function per agent.

When neither the adapter nor the bare base can answer (no GPU, store missing, a reply that breaks the
contract), the fallback chain ends here, named in ``AGENT_MODEL_RECOMMENDED.json`` as
``heuristic:<name>``. Every function returns a valid output for any valid input, so the newsroom keeps
moving and tests can run the whole pipeline without a model. Quality is modest by design.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pydantic import BaseModel

from .agents import journalist as _jn, reasoning as _rs, synthesizer as _sy
from .agents.analyst import AnalystInput, AnalystOutput
from .agents.chief_editor import ChiefEditorInput, ChiefEditorOutput
from .agents.critic import CriticInput, CriticIssue, CriticOutput
from .agents.embeddings import EmbedInput, EmbedOutput
from .agents.fact_checker import ClaimVerdict, FactCheckerInput, FactCheckerOutput
from .agents.journalist import JournalistInput, JournalistOutput
from .agents.newsreader import KIND_PHRASES, NewsreaderInput, NewsreaderOutput
from .agents.re_ranker import ReRankerInput, ReRankerOutput
from .agents.reasoning import ReasoningInput, ReasoningOutput, ReasoningStep
from .agents.synthesizer import SynthesizerInput, SynthesizerOutput
from .errors import UnknownAgent

__all__ = ["Heuristic", "HEURISTICS", "get_heuristic", "run_heuristic", "sentences", "content_tokens",
           "extractive_lead", "fact_template", "editorial_rules", "premise_chain", "rule_checks",
           "evidence_overlap", "lexicon_sentiment", "token_overlap", "hashed_bow", "image_features",
           "pixel_centroids"]

_STOP = frozenset(
    "a an the of to in on for with by from at as is was are were be been has have had will would it its this that "
    "and or but not no so than then there their they he she we you i his her our your which who what when".split()
)
_POSITIVE = frozenset("good great win wins won success successful praised growth improve improved strong benefit "
                      "welcome welcomed approve approved celebrate record gain gains".split())
_NEGATIVE = frozenset("bad poor loss lost fail failed failure crisis criticised criticized disaster waste wasteful "
                      "scandal scandalous decline risk attack angry worst".split())
_LOADED = frozenset("outrageous scandalous disaster shocking disgraceful radical extreme corrupt wasteful "
                    "so-called regime".split())
_EMOTIONAL = frozenset("fear afraid shocking heartbreaking terrifying outrage outrageous furious tragic".split())
_ATTRIBUTION = re.compile(r"\b(said|says|according|reported|told|stated)\b", re.I)


def sentences(text: str) -> list[str]:
    """Split text into sentences at ``.``, ``!`` or ``?`` followed by whitespace."""
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def content_tokens(text: str) -> list[str]:
    """Lower-case word and number tokens without stop words."""
    return [t for t in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", text.lower()) if t not in _STOP]


def _clip(text: str, limit: int) -> str:
    # Whitespace-only input (" ", a non-breaking space) would clip to "", which no contract field accepts:
    # the last resort must still answer, so it says the text was empty.
    text = " ".join(text.split()) or "(empty)"
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _score(x: float) -> float:
    # Two decimals, as the training data writes scores: short to generate, easy to compare.
    return round(min(1.0, max(0.0, x)), 2)


def extractive_lead(inp: SynthesizerInput) -> SynthesizerOutput:
    """Synthesizer: the lead sentences of each article (two of a lone article), first title as headline."""
    per_article = 2 if len(inp.articles) == 1 else 1
    leads = [(i, " ".join((sentences(a.text) or [a.title])[:per_article])) for i, a in enumerate(inp.articles)]
    summary, used = "", []
    for i, lead in leads:
        candidate = f"{summary} {lead}".strip()
        if len(candidate) > _sy.SUMMARY_CHARS:
            break
        summary, used = candidate, used + [i]
    if not used:
        summary, used = _clip(leads[0][1], _sy.SUMMARY_CHARS), [0]
    points = [_clip(s, _sy.POINT_CHARS) for a in inp.articles for s in (sentences(a.text) or [a.title])[:per_article]]
    return SynthesizerOutput(headline=_clip(inp.articles[0].title, _sy.HEADLINE_CHARS), summary=summary,
                             key_points=points[:_sy.MAX_POINTS], sources=used)


def fact_template(inp: JournalistInput) -> JournalistOutput:
    """Journalist: the first fact as lede, the facts in order as body, within the word target."""
    body, used, words = [], [], 0
    for i, fact in enumerate(inp.facts):
        n = len(fact.split())
        if used and words + n > inp.max_words:
            break
        body.append(fact)
        used.append(i)
        words += n
    return JournalistOutput(headline=_clip(inp.topic, _jn.HEADLINE_CHARS), lede=_clip(inp.facts[0], _jn.LEDE_CHARS),
                            body=_clip(" ".join(body), _jn.BODY_CHARS), facts_used=used)


def editorial_rules(inp: ChiefEditorInput) -> ChiefEditorOutput:
    """Chief editor: follow the critic, tightened by the fact check."""
    if inp.critic_verdict == "reject":
        decision, priority = "reject", "normal"
    elif inp.claims_refuted:
        decision, priority = "revise", "high"
    elif inp.critic_verdict == "revise" or inp.claims_unverified:
        decision, priority = "revise", "normal"
    else:
        decision, priority = "publish", "low"
    notes = [_clip(issue, 120) for issue in inp.critic_issues]
    if inp.claims_refuted:
        notes.insert(0, f"Correct or remove {inp.claims_refuted} refuted claim(s).")
    if inp.claims_unverified:
        notes.append(f"Source {inp.claims_unverified} unverified claim(s).")
    return ChiefEditorOutput(decision=decision, priority=priority, notes=notes[:4])


def premise_chain(inp: ReasoningInput) -> ReasoningOutput:
    """Reasoning: restate up to MAX_STEPS premises as steps; confidence grows with the premises given."""
    if not inp.premises:
        return ReasoningOutput(steps=[ReasoningStep(uses=[], claim="No premises were given.")],
                               conclusion=_clip(f"Cannot answer from no premises: {inp.question}", _rs.CONCLUSION_CHARS),
                               confidence=0.1)
    steps = [ReasoningStep(uses=[i], claim=_clip(p, _rs.CLAIM_CHARS)) for i, p in enumerate(inp.premises[:_rs.MAX_STEPS])]
    return ReasoningOutput(steps=steps, conclusion=_clip(f"Given the premises: {steps[-1].claim}", _rs.CONCLUSION_CHARS),
                           confidence=_score(0.2 + 0.1 * len(steps)))


_SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


def rule_checks(inp: CriticInput) -> CriticOutput:
    """Critic: refuted claims, unverified claims, bias, persuasion and length, as rule checks."""
    issues = []
    refuted = [c for c in inp.claim_checks if c.verdict == "refuted"]
    unverified = [c for c in inp.claim_checks if c.verdict == "unverified"]
    for c in refuted:
        issues.append(CriticIssue(kind="accuracy", severity="high", note=_clip(f"Refuted: {c.claim}", 120)))
    if unverified:
        issues.append(CriticIssue(kind="sourcing", severity="medium", note=f"{len(unverified)} claim(s) unverified"))
    if inp.bias is not None and inp.bias >= 0.6:
        issues.append(CriticIssue(kind="bias", severity="medium", note=f"Bias score {inp.bias:.2f}"))
    if inp.persuasion is not None and inp.persuasion >= 0.6:
        issues.append(CriticIssue(kind="tone", severity="medium", note=f"Persuasion score {inp.persuasion:.2f}"))
    if len(inp.text.split()) < 8:
        issues.append(CriticIssue(kind="length", severity="low", note="Text is very short"))
    issues.sort(key=lambda i: _SEVERITY_ORDER[i.severity])  # stable: equal severities keep rule order
    if refuted and 2 * len(refuted) > len(inp.claim_checks):
        verdict = "reject"
    elif any(i.severity != "low" for i in issues):
        verdict = "revise"
    else:
        verdict = "pass"
    return CriticOutput(verdict=verdict, issues=issues[:4])


def _numbers(tokens: list[str]) -> set[str]:
    return {t for t in tokens if t[0].isdigit()}


def evidence_overlap(inp: FactCheckerInput) -> FactCheckerOutput:
    """Fact checker: a claim is supported by a passage that contains it or shares most of its words.

    The best passage must share at least half of the claim's words (numbers aside); it supports the
    claim when it also holds every number of the claim, and refutes it when a number differs.
    """
    passages = [content_tokens(e) for e in inp.evidence]
    verdicts = []
    for claim in inp.claims:
        if any(claim.lower().rstrip(".") in e.lower() for e in inp.evidence):
            best = next(i for i, e in enumerate(inp.evidence) if claim.lower().rstrip(".") in e.lower())
            verdicts.append(ClaimVerdict(verdict="supported", evidence=[best], confidence=0.9))
            continue
        tokens = content_tokens(claim)
        words = {t for t in tokens if not t[0].isdigit()} or set(tokens)
        overlaps = [len(words & set(p)) / len(words) if words else 0.0 for p in passages]
        if not overlaps or max(overlaps) < 0.5:
            verdicts.append(ClaimVerdict(verdict="unverified", evidence=[], confidence=0.3))
            continue
        best = overlaps.index(max(overlaps))
        label = "supported" if _numbers(tokens) <= _numbers(passages[best]) else "refuted"
        verdicts.append(ClaimVerdict(verdict=label, evidence=[best], confidence=_score(overlaps[best] * 0.8)))
    return FactCheckerOutput(verdicts=verdicts)


def lexicon_sentiment(inp: AnalystInput) -> AnalystOutput:
    """Analyst: word-list counts for sentiment, loaded language and emotional appeal."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)*", f"{inp.title} {inp.text}".lower())
    n = max(1, len(words))
    pos, neg = sum(w in _POSITIVE for w in words), sum(w in _NEGATIVE for w in words)
    loaded, emotional = sum(w in _LOADED for w in words), sum(w in _EMOTIONAL for w in words)
    sentiment = "positive" if pos > neg else "negative" if neg > pos else "neutral"
    bias = _score(abs(pos - neg) / max(1, pos + neg) * 0.4 + loaded * 4 / n)
    persuasion = _score((loaded + emotional) * 5 / n)
    flags = []
    if loaded:
        flags.append("loaded_language")
    if bias >= 0.6:
        flags.append("one_sided")
    if emotional:
        flags.append("emotional_appeal")
    if len(sentences(inp.text)) >= 2 and not _ATTRIBUTION.search(inp.text):
        flags.append("unsourced_claims")
    return AnalystOutput(sentiment=sentiment, bias=bias, persuasion=persuasion, flags=flags)


def token_overlap(inp: ReRankerInput) -> ReRankerOutput:
    """Re-ranker: the share of query words each passage contains."""
    query = set(content_tokens(inp.query)) or set(inp.query.lower().split())
    return ReRankerOutput(scores=[_score(len(query & set(content_tokens(p))) / max(1, len(query)))
                                  for p in inp.passages])


_HASH_DIM = 64


def hashed_bow(inp: EmbedInput) -> EmbedOutput:
    """Scout / memory: a hashed bag of words (stable across processes, unlike ``hash()``)."""
    vectors = []
    for text in inp.texts:
        vec = [0.0] * _HASH_DIM
        for token in content_tokens(text):
            digest = hashlib.blake2b(token.encode(), digest_size=4).digest()
            vec[int.from_bytes(digest, "little") % _HASH_DIM] += 1.0
        norm = math.sqrt(sum(v * v for v in vec))
        if inp.normalize and norm:
            vec = [v / norm for v in vec]
        vectors.append(vec)
    return EmbedOutput(model="heuristic:hashed_bow", dimensions=_HASH_DIM, vectors=vectors)


# Nearest-centroid image kinds. Features of an image scaled to 64x64 (nearest neighbour, so flat areas stay
# flat): share of near-white pixels, mean saturation, share of the 512 colour cells (3 bits a channel) in
# use / 64, mean vertical luminance step (text lines), share of pixels equal to their right neighbour. The
# centroids and scales were fitted on 800 images of training.vision_task (seed 1) and classify 99% of
# another 800 (a test keeps that above 90%); on real photographs they are a crude guess, hence the low
# confidence.
_SIDE = 64
_FEATURE_SCALE = (0.273, 0.107, 0.35, 0.072, 0.253)
_CENTROIDS = {
    "chart": (0.646, 0.096, 0.236, 0.088, 0.844),
    "photo": (0.139, 0.321, 0.989, 0.064, 0.266),
    "text_page": (0.663, 0.095, 0.254, 0.237, 0.852),
    "map": (0.144, 0.198, 0.259, 0.078, 0.82),
}


def image_features(image: Any) -> tuple[float, ...]:
    """The five pixel statistics :func:`pixel_centroids` classifies by, of a PIL image of any size and mode."""
    from PIL import Image

    small = image.convert("RGB").resize((_SIDE, _SIDE), Image.Resampling.NEAREST)
    rgb, n = small.tobytes(), _SIDE * _SIDE
    pixels = [rgb[i:i + 3] for i in range(0, 3 * n, 3)]
    white = sum(min(p) > 225 for p in pixels) / n
    saturation = sum(small.convert("HSV").tobytes()[1::3]) / n / 255
    colours = len({(p[0] >> 5, p[1] >> 5, p[2] >> 5) for p in pixels}) / 64
    lum = small.convert("L").tobytes()
    vertical = sum(abs(lum[i + _SIDE] - lum[i]) for i in range(n - _SIDE)) / ((n - _SIDE) * 255)
    flat = sum(lum[i + 1] == lum[i] for i in range(n - 1) if (i + 1) % _SIDE) / (n - _SIDE)
    return white, saturation, colours, vertical, flat


def pixel_centroids(inp: NewsreaderInput, images: Sequence[Any]) -> NewsreaderOutput:
    """Newsreader: the image kind whose centroid is nearest in pixel statistics; no headline is read.

    Confidence is low by design (0.05..0.3, higher the clearer the nearest kind wins): the contract's
    confidence is how legible the headline is, and this step reads none.
    """
    features = image_features(images[0])
    dist = sorted((math.dist([f / s for f, s in zip(features, _FEATURE_SCALE)],
                             [c / s for c, s in zip(centroid, _FEATURE_SCALE)]), kind)
                  for kind, centroid in _CENTROIDS.items())
    (best, kind), (second, _) = dist[0], dist[1]
    margin = (second - best) / (second + best) if second + best else 0.0
    return NewsreaderOutput(image_kind=kind, headline="", caption=KIND_PHRASES[kind],
                            confidence=_score(0.05 + 0.25 * margin))


@dataclass(frozen=True)
class Heuristic:
    """A named heuristic and the agent whose contract it answers.

    ``images``: the heuristic reads the request's images too, decoded (``fn(inp, images)``); the serving
    layer passes what its admission decoded, never the raw strings.
    """

    name: str
    agent: str
    fn: Callable[..., BaseModel]
    images: bool = False


HEURISTICS: dict[str, Heuristic] = {h.name: h for h in (
    Heuristic("extractive_lead", "synthesizer", extractive_lead),
    Heuristic("fact_template", "journalist", fact_template),
    Heuristic("editorial_rules", "chief_editor", editorial_rules),
    Heuristic("premise_chain", "reasoning", premise_chain),
    Heuristic("rule_checks", "critic", rule_checks),
    Heuristic("evidence_overlap", "fact_checker", evidence_overlap),
    Heuristic("lexicon_sentiment", "analyst", lexicon_sentiment),
    Heuristic("token_overlap", "re_ranker", token_overlap),
    Heuristic("hashed_bow", "scout", hashed_bow),
    Heuristic("hashed_bow_memory", "memory", hashed_bow),
    Heuristic("pixel_centroids", "newsreader", pixel_centroids, images=True),
)}


def get_heuristic(name: str) -> Heuristic:
    """The heuristic called ``name`` (without the ``heuristic:`` prefix).

    Raises:
        UnknownAgent: no such heuristic; the message lists the known ones.
    """
    try:
        return HEURISTICS[name]
    except KeyError:
        raise UnknownAgent(f"heuristic:{name}", [f"heuristic:{n}" for n in HEURISTICS]) from None


def run_heuristic(name: str, inp: BaseModel, images: Sequence[Any] | None = None) -> BaseModel:
    """Run heuristic ``name`` on ``inp`` (and, for a heuristic that reads images, on ``images``: the
    decoded images of ``inp``'s image fields, in order).

    Raises:
        ValueError: an image heuristic without images.
    """
    heuristic = get_heuristic(name)
    if not heuristic.images:
        return heuristic.fn(inp)
    if not images:
        raise ValueError(f"heuristic:{name} reads the request's images: pass them decoded "
                         f"(deployments.vision.admit_image)")
    return heuristic.fn(inp, images)
