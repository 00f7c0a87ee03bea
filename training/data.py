"""Training records: read and validate JSONL, render them with the agent's own prompt, tokenize.

A record is one JSON object per line: ``{"input": <agent input>, "output": <agent output>}``. The prompt
is never taken from the file: it is rendered by ``agent_graph`` (``AgentSpec.prompt``) through the base's
chat template, and the answer is the output in the exact compact JSON the serving grammar emits, so what
is trained is what is served. Every problem names the file and the 1-based line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from agent_graph.contracts import AgentSpec, format_validation_error
from agent_graph.errors import ContractError

from .errors import DataError

__all__ = ["Record", "Encoded", "answer_text", "read_records", "write_records", "data_hash", "encode",
           "shared_prefix_len"]


@dataclass(frozen=True)
class Record:
    """One validated example: the typed input and output, and where it came from."""

    input: BaseModel
    output: BaseModel
    source: str
    line: int


@dataclass(frozen=True)
class Encoded:
    """A tokenized example: the prompt's ids and the answer's ids (EOS included: the model learns to stop).

    Vision examples also carry the processed image (``pixel_values``, channels x height x width) whose
    tokens the prompt's expanded ``<image>`` placeholders stand for; text examples have None.
    """

    prompt_ids: list[int]
    answer_ids: list[int]
    pixel_values: Any = field(default=None, repr=False, compare=False)


def answer_text(output: BaseModel) -> str:
    """The output as the constrained decoder writes it: compact JSON, keys in schema order."""
    return json.dumps(output.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)


def jsonl_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """``(1-based line number, text)`` of every non-blank line of a UTF-8 JSONL file.

    Raises:
        DataError: the file cannot be read (``cannot read <what>``) or is not UTF-8.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(path, None, f"cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return ((number, raw) for number, raw in enumerate(lines, start=1) if raw.strip())


def json_record(raw: str, path: Path, line: int, fields: tuple[str, ...]) -> dict[str, Any]:
    """One JSONL line as an object holding exactly ``fields`` (and optionally ``meta``).

    Raises:
        DataError: invalid JSON, not an object, a missing or an unknown field (file and line named).
    """
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(path, line, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DataError(path, line, f"expected a JSON object with {list(fields)}, got {type(data).__name__}")
    missing = [k for k in fields if k not in data]
    if missing:
        shape = ", ".join(f'"{k}": ...' for k in fields)
        raise DataError(path, line, f"missing field(s) {missing}; a record is {{{shape}}}")
    extra = sorted(set(data) - {*fields, "meta"})
    if extra:
        raise DataError(path, line, f"unknown field(s) {extra}; allowed: {', '.join(fields)}, meta")
    return data


def _record(spec: AgentSpec, raw: str, path: Path, line: int) -> Record:
    data = json_record(raw, path, line, ("input", "output"))
    try:
        inp = spec.input_model.model_validate(data["input"])
    except ValidationError as exc:
        raise DataError(path, line, f"input does not validate against {spec.input_model.__name__}: "
                                    f"{format_validation_error(exc)}") from None
    try:
        out = spec.validate_output(data["output"], inp)
    except ContractError as exc:
        raise DataError(path, line, f"output does not validate against {spec.output_model.__name__}: "
                                    f"{exc.reason}") from None
    return Record(inp, out, str(path), line)


def read_records(spec: AgentSpec, paths: list[Path], limit: int | None = None) -> list[Record]:
    """Read and validate records from JSONL files in order; blank lines are skipped.

    Raises:
        DataError: a file is missing or empty, or a line is not a valid record (file and line named).
    """
    records: list[Record] = []
    for path in paths:
        for number, raw in jsonl_lines(path, "training file"):
            records.append(_record(spec, raw, Path(path), number))
            if limit is not None and len(records) >= limit:
                return records
    if not records:
        raise DataError(", ".join(str(p) for p in paths), None, "no records (every line is blank)")
    return records


def write_records(path: Path, pairs: list[tuple[BaseModel, BaseModel]]) -> Path:
    """Write ``(input, output)`` pairs as JSONL records (the format :func:`read_records` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for inp, out in pairs:
            fh.write(json.dumps({"input": inp.model_dump(mode="json"), "output": out.model_dump(mode="json")},
                                separators=(",", ":"), ensure_ascii=False) + "\n")
    return path


def data_hash(paths: list[Path]) -> str:
    """sha256 over the bytes of every file, in order (the file boundaries included)."""
    digest = hashlib.sha256()
    for path in paths:
        content = Path(path).read_bytes()
        digest.update(f"{len(content)}:".encode())
        digest.update(content)
    return digest.hexdigest()


def encode(spec: AgentSpec, records: list[Record], tokenizer: Any, max_seq_len: int) -> list[Encoded]:
    """Tokenize records exactly as serving does: templated prompt without added specials, then the answer.

    Raises:
        DataError: a record is longer than ``max_seq_len`` tokens.
    """
    eos = tokenizer.eos_token_id
    out = []
    for rec in records:
        prompt = tokenizer(spec.prompt(rec.input, tokenizer), add_special_tokens=False)["input_ids"]
        answer = tokenizer(answer_text(rec.output), add_special_tokens=False)["input_ids"] + [eos]
        if len(prompt) + len(answer) > max_seq_len:
            raise DataError(rec.source, rec.line, f"record has {len(prompt) + len(answer)} tokens, "
                                                  f"max_seq_len is {max_seq_len}")
        out.append(Encoded(prompt, answer))
    return out


def shared_prefix_len(examples: list[Encoded]) -> int:
    """Tokens every prompt starts with (the system prompt), leaving each prompt at least one token of its own.

    Computed on token ids rather than text, so a BPE merge across the boundary cannot make it wrong.
    """
    if not examples:
        return 0
    first = examples[0].prompt_ids
    n = min(len(e.prompt_ids) for e in examples) - 1
    for e in examples[1:]:
        i = 0
        while i < n and e.prompt_ids[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)
