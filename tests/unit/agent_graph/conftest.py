"""Fixtures of the agent-graph tests: the shipped map as editable JSON, and a tiny tokenizer."""

from __future__ import annotations

import copy
import json

import pytest

from agent_graph.schema import MAP_FILE, RECOMMENDED_FILE, default_map_path


@pytest.fixture(scope="session")
def shipped_map_json() -> dict:
    """The packaged map as parsed JSON (copy before editing)."""
    return json.loads(default_map_path().read_text())


@pytest.fixture(scope="session")
def shipped_recommended_json() -> dict:
    """The packaged legacy fallbacks as parsed JSON (copy before editing)."""
    return json.loads(default_map_path().with_name(RECOMMENDED_FILE).read_text())


@pytest.fixture
def write_map(tmp_path, shipped_map_json, shipped_recommended_json):
    """Write (edited copies of) the map and its companion into ``tmp_path``; return the map path."""

    def write(map_json: dict | None = None, recommended_json: dict | None = None):
        path = tmp_path / MAP_FILE
        path.write_text(json.dumps(copy.deepcopy(shipped_map_json) if map_json is None else map_json))
        rec = copy.deepcopy(shipped_recommended_json) if recommended_json is None else recommended_json
        (tmp_path / RECOMMENDED_FILE).write_text(json.dumps(rec))
        return path

    return write


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny Mistral-style tokenizer with its [INST] chat template (trained locally, about a second)."""
    from modelstore.tiny import build_tokenizer

    return build_tokenizer()
