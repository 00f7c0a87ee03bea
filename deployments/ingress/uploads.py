"""Request bodies that carry images: a JSON object or a ``multipart/form-data`` upload, read under a size cap.

An image agent's route (``POST /agents/newsreader``) reads its body itself instead of letting FastAPI parse
it, for two reasons: the body is counted while it arrives and refused with a 413 naming ``max_image_bytes``
as soon as it passes the most a valid request can weigh (never read whole first), and the same route takes
either a JSON object (the image as base64 or a ``data:`` URL) or a form upload (the image as a file). Both
become the agent's input as a JSON object, an uploaded file turned into a ``data:`` URL carrying the part's
declared type; the agent server validates and admits it (``deployments.vision``) like any other caller's.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from agent_graph import AgentSpec
from deployments.errors import InvalidRequestError, RequestTooLargeError, UnsupportedMediaTypeError
from deployments.limits import LIMITS, AdmissionLimits, check_image_count

__all__ = ["FORM_FIELD_BYTES", "base64_chars", "image_body_limit", "read_body", "agent_body", "openapi_request_body"]

# Room a request needs besides its images: every other field of an image agent's input, JSON-escaped.
FORM_FIELD_BYTES = 64 * 1024
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$")
_JSON, _FORM = "application/json", "multipart/form-data"


def base64_chars(n_bytes: int) -> int:
    """Length of the base64 text of ``n_bytes`` bytes."""
    return 4 * -(-n_bytes // 3)


def image_body_limit(n_images: int, limits: AdmissionLimits = LIMITS) -> int:
    """The most bytes a valid body with ``n_images`` images can take: each image at ``max_image_bytes`` as a
    ``data:`` URL's base64 (a file upload is smaller), plus :data:`FORM_FIELD_BYTES` for everything else."""
    return n_images * (base64_chars(limits.max_image_bytes) + 256) + FORM_FIELD_BYTES


def _too_large(cap: int, limits: AdmissionLimits, size: str) -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body is {size} bytes, more than the {cap} this route takes: an image "
                                f"may be at most max_image_bytes ({limits.max_image_bytes}) bytes, "
                                f"{base64_chars(limits.max_image_bytes)} characters as base64")


async def read_body(request: Request, cap: int, limits: AdmissionLimits = LIMITS) -> bytes:
    """The request body, refused (413) once it passes ``cap`` bytes: by its Content-Length before any byte is
    read, else while it streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise _too_large(cap, limits, declared)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise _too_large(cap, limits, f"more than {size - len(chunk)}")
        chunks.append(chunk)
    return b"".join(chunks)


def _data_url(data: bytes, declared: str | None) -> str:
    media = (declared or "").split(";")[0].strip()
    encoded = base64.b64encode(data).decode("ascii")
    # A part's Content-Type travels as the data URL's type (admission checks it against the bytes); one that
    # could not be written there is left out, and the bytes decide.
    return f"data:{media};base64,{encoded}" if _MEDIA_TYPE.match(media) else encoded


async def _form_body(request: Request, data: bytes, spec: AgentSpec, limits: AdmissionLimits) -> dict[str, Any]:
    async def stream():
        yield data

    try:
        form = await MultiPartParser(request.headers, stream(), max_fields=16, max_part_size=FORM_FIELD_BYTES).parse()
    except MultiPartException as exc:
        raise InvalidRequestError(f"the multipart/form-data body cannot be read: {exc.message}") from None
    values: dict[str, list[Any]] = {}
    for name, value in form.multi_items():
        values.setdefault(name, []).append(value)
    images = [v for f in spec.image_fields for v in values.get(f, [])]
    check_image_count(len(images), limits)
    body: dict[str, Any] = {}
    for name, items in values.items():
        if len(items) > 1:
            raise InvalidRequestError(f"form field {name!r} is given {len(items)} times; agent {spec.name!r} takes "
                                      f"one" + (" image per request" if name in spec.image_fields else ""))
        value = items[0]
        if isinstance(value, UploadFile):
            if name not in spec.image_fields:
                raise InvalidRequestError(f"form field {name!r} is a file; agent {spec.name!r} takes files only "
                                          f"as {', '.join(map(repr, spec.image_fields))}")
            value = _data_url(await value.read(), value.content_type)
        body[name] = value
    return body


async def agent_body(request: Request, spec: AgentSpec, limits: AdmissionLimits = LIMITS) -> dict[str, Any]:
    """An image agent's input, as a JSON object, from a JSON or a multipart/form-data request.

    Raises:
        RequestTooLargeError: the body is larger than any valid request (413), or has too many images.
        UnsupportedMediaTypeError: neither JSON nor a form upload (415).
        InvalidRequestError: unreadable JSON or form data, a field given twice, a file in a text field (400).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (_JSON, _FORM):
        raise UnsupportedMediaTypeError(f"POST /agents/{spec.name} takes {_JSON} or {_FORM}, not "
                                        f"{content_type or 'a body without a Content-Type'!r}")
    data = await read_body(request, image_body_limit(len(spec.image_fields), limits), limits)
    if content_type == _FORM:
        return await _form_body(request, data, spec, limits)
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidRequestError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError(f"the body must be a JSON object ({spec.input_model.__name__}), got "
                                  f"{type(body).__name__}")
    return body


def openapi_request_body(spec: AgentSpec) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of an image agent's route: its input model as JSON, or as a form upload."""
    schema = spec.input_model.model_json_schema()

    def field(name: str, prop: dict[str, Any]) -> dict[str, Any]:
        if name in spec.image_fields:
            return {"type": "string", "format": "binary", "description": "The image file (PNG, JPEG or WebP)."}
        given = next((o for o in prop.get("anyOf", []) if o.get("type") != "null"), prop)  # optional: the value
        return {**given, "description": prop.get("description", "")}

    form = {"type": "object", "required": list(schema.get("required", [])),
            "properties": {name: field(name, prop) for name, prop in schema["properties"].items()}}
    return {"required": True, "content": {_JSON: {"schema": schema}, _FORM: {"schema": form}}}
