"""ΔSI between twins: exact zero for identical twins, detection of a constructed change, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

import tl_spec
from tl_spec import TLSpecError
from tl_spec.cli import main
from tl_spec.experiments.delta import delta_from_results
from tl_spec.prompts import STANDARD_10
from tl_spec.zoo.tiny import build_random_checkpoint, build_twin_with_shared_heads

CHANGED = (0, 2)  # layers whose heads 1-3 receive head 0's query/key weights


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    base = build_random_checkpoint(root / "base", arch="llama-mha", num_hidden_layers=4)
    tuned = build_twin_with_shared_heads(base, root / "tuned", layers=CHANGED, heads=(1, 2, 3))
    return root, tl_spec.load_model(base), tl_spec.load_model(tuned)


@pytest.fixture(scope="module")
def constructed(twins):
    _, base, tuned = twins
    return tl_spec.delta_si(base, tuned, STANDARD_10)


def test_identical_twins_give_exact_zero(twins):
    _, base, _ = twins
    d = tl_spec.delta_si(base, base, STANDARD_10)
    assert d.delta_pct == 0.0
    assert d.interval.contains(0.0) and d.interval.low == d.interval.high == 0.0
    assert d.interval.fallback_reason  # BCa is undefined for a degenerate distribution: said so
    assert d.pvalue == 1.0
    assert d.changed_layers == []
    assert np.all(d.per_head_delta == 0)


def test_constructed_twin_is_detected_in_the_changed_layers(constructed):
    d = constructed
    assert d.delta_pct < 0
    assert d.interval.high < 0 and d.interval.method == "BCa"
    assert d.pvalue < 0.05
    assert d.changed_layers == list(CHANGED)
    for layer in CHANGED:
        assert d.per_layer_delta_pct[layer] < -10  # heads 1-3 copy head 0: a large drop
        assert d.layer_intervals[layer].high < 0
    # the per-head view shows the copied heads, whose correlation with the layer rose most
    for layer in CHANGED:
        assert set(np.argsort(d.per_head_delta[layer])[:4]) == {0, 1, 2, 3}


def test_delta_matches_its_definition(constructed):
    d = constructed
    assert d.delta_pct == pytest.approx((d.tuned.value - d.base.value) / d.base.value * 100,
                                        abs=1e-9)
    np.testing.assert_allclose(
        d.per_layer_delta_pct, (d.tuned.per_layer - d.base.per_layer) / d.base.per_layer * 100,
        atol=1e-9)
    # exact permutation test: 2**10 sign patterns, the observed one and its mirror are extreme
    assert d.pvalue == pytest.approx(2 / 1024, abs=1e-12)


def test_entropy_profile_bootstrap_recomputes_the_statistic(twins):
    _, base, tuned = twins
    d = tl_spec.delta_si(base, tuned, STANDARD_10, method="entropy_profile", n_resamples=2000)
    assert d.per_layer_delta_pct is None and d.layer_intervals is None
    assert d.delta_pct == pytest.approx((d.tuned.value - d.base.value) / d.base.value * 100,
                                        abs=1e-9)
    assert d.interval.low < d.delta_pct < d.interval.high


def test_round_trip_and_frame(constructed, tmp_path):
    path = tmp_path / "delta.json"
    constructed.to_json(path)
    back = tl_spec.load_result(path)
    assert type(back).__name__ == "DeltaResult"
    assert back.delta_pct == constructed.delta_pct and back.interval == constructed.interval
    assert back.changed_layers == constructed.changed_layers
    np.testing.assert_array_equal(back.base.per_prompt, constructed.base.per_prompt)
    frame = back.to_frame()
    assert list(frame["changed"]) == [layer in CHANGED for layer in range(4)]


def test_corrupted_delta_file_names_the_field(constructed, tmp_path):
    record = json.loads(constructed.to_json())
    record["interval"]["level"] = 1.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(record))
    with pytest.raises(TLSpecError, match=r"bad.json: field 'interval.level'"):
        tl_spec.load_result(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 1.0}, "confidence must be strictly between 0 and 1"),
        ({"confidence": 0.0}, "confidence"),
        ({"n_resamples": 99}, "n_resamples must be an integer >= 100"),
        ({"prompts": ["only one prompt"]}, "at least 2 prompts"),
        ({"method": "nope"}, "unknown method"),
        ({"aggregate": "mean_pattern"}, "aggregate='prompt'"),
    ],
)
def test_bad_input(twins, kwargs, message):
    _, base, tuned = twins
    prompts = kwargs.pop("prompts", STANDARD_10)
    with pytest.raises(TLSpecError, match=message):
        tl_spec.delta_si(base, tuned, prompts, **kwargs)


def test_models_of_different_shapes(twins, tl_model):
    _, base, _ = twins
    with pytest.raises(TLSpecError, match="differ in architecture"):
        tl_spec.delta_si(base, tl_model("llama-gqa", "bridge"), STANDARD_10)


def test_mismatched_prompt_counts(constructed):
    fewer = tl_spec.specialization_index(tl_spec.load_model(
        constructed.base.provenance["model"]), STANDARD_10[:5])
    with pytest.raises(TLSpecError, match="mismatched prompt counts"):
        delta_from_results(constructed.base, fewer)


def test_different_tokenizers_need_consent(twins, tmp_path):
    _, base, _ = twins
    other = build_random_checkpoint(tmp_path / "other", arch="llama-mha", num_hidden_layers=4,
                                    vocab_size=320)
    other_model = tl_spec.load_model(other)
    with pytest.raises(TLSpecError, match="tokenize prompt 0 differently"):
        tl_spec.delta_si(base, other_model, STANDARD_10, max_length=256)
    d = tl_spec.delta_si(base, other_model, STANDARD_10, allow_different_tokenizers=True,
                         n_resamples=500, max_length=256)
    assert d.settings["allow_different_tokenizers"] is True
    assert d.base.tokens != d.tuned.tokens


def test_chat_template_is_applied_and_recorded(twins):
    _, base, tuned = twins
    template = "{% for m in messages %}<bos>User: {{ m['content'] }}\nAssistant:{% endfor %}"
    d = tl_spec.delta_si(base, tuned, STANDARD_10, chat_template=template, n_resamples=500)
    info = d.settings["chat_template"]
    assert info["applied"] and info["source"] == "argument"
    assert info["example"].startswith("<bos>User: What is the capital")
    bos = tuned.tokenizer.bos_token_id
    assert all(t[0] == bos and t[1] != bos for t in d.tuned.tokens)  # one BOS, from the template
    assert all(len(t) > len(b) for t, b in zip(d.tuned.tokens, d.base.tokens))
    with pytest.raises(TLSpecError, match="defines no chat template"):
        tl_spec.delta_si(base, tuned, STANDARD_10, chat_template=True)


def test_cli_delta(twins, tmp_path, capsys):
    root, _, _ = twins
    out = tmp_path / "d.json"
    assert main(["delta", str(root / "base"), str(root / "tuned"), "--n-resamples", "1000",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ΔSI = " in printed and "layers whose change survives Holm correction: [0, 2]" in printed
    assert json.loads(out.read_text())["kind"] == "delta_si"
    assert main(["delta", str(root / "base"), str(root / "tuned"), "--n-resamples", "10",
                 "--json", str(out.with_name("x.json"))]) == 2
    assert not out.with_name("x.json").exists()
