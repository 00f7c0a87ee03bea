"""The shared JSON-adapter logic: one :class:`AgentSpec` per agent, one registry, one parser.

Every text agent is the same machine with different data: a system prompt, a rendering of its typed
input as the user turn, and a pydantic output model whose JSON schema constrains decoding. Keeping the
machine here (and only the data in ``agents/<family>.py``) is what stops prompts, schemas and parsers
drifting apart per agent.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Callable, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .errors import ContractError, InvalidAgentInput, UnknownAgent

__all__ = [
    "Contract",
    "Score",
    "Text",
    "Index",
    "IndexList",
    "one_per",
    "INDEX_INTO",
    "ONE_PER",
    "numbered",
    "AgentSpec",
    "AGENTS",
    "register",
    "get_spec",
    "agent_names",
    "schema_skeleton",
    "format_validation_error",
]


class Contract(BaseModel):
    """Base of every agent input and output model: unknown keys are refused and instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Scores are floats in [0, 1] so a tiny model has one small range to learn for every agent.
Score = Annotated[float, Field(ge=0.0, le=1.0)]


def Text(max_length: int, min_length: int = 1) -> Any:  # noqa: N802 - reads as a type in field annotations
    """A string type bounded to ``[min_length, max_length]`` characters."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length)]


def Index(limit: int) -> Any:  # noqa: N802
    """A 0-based position into an input list of at most ``limit`` items."""
    return Annotated[int, Field(ge=0, le=limit - 1)]


# Markers tying an output field to an input list. The grammar can only bound a list by a constant, so
# ``json_schema(inp)`` narrows the schema per request (indices below len, one item per input item): a
# constrained reply then always fits its input, and ``validate_output`` checks the same rule generically.
INDEX_INTO = "x-index-into"
ONE_PER = "x-one-per"


def IndexList(into: str, limit: int, max_items: int | None = None) -> Any:  # noqa: N802
    """A bounded list of 0-based positions into the input's list field ``into`` (at most ``limit`` long)."""
    return Annotated[list[Index(limit)], Field(max_length=max_items or limit, json_schema_extra={INDEX_INTO: into})]


def one_per(into: str) -> dict[str, str]:
    """``json_schema_extra`` for an output list that holds exactly one item per item of input ``into``."""
    return {ONE_PER: into}


def numbered(items: list[str] | tuple[str, ...]) -> str:
    """Render a list as ``[0] first`` lines: outputs refer to items by these positions."""
    return "\n".join(f"[{i}] {item}" for i, item in enumerate(items))


def format_validation_error(exc: ValidationError, limit: int = 5) -> str:
    """Render a pydantic error compactly: ``path: message`` for the first ``limit`` problems."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"{loc}: {err['msg']}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _resolve(schema: dict, defs: dict) -> dict:
    ref = schema.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if ref else schema


def schema_skeleton(schema: dict, defs: dict | None = None) -> str:
    """A compact picture of the JSON a schema accepts, shown to the model in the system prompt.

    Keys appear in the order the grammar emits them; enums read ``"a|b"``, numbers ``<0.0..1.0>``,
    strings ``"<text, at most N chars>"``, arrays one item. Example:
    ``{"verdict":"pass|revise","issues":[{"note":"<text, at most 120 chars>"}]}``.
    """
    defs = schema.get("$defs", {}) if defs is None else defs
    schema = _resolve(schema, defs)
    if "enum" in schema:
        return json.dumps("|".join(str(v) for v in schema["enum"]))
    kind = schema.get("type")
    if kind == "object":
        fields = ",".join(f"{json.dumps(k)}:{schema_skeleton(v, defs)}" for k, v in schema.get("properties", {}).items())
        return "{" + fields + "}"
    if kind == "array":
        return "[" + schema_skeleton(schema.get("items", {}), defs) + "]"
    if kind == "string":
        return f'"<text, at most {schema["maxLength"]} chars>"' if "maxLength" in schema else '"<text>"'
    if kind in ("number", "integer"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        return f"<{lo}..{hi}>" if lo is not None and hi is not None else f"<{kind}>"
    if kind == "boolean":
        return "<true|false>"
    return "<value>"


def _narrow(node: Any, inp: BaseModel | None) -> None:
    """Drop the markers from a schema copy in place, applying them to ``inp``'s list lengths if given."""
    if isinstance(node, list):
        for item in node:
            _narrow(item, inp)
        return
    if not isinstance(node, dict):
        return
    into, per = node.pop(INDEX_INTO, None), node.pop(ONE_PER, None)
    if inp is not None and into is not None:
        n = len(getattr(inp, into))
        node["maxItems"] = min(node.get("maxItems", n), n)
        node["items"] = {**node["items"], "maximum": max(n - 1, 0)}
    if inp is not None and per is not None:
        n = len(getattr(inp, per))
        node["minItems"] = node["maxItems"] = n
    for value in node.values():
        _narrow(value, inp)


