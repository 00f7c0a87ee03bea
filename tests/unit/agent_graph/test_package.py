"""Package-level promises: no Ray, the map ships as package data, the public API is exported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agent_graph


def test_importing_agent_graph_does_not_import_ray():
    code = "import sys, agent_graph; agent_graph.load_agent_map(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(agent_graph.__file__).parents[1])
    assert out.stdout.strip() == "False"


def test_map_files_ship_beside_the_package():
    path = agent_graph.default_map_path()
    assert path.is_file() and path.with_name("AGENT_MODEL_RECOMMENDED.json").is_file()


def test_public_names_exist():
    for name in agent_graph.__all__:
        assert hasattr(agent_graph, name), name
