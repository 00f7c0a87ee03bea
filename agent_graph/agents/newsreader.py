"""Newsreader: reads one news image (a chart, a photo, a page of text, a map) and captions it.

The agent is prompted on a vision-language base with a LoRA adapter: the prompt is one user turn, as LLaVA's
chat format has it (no system turn), the image followed by an instruction (the caller's ``text``, or
:data:`DEFAULT_INSTRUCTION`), and the reply
is constrained to :class:`NewsreaderOutput`, the fields and key order of the trained target
(``training.vision_task.VisionTarget``), with a free-text headline and caption so that a model reading real
images is not held to the synthetic task's eight words.

The image arrives as base64 or a ``data:image/...;base64,`` URL. The input model checks only that it is a
non-empty string: its size, format and pixels are the admission limits' business
(``deployments.vision.admit_image``, run by the agent server before any model step, and again by the base
replica), which bound the string's length before decoding it and answer 4xx for anything they refuse.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from ..contracts import AgentSpec, Contract, Score, Text, register

__all__ = ["IMAGE_KINDS", "KIND_PHRASES", "DEFAULT_INSTRUCTION", "TEXT_CHARS", "HEADLINE_CHARS", "CAPTION_CHARS",
           "ImageKind", "ImageSource", "NewsreaderInput", "NewsreaderOutput", "EXAMPLE_PNG", "SPEC", "render"]

ImageKind = Literal["chart", "photo", "text_page", "map"]
IMAGE_KINDS: tuple[str, ...] = ImageKind.__args__
# How a caption names each kind ("a map about flood"), as the training target writes it.
KIND_PHRASES = {"chart": "a chart", "photo": "a photo", "text_page": "a page of text", "map": "a map"}
# The instruction the adapter is trained with (training.vision_task.INSTRUCTION; a test keeps them equal).
DEFAULT_INSTRUCTION = ("Read this news image. Answer in JSON: image_kind (chart, photo, text_page or map), headline "
                       "(the large word at the top), caption, and confidence (how legible the headline is, 0 to 1).")
TEXT_CHARS, HEADLINE_CHARS, CAPTION_CHARS = 1000, 120, 200

ImageSource = Annotated[str, StringConstraints(min_length=1)]

# A 16x16 PNG (a white band over a blue body), small enough to serve as the documented example.
EXAMPLE_PNG = ("iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAH0lEQVR42mP8//8/AymAiYFEMBw0MGpEnRgNpZ"
               "GgAQDIEQRm35t3MQAAAABJRU5ErkJggg==")


class NewsreaderInput(Contract):
    """One image, and optionally what to look for."""

    image: ImageSource = Field(description="The image: base64 of a PNG, JPEG or WebP file, or a data:image/...;"
                               "base64, URL. Remote URLs are refused. Size, pixel and format limits are the "
                               "service's admission limits (413/415/400 beyond them).")
    text: Text(TEXT_CHARS) | None = Field(None, description="Instruction or context for the reader; default: "
                                          "read the image's kind, headline and caption.")


class NewsreaderOutput(Contract):
    """What the image is, its headline and a caption (keys in the order the model writes them)."""

    image_kind: ImageKind = Field(description="What the image shows.")
    headline: Text(HEADLINE_CHARS, min_length=0) = Field(description="The headline printed in the image; '' "
                                                         "when none could be read.")
    caption: Text(CAPTION_CHARS) = Field(description="A one-line caption, e.g. 'a chart about flood'.")
    confidence: Score = Field(description="How legible the headline is, 0 (not read) to 1.")


def render(inp: NewsreaderInput) -> str:
    """The instruction that follows the image in the user turn."""
    return inp.text if inp.text is not None else DEFAULT_INSTRUCTION


SPEC = register(AgentSpec(
    name="newsreader",
    kind="multimodal",
    input_model=NewsreaderInput,
    output_model=NewsreaderOutput,
    example=NewsreaderInput(image=f"data:image/png;base64,{EXAMPLE_PNG}"),
    instructions=("You are the newsroom's image reader. Say what kind of image this is (chart, photo, text_page or "
                  "map), read the headline printed large at its top ('' if there is none), caption it as "
                  "'<a chart|a photo|a page of text|a map> about <headline>', and rate how legible the headline "
                  "is from 0 to 1."),
    render=render,
    image_fields=("image",),
    # LLaVA-NeXT-Mistral was tuned on "[INST] <image>\n<question> [/INST]" with no system turn, and the 400-token
    # system prompt kept the tiny default from learning to read headlines (0.13 with it, 0.86 without; bench/
    # RESULTS.md): the instruction names the fields, and constrained decoding enforces the reply's shape.
    system_turn=False,
))
