"""Images for the agent-graph tests: encoding PIL images as the API takes them, and decoding an input's
images as the agent server would (``deployments.vision``) before an image heuristic reads them."""

from __future__ import annotations

import base64
import io
from typing import Any

from pydantic import BaseModel

from agent_graph import get_spec, run_heuristic
from agent_graph.heuristics import HEURISTICS


def encode(image: Any, fmt: str = "PNG", data_url: bool = False) -> str:
    """``image`` as base64 (or a ``data:`` URL) of a ``fmt`` file."""
    buf = io.BytesIO()
    image.save(buf, fmt)
    text = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"data:image/{fmt.lower()};base64,{text}" if data_url else text


def decoded(agent: str, inp: BaseModel) -> list[Any]:
    """The decoded images of ``inp``, admitted as the agent server admits them."""
    from deployments.vision import admit_image

    return [admit_image(source, field=field).image for field, source in get_spec(agent).images_of(inp)]


def heuristic(name: str, inp: BaseModel) -> BaseModel:
    """Run heuristic ``name`` on ``inp``, with its images decoded when the heuristic reads images."""
    h = HEURISTICS[name]
    return run_heuristic(name, inp, decoded(h.agent, inp) if h.images else None)
