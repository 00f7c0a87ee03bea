"""Vision training records: read checked image + text JSONL, build the prompt as serving does, encode.

A record is a line of :func:`training.vision_task.load_vision_jsonl` (``{"image", "text", "target"}``). The
prompt is the one serving builds: the agent's spec (``agent_graph``: its system prompt, then a user turn of
the image and the record's instruction) through the base's chat template, which writes one ``<image>``;
the processor expands it into the image's tokens and turns the image into ``pixel_values``. The answer is
the target in the compact JSON the constrained decoder writes (keys in contract order) followed by EOS,
so what is trained is what is served.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import BaseModel

from agent_graph.contracts import get_spec

from .data import Encoded
from .errors import DataError
from .vision_task import VisionRecord, VisionTarget, load_vision_jsonl

__all__ = ["agent_input", "vision_prompt", "target_text", "read_vision_records",
           "vision_data_hash", "encode_vision"]


def agent_input(agent: str, record: VisionRecord) -> BaseModel:
    """The agent's request for ``record``, as a caller would send it: the image as a data: URL, the instruction."""
    data = record.image.read_bytes()
    with Image.open(io.BytesIO(data)) as img:  # the header only: the declared type of the data: URL
        kind = (img.format or "png").lower()
    return get_spec(agent).input_model(image=f"data:image/{kind};base64,{base64.b64encode(data).decode()}",
                                       text=record.text)


def vision_prompt(agent: str, record: VisionRecord, processor: Any) -> str:
    """The prompt serving builds for ``record`` (the spec's messages through the base's chat template; one
    ``<image>`` placeholder, BOS included)."""
    return get_spec(agent).prompt(agent_input(agent, record), processor)


def target_text(target: VisionTarget) -> str:
    """The target as the constrained decoder writes it: compact JSON, keys in contract order."""
    return json.dumps(target.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)


def read_vision_records(paths: list[Path], limit: int | None = None) -> list[VisionRecord]:
    """Read and check vision JSONL files in order (each image relative to its file's folder).

    Raises:
        DataError: a file or line is unusable (file and 1-based line named).
    """
    records: list[VisionRecord] = []
    for path in paths:
        records += load_vision_jsonl(Path(path))
        if limit is not None and len(records) >= limit:
            return records[:limit]
    return records


def vision_data_hash(paths: list[Path], records: list[VisionRecord]) -> str:
    """sha256 over the JSONL files' bytes and then every record's image bytes, in order."""
    digest = hashlib.sha256()
    for blob in [Path(p) for p in paths] + [r.image for r in records]:
        content = blob.read_bytes()
        digest.update(f"{len(content)}:".encode())
        digest.update(content)
    return digest.hexdigest()


def encode_vision(agent: str, records: list[VisionRecord], processor: Any, max_seq_len: int) -> list[Encoded]:
    """Encode records as serving would see them: processed prompt + image, then the answer ids and EOS.

    Raises:
        DataError: a record is longer than ``max_seq_len`` tokens (image tokens included).
    """
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token_id
    out = []
    for rec in records:
        batch = processor(text=vision_prompt(agent, rec, processor), images=rec.load_image(), return_tensors="pt",
                          add_special_tokens=False)
        prompt = batch["input_ids"][0].tolist()
        answer = tokenizer(target_text(rec.target), add_special_tokens=False)["input_ids"] + [eos]
        if len(prompt) + len(answer) > max_seq_len:
            raise DataError(rec.source, rec.line, f"record has {len(prompt) + len(answer)} tokens (image tokens "
                                                  f"included), max_seq_len is {max_seq_len}")
        out.append(Encoded(prompt, answer, batch["pixel_values"][0]))
    return out
