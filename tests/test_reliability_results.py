"""Result files that parse but cannot be right are refused by load_result (issue: reliability).

Each case edits a real result file the way a hand edit or another tool would: a non-JSON
``Infinity``, a per-layer array shorter than the layers, an interval with low > high, a negative
count. Each must be a TLSpecError naming the file and what is wrong, never a silent object.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tl_spec
from tl_spec import TLSpecError

PROMPTS = ["The cat sat on the mat and looked at the door.",
           "Paris is the capital of France, a country in Europe.",
           "Write a function that checks if a number is prime."]


@pytest.fixture(scope="module")
def records(tiny_checkpoints: dict[str, Path]) -> dict[str, dict]:
    model = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend="bridge")
    si = tl_spec.specialization_index(model, PROMPTS, max_length=32)
    delta = tl_spec.delta_si(model, model, PROMPTS, max_length=32, n_resamples=200)
    return {"si": json.loads(si.to_json()), "delta": json.loads(delta.to_json())}


def _write(tmp_path: Path, record: dict, text: str | None = None) -> Path:
    path = tmp_path / "r.json"
    path.write_text(text if text is not None else json.dumps(record))
    return path


def test_the_unedited_files_load(records, tmp_path):
    for record in records.values():
        back = tl_spec.load_result(_write(tmp_path, record))
        assert json.loads(back.to_json()) == record


def test_infinity_is_refused(records, tmp_path):
    text = json.dumps(records["si"]).replace(f'"value": {records["si"]["value"]}',
                                             '"value": Infinity', 1)
    assert "Infinity" in text
    with pytest.raises(TLSpecError, match=r"r\.json: the file holds Infinity, which is not JSON"):
        tl_spec.load_result(_write(tmp_path, {}, text))


def test_a_per_layer_array_shorter_than_the_layers_is_refused(records, tmp_path):
    record = json.loads(json.dumps(records["si"]))
    record["per_layer"] = record["per_layer"][:-1]
    with pytest.raises(TLSpecError, match=r"field 'per_layer' has 2 along n_layers, but "
                                          r"'per_head' has 3|'per_head' has 3 along n_layers"):
        tl_spec.load_result(_write(tmp_path, record))


def test_an_interval_with_low_above_high_is_refused(records, tmp_path):
    record = json.loads(json.dumps(records["delta"]))
    record["interval"]["low"], record["interval"]["high"] = 5.0, -5.0
    with pytest.raises(TLSpecError, match=r"interval at 'interval' has low 5.0 > high -5.0"):
        tl_spec.load_result(_write(tmp_path, record))


def test_a_negative_count_is_refused(records, tmp_path):
    record = json.loads(json.dumps(records["si"]))
    record["settings"]["n_prompts"] = -3
    with pytest.raises(TLSpecError, match=r"count 'settings.n_prompts' is -3, below 0"):
        tl_spec.load_result(_write(tmp_path, record))
