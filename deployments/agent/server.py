"""AgentServer: one agent's typed contract and fallback chain over the shared models. No Serve wiring.

An agent is data (``agent_graph``): a prompt, a typed output contract and an ordered fallback chain from
``AGENT_MODEL_MAP.json``. This class walks that chain for one request: the agent's adapter on the shared
BaseLLM, then the bare base, then the legacy last resort (a local heuristic). Embedding agents (scout,
memory) walk ``base`` (the sentence-transformers deployment) then ``legacy``. Model calls are injected as
async callables, so tests drive the class with fakes and ``deployments/agent.py`` passes Serve handles.

A multimodal agent (newsreader) walks the same chain on a vision-language base. Its images are admitted
(``deployments.vision``: size before decoding, format, pixels, then a full decode in a worker thread)
before any step, so a bad image is the caller's 4xx, never a model failure walked down the chain; the model
steps send the images as the caller gave them (the base replica admits them again) and the legacy step
reads the decoded pixels.

This is the one walker of an agent's chain (``agent_graph.fallback`` holds the chain as data). A caller's
mistake (bad input, a prompt over the engine limit) or an overloaded base stops it at once instead of being
"answered" by a later step, strict mode tries the first step only, and every request has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent_graph import (AgentMap, AgentSpec, ContractError, Route, generation_request, get_spec, routes,
                         run_heuristic)
from deployments.errors import (AgentUnavailableError, FallbackExhaustedError, InvalidRequestError, OverloadedError,
                                RequestTooLargeError, ServeError, UnsupportedMediaTypeError)
from deployments.limits import LIMITS, AdmissionLimits, check_image_count
from deployments.vision.images import admit_image_async
from rollout.router import CanaryRouter, Choice, pin_and_choose

__all__ = ["DEFAULT_DEADLINE_S", "DeadlineExceededError", "AgentFailure", "AgentUsage", "AgentResponse",
           "AgentMetrics", "AgentServer", "LLMCall", "EmbedCall", "is_caller_error"]

log = logging.getLogger(__name__)

# Seconds an agent request may spend on model steps before the legacy step answers it.
DEFAULT_DEADLINE_S = 30.0

# (multiplexed model id, GenerateRequest body) -> GenerateResponse dict
LLMCall = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
# EmbedRequest body -> EmbedResponse dict
EmbedCall = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class DeadlineExceededError(TimeoutError):
    """A model step did not answer within what was left of the agent's deadline (the next step is tried)."""


class AgentFailure(BaseModel):
    """One step that failed before the answer."""

    route: str = Field(description="The step, e.g. 'adapter:critic/mistral_critic_v1@current'.")
    reason: str = Field(description="Why it failed (exception type and message).")


class AgentUsage(BaseModel):
    """Tokens of every model call made for the request, failed steps included."""

    prompt_tokens: int = Field(0, ge=0, description="Prompt tokens processed.")
    completion_tokens: int = Field(0, ge=0, description="Tokens generated.")
    total_tokens: int = Field(0, ge=0, description="Sum of the two.")


