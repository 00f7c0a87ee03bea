"""Trained adapters served in one mixed engine batch each reach the issue's held-out target (0.9) while the
bare base stays far below it, every row's reply equals its reply alone, and swapping adapters between rows
drops accuracy -- training and routing together.

Training every default agent takes minutes on 2 cores (``bench/train_adapters.py`` does it and records each
agent's score), so this trains two of them with the default settings, once per module, on the seeded store,
in two worker processes as ``scripts/run.sh`` does.
"""

from __future__ import annotations

import shutil

import pytest

from agent_graph.contracts import get_spec
from training.data import read_records
from training.defaults import train_default_adapters
from training.evaluate import Row, accuracy, build_request, load_engine, score_rows

AGENTS = ("critic", "chief_editor")
N = 32
TARGET = 0.9  # the held-out accuracy target for classification agents
MARGIN = 0.3


@pytest.fixture(scope="module")
def trained(seeded_store_root, tmp_path_factory):
    from modelstore import ModelStore

    root = tmp_path_factory.mktemp("trained") / "store"
    shutil.copytree(seeded_store_root, root, symlinks=True)
    store = ModelStore(root)
    work = tmp_path_factory.mktemp("work")
    lines = []
    done = train_default_adapters(store, agents=AGENTS, workers=2, work_dir=work, log=lines.append)
    assert [r["agent"] for r in done] == list(AGENTS)
    assert any("2 worker processes" in m for m in lines) and sum("published" in m for m in lines) == len(AGENTS)
    assert train_default_adapters(store, agents=AGENTS, workers=2) == []  # idempotent: nothing left to train
    held = {a: read_records(get_spec(a), [work / "data" / f"{a}.eval.jsonl"])[:N] for a in AGENTS}
    engine = load_engine(store)
    refs = {}
    for rec in done:
        resolved = store.resolve(rec["ref"])
        engine.load_adapter(str(resolved.ref), resolved.path)
        refs[rec["agent"]] = str(resolved.ref)
    return store, engine, refs, held


def _scores(engine, rows):
    flags = score_rows(engine, rows, batch_size=len(rows))  # one generate() call: one mixed batch
    return {a: accuracy([f for f, r in zip(flags, rows) if r.agent == a]) for a in AGENTS}


def test_each_adapter_reaches_its_target_in_one_mixed_batch(trained):
    store, engine, refs, held = trained
    rows = [Row.of(a, held[a][i], refs[a]) for i in range(N) for a in AGENTS]  # interleaved agents
    scores = _scores(engine, rows)
    bare = _scores(engine, [Row.of(a, held[a][i], None) for i in range(N) for a in AGENTS])
    assert all(scores[a] >= TARGET and bare[a] <= TARGET - MARGIN for a in AGENTS), (bare, scores)
    assert store.current_version(refs[AGENTS[0]].split("@")[0]) == "trained-1"


def test_rows_are_routed_to_their_own_adapter(trained):
    _, engine, refs, held = trained
    rows = [Row.of(a, held[a][i], refs[a]) for i in range(4) for a in AGENTS]
    mixed = [r.text for r in engine.generate([build_request(r, engine.tokenizer, 96) for r in rows])]
    alone = [engine.generate([build_request(r, engine.tokenizer, 96)])[0].text for r in rows]
    assert mixed == alone


def test_swapping_adapters_between_rows_drops_accuracy(trained):
    _, engine, refs, held = trained
    swap = dict(zip(AGENTS, reversed(AGENTS)))
    right = _scores(engine, [Row.of(a, held[a][i], refs[a]) for i in range(N) for a in AGENTS])
    swapped = _scores(engine, [Row.of(a, held[a][i], refs[swap[a]]) for i in range(N) for a in AGENTS])
    assert all(swapped[a] <= right[a] - MARGIN for a in AGENTS), (swapped, right)
