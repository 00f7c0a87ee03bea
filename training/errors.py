"""Domain errors of adapter training: bad data (with file and line), bad configuration, failed runs."""

from __future__ import annotations

__all__ = ["TrainingError", "DataError", "ResumeError"]


class TrainingError(Exception):
    """Base class of every training error; a run that raises one publishes nothing."""


class DataError(TrainingError, ValueError):
    """A training record is unusable.

    Attributes:
        path: the JSONL file.
        line: 1-based line number of the record, or None for a problem of the file as a whole.
        reason: what is wrong, naming the field and the value.
    """

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ResumeError(TrainingError):
    """A checkpoint cannot be resumed: it belongs to another configuration or dataset."""
