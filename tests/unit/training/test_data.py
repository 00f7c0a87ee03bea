"""Training records: refusals name file and line; encoding matches serving; batching is deterministic."""

from __future__ import annotations

import json

import pytest

from agent_graph.contracts import get_spec
from training.data import answer_text, read_records, shared_prefix_len, Encoded
from training.errors import DataError
from training.loss import IGNORE, collate
from training.trainer import micro_batch, param_groups

GOOD = {"input": {"query": "storm", "passages": ["storm city", "bridge data"]}, "output": {"scores": [1.0, 0.0]}}


def _write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


@pytest.mark.parametrize("bad, needle", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"input": GOOD["input"]}, "missing field(s) ['output']"),
    ({**GOOD, "extra": 1}, "unknown field(s) ['extra']"),
    ({"input": {"passages": ["x"]}, "output": {"scores": [0.5]}}, "input does not validate against ReRankerInput: query"),
    ({"input": GOOD["input"], "output": {"scores": [1.5, 0.0]}}, "output does not validate against ReRankerOutput"),
    ({"input": GOOD["input"], "output": {"scores": [1.0]}}, "expected one per input passages (2)"),
])
def test_bad_record_is_refused_with_its_line_number(tmp_path, bad, needle):
    path = _write(tmp_path, [GOOD, "", GOOD, bad, GOOD])
    with pytest.raises(DataError) as err:
        read_records(get_spec("re_ranker"), [path])
    assert err.value.line == 4 and f"{path}:4:" in str(err.value)
    assert needle in str(err.value)


def test_blank_lines_skipped_and_limit_applies(tmp_path):
    path = _write(tmp_path, [GOOD, "", GOOD, GOOD])
    assert len(read_records(get_spec("re_ranker"), [path])) == 3
    assert [r.line for r in read_records(get_spec("re_ranker"), [path], limit=2)] == [1, 3]


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_records(get_spec("re_ranker"), [tmp_path / "nope.jsonl"])
    with pytest.raises(DataError, match="no records"):
        read_records(get_spec("re_ranker"), [_write(tmp_path, ["", ""])])


def test_answer_is_the_compact_json_the_grammar_emits(tmp_path):
    rec = read_records(get_spec("re_ranker"), [_write(tmp_path, [GOOD])])[0]
    assert answer_text(rec.output) == '{"scores":[1.0,0.0]}'


def test_shared_prefix_leaves_every_prompt_a_token():
    ex = [Encoded([1, 2, 3, 4], [9]), Encoded([1, 2, 3, 5, 6], [9]), Encoded([1, 2, 3], [9])]
    assert shared_prefix_len(ex) == 2
    assert shared_prefix_len([Encoded([1, 2], [9])]) == 1


def test_collate_targets_only_answer_tokens():
    ids, mask, targets = collate([Encoded([1, 2, 3], [7, 8]), Encoded([1, 2, 4, 5], [9])], prefix_len=2, pad_id=0)
    assert ids.tolist() == [[3, 7, 8], [4, 5, 9]]
    assert targets.tolist() == [[7, 8, IGNORE], [IGNORE, 9, IGNORE]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 1]]


def test_micro_batches_are_a_pure_function_and_cover_each_epoch():
    first = [micro_batch(m, 10, 5, seed=3) for m in range(4)]
    assert first == [micro_batch(m, 10, 5, seed=3) for m in range(4)]
    assert sorted(first[0] + first[1]) == list(range(10))
    assert first != [micro_batch(m, 10, 5, seed=4) for m in range(4)]


def test_lora_plus_gives_only_the_b_matrices_the_higher_rate():
    named = [("q_proj.lora_A.default.weight", "a"), ("q_proj.lora_B.default.weight", "b"), ("lm_head.lora_B.x", "h")]
    assert param_groups(named, 1e-3, 1.0) == [{"params": ["a", "b", "h"]}]
    assert param_groups(named, 1e-3, 8.0) == [{"params": ["a"]}, {"params": ["b", "h"], "lr": 8e-3}]