class AgentResponse(BaseModel):
    """What ``POST /agents/{agent}`` returns; the ingress narrows ``output`` to the agent's output model."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(description="The agent that answered.")
    output: dict[str, Any] = Field(description="The agent's typed output (validated against its contract).")
    answered_by: str = Field(description="Pinned adapter ref, pinned base ref, embedding model or 'heuristic:<name>'.")
    step: Literal["adapter", "base", "legacy"] = Field(description="Which step of the fallback chain answered.")
    pool: str | None = Field(None, description="The base pool (deployment) that answered; None for the legacy "
                             "step and embedding agents.")
    fallback: bool = Field(description="True when an earlier step failed and a later one answered.")
    failures: list[AgentFailure] = Field(default_factory=list, description="Steps that failed, in order.")
    usage: AgentUsage = Field(default_factory=AgentUsage, description="Token counts of the model calls made.")
    unavailable_pools: list[str] = Field(default_factory=list, description="Base pools a model call found "
                                         "unavailable (a dead replica) before it was answered elsewhere; the "
                                         "ingress turns /healthz degraded on it at once.")
    latency_s: float = Field(ge=0, description="Seconds the agent spent on the request.")


def is_caller_error(exc: BaseException) -> bool:
    """True for failures no other model would fix: the request is wrong, or the BaseLLM is overloaded."""
    caller = (InvalidRequestError, RequestTooLargeError, UnsupportedMediaTypeError, OverloadedError)
    return isinstance(exc, caller) or type(exc).__name__ == "BackPressureError"


class AgentMetrics:
    """``justnews_agent_*`` metrics through Ray Serve's metrics API, mirrored in :attr:`totals`."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.requests = metrics.Counter(
            "justnews_agent_requests", description="Agent requests by outcome and the step that answered.",
            tag_keys=("agent", "outcome", "step"))
        self.fallbacks = metrics.Counter(
            "justnews_agent_fallbacks",
            description="Requests answered by a later fallback step; 'failed' is the first step that failed.",
            tag_keys=("agent", "failed", "answered"))
        self.step_failures = metrics.Counter(
            "justnews_agent_step_failures", description="Failed fallback steps.", tag_keys=("agent", "step"))
        self.latency = metrics.Histogram(
            "justnews_agent_latency_s", description="Seconds per agent request.",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120], tag_keys=("agent",))
        self.model_latency = metrics.Histogram(
            "justnews_agent_model_latency_s",
            description="Seconds per model step (call and output validation) by adapter namespace, version, "
                        "canary role (none, baseline, candidate, mirror) and outcome (ok, error, schema).",
            boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
            tag_keys=("agent", "adapter", "version", "role", "outcome"))
        self.schema_failures = metrics.Counter(
            "justnews_agent_schema_failures",
            description="Model replies that did not validate against the agent's output contract.",
            tag_keys=("agent", "adapter", "version"))
        self.totals: dict[str, Counter] = {"requests": Counter(), "fallbacks": Counter(), "step_failures": Counter(),
                                           "schema_failures": Counter()}

    def model_step(self, agent: str, model_id: str, role: str | None, seconds: float, outcome: str) -> None:
        """One model call of a fallback step (``outcome``: ok, error or schema)."""
        adapter, _, version = model_id.partition("@")
        tags = {"agent": agent, "adapter": adapter, "version": version, "role": role or "none"}
        self.model_latency.observe(seconds, tags={**tags, "outcome": outcome})
        if outcome == "schema":
            self.schema_failures.inc(tags={k: tags[k] for k in ("agent", "adapter", "version")})
            self.totals["schema_failures"][model_id] += 1

    def step_failed(self, agent: str, step: str) -> None:
        self.step_failures.inc(tags={"agent": agent, "step": step})
        self.totals["step_failures"][step] += 1

    def done(self, agent: str, outcome: str, step: str, seconds: float, failed_first: str | None = None) -> None:
        self.requests.inc(tags={"agent": agent, "outcome": outcome, "step": step})
        self.latency.observe(seconds, tags={"agent": agent})
        self.totals["requests"][f"{outcome}:{step}"] += 1
        if failed_first is not None and outcome == "ok":
            self.fallbacks.inc(tags={"agent": agent, "failed": failed_first, "answered": step})
            self.totals["fallbacks"][f"{failed_first}->{step}"] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: dict(tally) for name, tally in self.totals.items()}