def _check_refs(out: BaseModel, inp: BaseModel, path: str = "") -> None:
    """Enforce the markers on an output instance; ValueError names the field, the value and the limit."""
    for name, info in type(out).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        value = getattr(out, name)
        where = f"{path}{name}"
        if INDEX_INTO in extra:
            n = len(getattr(inp, extra[INDEX_INTO]))
            bad = [i for i in value if i >= n]
            if bad:
                raise ValueError(f"{where} refers to {extra[INDEX_INTO]}[{bad[0]}] but the input has {n} {extra[INDEX_INTO]}")
        if ONE_PER in extra:
            n = len(getattr(inp, extra[ONE_PER]))
            if len(value) != n:
                raise ValueError(f"{where} has {len(value)} items, expected one per input {extra[ONE_PER]} ({n})")
        items = value if isinstance(value, (list, tuple)) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                _check_refs(item, inp, f"{where}[{i}]." if item is not value else f"{where}.")


I = TypeVar("I", bound=BaseModel)
O = TypeVar("O", bound=BaseModel)


@dataclass(frozen=True)
class AgentSpec(Generic[I, O]):
    """Everything needed to call one agent and trust its answer.

    Attributes:
        name: agent name, the key in ``AGENT_MODEL_MAP.json``.
        input_model: pydantic model of a request (validated at the HTTP boundary).
        output_model: pydantic model of a reply; its JSON schema constrains decoding.
        example: a valid input, used by docs, tests and synthetic training data.
        kind: ``"llm"`` agents are prompted; ``"multimodal"`` agents are prompted with images too (the
            user turn holds one image part per image, then the text); ``"embedding"`` agents only share
            the typed contract.
        instructions: the task part of the system prompt (the JSON shape is appended here).
        render: turns an input into the user turn's text; deterministic and compact.
        task: optional task-router key of an input (``AgentEntry.task_adapters`` maps it to an adapter).
        image_fields: the input's image fields (multimodal agents): strings holding base64 or a ``data:``
            URL, checked by the input model for type and length only; the serving layer admits (decodes)
            them before any model step.
        system_turn: whether the prompt opens with the system prompt (instructions + the reply's JSON shape).
            False for an agent whose base was tuned on bare user turns (LLaVA-NeXT-Mistral's chat format
            has no system turn): its user turn then carries the whole task, and the JSON shape is enforced
            by the constrained decoding alone.
    """

    name: str
    input_model: type[I]
    output_model: type[O]
    example: I
    kind: Literal["llm", "embedding", "multimodal"] = "llm"
    instructions: str = ""
    render: Callable[[I], str] | None = None
    task: Callable[[I], str | None] | None = field(default=None)
    image_fields: tuple[str, ...] = ()
    system_turn: bool = True

    def __post_init__(self) -> None:
        if self.prompted and (self.render is None or not self.instructions):
            raise ValueError(f"{self.kind} agent {self.name!r} needs instructions and a render function")
        if (self.kind == "multimodal") != bool(self.image_fields):
            raise ValueError(f"agent {self.name!r}: a multimodal agent, and only one, names its image_fields "
                             f"(kind {self.kind!r}, image_fields {list(self.image_fields)})")
        unknown = [f for f in self.image_fields if f not in self.input_model.model_fields]
        if unknown:
            raise ValueError(f"agent {self.name!r}: image_fields {unknown} are not fields of "
                             f"{self.input_model.__name__}")
        if not isinstance(self.example, self.input_model):
            raise ValueError(f"agent {self.name!r}: example is a {type(self.example).__name__}, "
                             f"expected {self.input_model.__name__}")

    @property
    def prompted(self) -> bool:
        """Whether the agent is prompted on a base (``llm`` and ``multimodal`` agents)."""
        return self.kind in ("llm", "multimodal")

    def images_of(self, inp: I) -> list[tuple[str, str]]:
        """``(field, source)`` of every image of ``inp``, in field order (a None field holds no image)."""
        return [(f, getattr(inp, f)) for f in self.image_fields if getattr(inp, f) is not None]

    def record_input(self, inp: I) -> dict[str, Any]:
        """``inp`` as JSON for records and logs: each image replaced by its digest and length.

        The caller has the images; echoing megabytes of base64 in every record would only cost bandwidth.
        """
        out = inp.model_dump(mode="json")
        for name, source in self.images_of(inp):
            digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
            out[name] = f"sha256:{digest} ({len(source)} chars)"
        return out

    @cached_property
    def _schema(self) -> dict[str, Any]:
        return self.output_model.model_json_schema()

    def json_schema(self, inp: I | None = None) -> dict[str, Any]:
        """The JSON schema that constrains decoding, as a fresh copy.

        Args:
            inp: the request; when given, index fields are bounded by its list lengths and one-per lists
                get exactly that many items, so every constrained reply also fits this input.
        """
        schema = copy.deepcopy(self._schema)
        _narrow(schema, inp)
        return schema

    @cached_property
    def system_prompt(self) -> str:
        """Instructions plus the exact JSON shape the reply must take."""
        shape = schema_skeleton(self.json_schema())
        return f"{self.instructions}\nReply with one compact JSON object and nothing else, shaped as: {shape}"

    def load_input(self, data: Any) -> I:
        """Validate a request body (a dict, JSON text or an input instance) into the input model.

        Raises:
            InvalidAgentInput: the body does not validate; the message names the fields.
        """
        if isinstance(data, self.input_model):
            return data
        try:
            if isinstance(data, (str, bytes)):
                return self.input_model.model_validate_json(data)
            return self.input_model.model_validate(data)
        except ValidationError as exc:
            raise InvalidAgentInput(self.name, format_validation_error(exc)) from exc

    def build_messages(self, inp: I) -> list[dict[str, str]]:
        """Chat messages for ``inp``: the system prompt (unless ``system_turn`` is off), then the rendered input
        as the user turn.

        A multimodal agent's images are not in the messages: a generation request carries them beside, in
        the order of :meth:`images_of`, and the base replica opens the first user turn with one image part
        per image (as :meth:`prompt` does).
        """
        if not self.prompted or self.render is None:
            raise ContractError(self.name, "", f"{self.kind} agent {self.name!r} is not prompted")
        inp = self.load_input(inp)
        user = {"role": "user", "content": self.render(inp)}
        return [{"role": "system", "content": self.system_prompt}, user] if self.system_turn else [user]

    def prompt(self, inp: I, tokenizer: Any) -> str:
        """The prompt string through ``tokenizer``'s chat template (Mistral folds the system turn into [INST]).

        For a multimodal agent the user turn is content parts, ``{"type": "image"}`` per image then the text,
        which a vision base's template (``modelstore.tiny_vision.VISION_CHAT_TEMPLATE``) renders as one image
        token each: the prompt the base replica builds from a generation request with ``images``.
        """
        messages: list[dict[str, Any]] = self.build_messages(inp)
        if self.kind == "multimodal":
            parts = [{"type": "image"} for _ in self.images_of(self.load_input(inp))]
            messages[-1] = {**messages[-1], "content": parts + [{"type": "text", "text": messages[-1]["content"]}]}
        return tokenizer.apply_chat_template(messages, tokenize=False)

    def task_of(self, inp: I) -> str | None:
        """The task-router key of ``inp``, or None when the agent has a single adapter."""
        return self.task(inp) if self.task is not None else None

    def validate_output(self, out: O | dict, inp: I | None = None, *, text: str | None = None) -> O:
        """Validate an output (instance or dict) and, given the input, cross-check it.

        Raises:
            ContractError: the output does not validate or does not fit the input.
        """
        shown = text if text is not None else (out.model_dump_json() if isinstance(out, BaseModel) else repr(out))
        try:
            result = self.output_model.model_validate(out.model_dump() if isinstance(out, BaseModel) else out)
        except ValidationError as exc:
            raise ContractError(self.name, shown, format_validation_error(exc)) from exc
        if inp is not None:
            try:
                _check_refs(result, inp)
            except ValueError as exc:
                raise ContractError(self.name, shown, str(exc)) from exc
        return result

    def parse(self, text: str, inp: I | None = None) -> O:
        """Parse a model reply into the output model.

        Constrained decoding yields exactly one compact JSON value; an unconstrained fallback (a legacy
        model) may wrap it in chatter, so the first JSON object in the text is accepted as well.

        Raises:
            ContractError: the text holds no JSON object, or the object does not validate.
        """
        stripped = text.strip()
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            start = stripped.find("{")
            try:
                if start < 0:
                    raise exc
                data, _ = json.JSONDecoder().raw_decode(stripped, start)
            except json.JSONDecodeError:
                raise ContractError(self.name, text, f"not JSON ({exc.msg} at char {exc.pos})") from exc
        if not isinstance(data, dict):
            raise ContractError(self.name, text, f"expected a JSON object, got {type(data).__name__}")
        return self.validate_output(data, inp, text=text)


AGENTS: dict[str, AgentSpec] = {}


def register(spec: AgentSpec) -> AgentSpec:
    """Add ``spec`` to :data:`AGENTS`; a second spec under the same name is a programming error."""
    if spec.name in AGENTS and AGENTS[spec.name] is not spec:
        raise ValueError(f"agent {spec.name!r} is already registered")
    AGENTS[spec.name] = spec
    return spec


def _ensure_loaded() -> None:
    # The families register on import; importing them here lets `contracts` be used on its own.
    importlib.import_module("agent_graph.agents")


def agent_names() -> list[str]:
    """Names of every registered agent, sorted."""
    _ensure_loaded()
    return sorted(AGENTS)


def get_spec(name: str) -> AgentSpec:
    """The spec of agent ``name``.

    Raises:
        UnknownAgent: no agent of that name; the message lists the known ones.
    """
    _ensure_loaded()
    try:
        return AGENTS[name]
    except (KeyError, TypeError):
        raise UnknownAgent(str(name), list(AGENTS)) from None