class AgentServer:
    """Answer requests for one agent by walking its fallback chain.

    Args:
        name: the agent (a key of the map with a registered contract).
        agent_map: the loaded agent map.
        llm: calls the BaseLLM deployment (needed by llm agents).
        embed: calls the embeddings deployment (needed by embedding agents).
        strict: never fall back; the first step's failure is the answer.
        metrics: an :class:`AgentMetrics`; a fresh one by default.
        limits: the admission limits a multimodal agent's images must pass.
    """

    def __init__(self, name: str, agent_map: AgentMap, *, llm: LLMCall | None = None, embed: EmbedCall | None = None,
                 strict: bool = False, metrics: AgentMetrics | None = None,
                 pin: Callable[[str], str] | None = None, canary: CanaryRouter | None = None,
                 deadline_s: float = DEFAULT_DEADLINE_S, limits: AdmissionLimits = LIMITS):
        if deadline_s <= 0:
            raise ValueError(f"deadline_s ({deadline_s}) must be > 0")
        self.deadline_s = deadline_s
        self.name = name
        self.map = agent_map
        self.entry = agent_map.entry(name)
        self.spec: AgentSpec = get_spec(name)
        self.limits = limits
        if self.spec.prompted and llm is None:
            raise ValueError(f"agent {name!r} is an {self.spec.kind} agent and needs an llm caller")
        if self.spec.kind == "embedding" and embed is None:
            raise ValueError(f"agent {name!r} is an embedding agent and needs an embed caller")
        self._llm, self._embed = llm, embed
        self.strict = strict
        self.metrics = metrics or AgentMetrics()
        # Pinning '@current' per request makes the multiplexed id name a concrete version: after
        # `modelstore promote`, new requests ask the BaseLLM for the new version (loaded on demand,
        # the old one aged out by its LRU) while requests already running finish on the old one.
        self._pin = pin
        # A running canary of the adapter sends a share of the steps to its candidate version and records
        # what each version did (rollout.router); the gate reads those records.
        self._canary = canary
        self._shadows: set[asyncio.Task] = set()

    async def answer(self, body: Any, *, strict: bool = False) -> AgentResponse:
        """Validate ``body`` and answer it with the first step of the chain that yields a valid output.

        Args:
            body: the agent's input (dict, JSON text or model instance).
            strict: this request only: no fallback (the server's own ``strict`` always applies).

        Raises:
            InvalidRequestError: the body does not validate (400), or an image is not admitted (400:
                corrupt, truncated, animated, a remote URL; InvalidImageError).
            UnsupportedMediaTypeError: an image in a format not decoded (415).
            RequestTooLargeError: an image over a byte or pixel limit, too many images (413); or raised by
                the BaseLLM and passed through, as OverloadedError (503) is.
            AgentUnavailableError: strict mode and the first step failed (503).
            FallbackExhaustedError: every step failed (502).
        """
        started = time.monotonic()
        try:
            inp = self.spec.load_input(body)
        except Exception as exc:  # InvalidAgentInput: the caller's mistake
            self.metrics.done(self.name, "invalid_input", "none", time.monotonic() - started)
            raise InvalidRequestError(str(exc)) from None
        try:
            images = await self._admit(inp)
        except ServeError as exc:  # the caller's image: refused before any step
            self.metrics.done(self.name, exc.error_type, "none", time.monotonic() - started)
            raise
        strict = strict or self.strict
        chain = routes(self.map, self.name, self.spec.task_of(inp))
        if strict:
            chain = chain[:1]
        usage = AgentUsage()
        unavailable: set[str] = set()
        failures: list[AgentFailure] = []
        deadline = started + self.deadline_s
        for route in chain:
            try:
                output, answered_by, pool = await self._bounded(route, inp, usage, deadline, unavailable, images)
            except Exception as exc:  # noqa: BLE001 - any failure of a step means: try the next one
                if is_caller_error(exc):
                    self.metrics.done(self.name, getattr(exc, "error_type", "overloaded"), route.step,
                                      time.monotonic() - started)
                    raise
                reason = f"{type(exc).__name__}: {_first_line(exc)}"
                log.warning("agent %s: %s failed%s: %s", self.name, route, "" if strict else ", falling back", reason)
                self.metrics.step_failed(self.name, route.step)
                failures.append(AgentFailure(route=str(route), reason=reason))
                continue
            seconds = time.monotonic() - started
            self.metrics.done(self.name, "ok", route.step, seconds, chain[0].step if failures else None)
            return AgentResponse(agent=self.name, output=output.model_dump(mode="json"), answered_by=answered_by,
                                 step=route.step, pool=pool, fallback=bool(failures), failures=failures, usage=usage,
                                 unavailable_pools=sorted(unavailable),
                                 latency_s=round(seconds, 4))
        seconds = time.monotonic() - started
        tried = "; ".join(f"{f.route}: {f.reason}" for f in failures)
        if strict:
            self.metrics.done(self.name, "strict_failure", chain[0].step, seconds)
            raise AgentUnavailableError(f"agent {self.name!r}: {tried}; strict mode forbids falling back")
        self.metrics.done(self.name, "exhausted", "none", seconds)
        raise FallbackExhaustedError(f"agent {self.name!r}: every fallback step failed ({tried})")

    async def _admit(self, inp: BaseModel) -> list[Any]:
        """The decoded images of ``inp`` (none for a text agent), admitted under the limits.

        Raises:
            ServeError: the first image refused (400, 413 or 415), or too many images (413).
        """
        sources = self.spec.images_of(inp)
        if not sources:
            return []
        check_image_count(len(sources), self.limits)
        admitted = await asyncio.gather(*(admit_image_async(source, self.limits, field=name)
                                          for name, source in sources))
        return [a.image for a in admitted]

    async def _bounded(self, route: Route, inp: BaseModel, usage: AgentUsage, deadline: float,
                       unavailable: set[str] | None = None,
                       images: list[Any] = ()) -> tuple[BaseModel, str, str | None]:
        """Run a step within what is left of the request's deadline. The legacy step is local and quick, so it
        always runs: a request whose model steps used up the deadline is still answered."""
        if route.step == "legacy":
            return await self._run(route, inp, usage, unavailable, images)
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceededError(f"the agent's {self.deadline_s:g}s deadline passed before this step")
        budget = asyncio.timeout(left)  # in this task, unlike wait_for: the step pins its version at once
        try:
            async with budget:
                return await self._run(route, inp, usage, unavailable, images)
        except TimeoutError:
            if not budget.expired():  # a timeout of the step's own, not the deadline
                raise
            raise DeadlineExceededError(f"no answer within the {left:.1f}s left of the agent's "
                                        f"{self.deadline_s:g}s deadline") from None

    async def _run(self, route: Route, inp: BaseModel, usage: AgentUsage, unavailable: set[str] | None = None,
                   images: list[Any] = ()) -> tuple[BaseModel, str, str | None]:
        if route.step == "legacy":
            if not route.model_id.startswith("heuristic:"):
                raise NotImplementedError(f"legacy model {route.model_id!r} is not served by this project")
            output = run_heuristic(route.model_id.split(":", 1)[1], inp, images)
            return self.spec.validate_output(output, inp), route.model_id, None
        if self.spec.kind == "embedding":
            reply = await self._embed(inp.model_dump(mode="json"))
            return self.spec.validate_output(reply, inp), route.model_id, None
        body = generation_request(self.spec, inp, self.entry)
        # A failure to pin (ref gone from the store) is a failed step. Chat completions route through the same call.
        choice = pin_and_choose(route.multiplexed_model_id, self._pin,
                                self._canary if route.step == "adapter" else None)
        if choice.mirror_model_id is not None:
            task = asyncio.get_running_loop().create_task(self._mirror(choice, body, inp))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        started = time.monotonic()
        try:
            output, reply = await self._call(choice.model_id, body, inp, usage, unavailable)
        except Exception as exc:
            if not is_caller_error(exc):
                self._observe(choice, time.monotonic() - started, _outcome(exc))
            raise
        self._observe(choice, time.monotonic() - started, "ok")
        answered_by = (reply.get("adapter") if route.step == "adapter" else None) or reply.get("base") or choice.model_id
        return output, answered_by, reply.get("pool")

    async def _call(self, model_id: str, body: dict[str, Any], inp: BaseModel,
                    usage: AgentUsage | None, unavailable: set[str] | None = None) -> tuple[BaseModel, dict[str, Any]]:
        try:
            reply = await self._llm(model_id, body)
        except Exception as exc:
            if unavailable is not None:  # every pool of the route was down (PoolUnavailableError)
                unavailable.update(getattr(exc, "pools", None) or ())
            raise
        if unavailable is not None:
            unavailable.update(reply.get("unavailable_pools") or ())
        if usage is not None:
            usage.prompt_tokens += reply.get("prompt_tokens", 0)
            usage.completion_tokens += reply.get("completion_tokens", 0)
            usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
        if reply.get("finish_reason") == "length":
            raise ContractError(self.name, reply.get("text", ""),
                                f"reply truncated at max_new_tokens ({body['max_new_tokens']})")
        return self.spec.parse(reply["text"], inp), reply

    def _observe(self, choice: Choice, seconds: float, outcome: str, mirrored: bool = False) -> None:
        model_id = choice.mirror_model_id if mirrored else choice.model_id
        role = "mirror" if mirrored else choice.role
        self.metrics.model_step(self.name, model_id or "none", role, seconds, outcome)
        if self._canary is not None:
            self._canary.record(choice, seconds, outcome, role="candidate" if mirrored else None, mirrored=mirrored)

    async def _mirror(self, choice: Choice, body: dict[str, Any], inp: BaseModel) -> None:
        """Send a baseline-routed step to the canary's candidate too; its answer is only measured."""
        started = time.monotonic()
        try:
            await self._call(choice.mirror_model_id, body, inp, None)
        except Exception as exc:  # noqa: BLE001 - a shadow call never reaches the caller
            if not is_caller_error(exc):
                self._observe(choice, time.monotonic() - started, _outcome(exc), mirrored=True)
            return
        self._observe(choice, time.monotonic() - started, "ok", mirrored=True)

    def flush(self) -> None:
        """Write out pending canary observations (on shutdown)."""
        if self._canary is not None:
            self._canary.flush()

    def stats(self) -> dict[str, Any]:
        """The agent's totals: requests by outcome and step, fallbacks, failed steps."""
        return {"agent": self.name, "strict": self.strict, "chain": [str(r) for r in routes(self.map, self.name)],
                **self.metrics.snapshot()}


def _outcome(exc: BaseException) -> str:
    """``schema`` for a reply that broke the agent's contract, else ``error``."""
    return "schema" if isinstance(exc, ContractError) or isinstance(getattr(exc, "cause", None), ContractError) \
        else "error"


def _first_line(exc: BaseException) -> str:
    # A RayTaskError's str() carries the remote traceback; the first line of the cause is what matters.
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc) or type(exc).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines and "Traceback" in text else (lines[0] if lines else text))[:500]
