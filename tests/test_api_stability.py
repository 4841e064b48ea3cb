"""Head stability through the coherent API: options objects, token-id inputs, the result protocol.

Token ids (a padded tensor with its mask, either padding side, also on models without a
tokenizer) must give exactly the numbers of the text route; both result kinds answer the result
protocol and survive a JSON round trip; bad options are refused before any model is touched.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOADABLE

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments.stability import (
    StabilityResult,
    head_stability,
    stability_options,
)
from tl_spec.experiments.stability_study import StudyGroup, StudyResult, stability_study
from tl_spec.hooks.base import HookSet
from tl_spec.hooks.features import BatchFeatures
from tl_spec.names import hook_name
from tl_spec.options import StatsOptions
from tl_spec.options.stability import StabilityOptions, StabilityStatsOptions, StabilityStudyOptions
from tl_spec.results import load_result
from tl_spec.zoo.tiny import build_random_checkpoint

# prompts of different lengths, so a padded batch is ragged
TEXTS = [f"Item {i}: the function returns {'a list of ' * (i % 4)}{i + 2} values and raises an "
         f"error{' if the argument is empty' * (i % 3)}." for i in range(10)]
FAST = dict(n_blocks=4, n_resamples=200, null=1)
PROFILE_FIELDS = ("stability", "best_match", "null", "margin", "distinctness", "resid_cka",
                  "per_head_stability", "per_head_best", "similarity")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> list[Path]:
    """Three independently initialised tiny MHA checkpoints (seeds 0, 1, 2)."""
    root = tmp_path_factory.mktemp("api_stab")
    return [build_random_checkpoint(root / f"s{s}", arch="llama-mha", seed=s) for s in range(3)]


@pytest.fixture(scope="module")
def models(ckpts) -> dict[str, list]:
    """``backend -> [model seed 0, 1, 2]`` for every backend this TransformerLens loads."""
    return {b: [tl_spec.load_model(p, backend=b) for p in ckpts] for b in LOADABLE}


def _padded(model, texts, side: str, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.to_tokens`` of each text, padded with ``pad`` on ``side`` into one tensor + mask."""
    rows = [model.to_tokens(t)[0].cpu() for t in texts]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        tokens[i, cols], mask[i, cols] = r, 1
    return tokens, mask


def _no_tokenizer(model):
    m = copy.copy(model)
    m.tokenizer = None
    return m


def _assert_same(got: StabilityResult, want: StabilityResult) -> None:
    for name in PROFILE_FIELDS:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=1e-9,
                                   err_msg=name)
    assert (got.matching == want.matching).all()
    assert got.above_null == want.above_null
    for name, intervals in want.intervals.items():
        for a, b in zip(got.intervals[name], intervals, strict=True):
            assert a.low == pytest.approx(b.low, abs=1e-9) and a.high == pytest.approx(b.high, abs=1e-9)


# ---- token ids -------------------------------------------------------------------------------

@pytest.mark.parametrize("measure", ["output", "pattern"])
@pytest.mark.parametrize("backend", LOADABLE)
def test_token_ids_with_a_ragged_mask_equal_the_text_route(models, backend, measure):
    trained = models[backend][:2]
    text = head_stability(trained, TEXTS, measure=measure, **FAST)
    assert text.settings["input"] == "text" and text.settings["n_prompts"] == len(TEXTS)
    # the two tiny models are different seeds: far from a self-comparison, not degenerate
    assert np.isfinite(text.stability).all() and (text.stability < 0.99).all()
    for side in ("right", "left"):
        tokens, mask = _padded(trained[0], TEXTS, side)
        assert not mask.all()  # ragged
        got = head_stability(trained, tokens, attention_mask=mask, measure=measure, **FAST)
        _assert_same(got, text)
        assert got.settings["input"] == "token ids" and got.settings["prepend_bos"] is None
        assert got.provenance["prompts"]["source"] == "token ids"
        assert (got.provenance["prompts"]["token_ids_sha256"]
                == text.provenance["prompts"]["token_ids_sha256"])
    # models without a tokenizer run the same ids (text needs one, token ids do not)
    bare = [_no_tokenizer(m) for m in trained]
    with pytest.raises(Exception, match="tokenizer"):  # really none: text cannot be tokenized
        bare[0].to_tokens(TEXTS[0])
    got = head_stability(bare, tokens, attention_mask=mask, measure=measure, **FAST)
    _assert_same(got, text)
    # a list of 1-D tensors is the same input again
    rows = [trained[0].to_tokens(t)[0] for t in TEXTS]
    _assert_same(head_stability(bare, rows, measure=measure, **FAST), text)


def test_options_objects_equal_keywords_and_keywords_override(models):
    trained = models["bridge"][:2]
    want = head_stability(trained, TEXTS, measure="output", resid=False, **FAST)
    got = head_stability(trained, TEXTS, options=StabilityOptions(measure="output", resid=False,
                                                                  null=1, n_blocks=4),
                         stats=StatsOptions(n_resamples=200, seed=0))
    for name in ("stability", "null", "distinctness", "per_head_stability", "similarity"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert got.resid_cka is None and want.resid_cka is None
    assert got.settings["n_resamples"] == 200 and got.settings["resid"] is False
    # a keyword overrides the object's field
    other = head_stability(trained, TEXTS, options=StabilityOptions(measure="pattern"),
                           measure="output", resid=False, **FAST)
    np.testing.assert_array_equal(other.stability, want.stability)


def test_the_tokenizer_check_applies_to_text_only(tmp_path):
    """Same architecture, different tokenizers: text is refused, shared token ids are compared."""
    four = tl_spec.load_model(build_random_checkpoint(tmp_path / "four", arch="llama-mha",
                                                      num_hidden_layers=4, num_attention_heads=4,
                                                      num_key_value_heads=4), backend="bridge")
    zoo = tl_spec.zoo.load("base-mha", backend="bridge")
    with pytest.raises(TLSpecError, match="different tokenizers"):
        head_stability([four, zoo], TEXTS, n_blocks=4)
    ids = [four.to_tokens(t)[0] for t in TEXTS[:4]]
    assert max(int(r.max()) for r in ids) < min(four.cfg.d_vocab, zoo.cfg.d_vocab)
    r = head_stability([four, zoo], ids, null=0, n_blocks=2, n_resamples=100)
    assert r.per_head_stability.shape == (2, 4, 4) and np.isfinite(r.stability).all()


# ---- the result protocol ------------------------------------------------------------------------

def _check_protocol(result, tmp_path: Path, cls: type) -> object:
    text = repr(result)
    assert "\n" not in text and len(text) < 400 and text.startswith(cls.__name__ + "(")
    page = result._repr_html_()
    assert "<table" in page and len(page.encode()) < 200_000
    assert isinstance(result.summary(), str) and result.summary() == str(result)
    assert result.table() == result.summary()
    frame = result.to_frame()
    assert len(frame) > 0
    path = tmp_path / f"{result.kind}.json"
    result.to_json(path)
    back = load_result(path)
    assert type(back) is cls
    json.loads(path.read_text())
    return back


def test_stability_result_protocol_and_round_trip(models, tmp_path):
    a, b, c = models["bridge"]
    r = head_stability([a, b, c], TEXTS, measure="output", **FAST)
    back = _check_protocol(r, tmp_path, StabilityResult)
    head = r.headline()
    assert head["models"] == 3 and head["stability"] == pytest.approx(np.nanmean(r.stability))
    assert head["null"] == pytest.approx(np.nanmean(r.null))
    assert head["least stable layer"] == int(np.argmin(r.stability))
    assert r.model_names() == ["s0", "s1", "s2"] and r.tags() == ["output"]
    caption, heat, _ = r.heat()
    np.testing.assert_allclose(heat, r.per_head_stability.mean(0), atol=1e-12)
    assert r.shape() == "3x8 heads" and "3x8 heads" in repr(r) and "output" in repr(r)
    frame = r.to_frame()
    assert len(frame) == 3 * 3 * 8  # models x layers x heads
    assert list(frame.columns[:5]) == ["model", "measure", "layer", "head", "label"]
    row = frame.query("model == 's1' and layer == 2 and head == 5").iloc[0]
    assert row["label"] == "L2H5"
    assert row["stability"] == pytest.approx(r.per_head_stability[1, 2, 5], abs=1e-12)
    assert row["layer_stability"] == pytest.approx(r.stability[2], abs=1e-12)
    assert row["layer_stability_low"] == r.intervals["stability"][2].low
    # JSON round trip keeps the numbers and the protocol
    for name in PROFILE_FIELDS:
        np.testing.assert_allclose(getattr(back, name), getattr(r, name), rtol=0, atol=1e-12)
    assert (back.matching == r.matching).all() and back.headline() == head
    assert repr(back) == repr(r) and back.summary() == r.summary()


def test_study_result_protocol_and_round_trip(models, tmp_path):
    a, b, c = models["bridge"]
    groups = [StudyGroup("L3-wd0", 3, 0.0, [a, b]), StudyGroup("L3-wd0.1", 3, 0.1, [b, c])]
    study = stability_study(groups, TEXTS, TEXTS[:3], n_blocks=4, null=1, n_resamples=200)
    back = _check_protocol(study, tmp_path, StudyResult)
    assert study.model_names() == ["s0", "s1", "s1", "s2"] and study.tags() == ["output"]
    head = study.headline()
    testable = [cl for cl in study.claims if cl["holds"] is not None]
    assert head["claims holding"] == f"{sum(bool(cl['holds']) for cl in testable)}/{len(testable)} testable"
    assert head["groups"] == 2 and head["models"] == 4
    assert study.heat() is None and study.shape() is None
    frame = study.to_frame()
    assert len(frame) == 2 * 3  # groups x layers
    got = frame.query("group == 'L3-wd0.1' and layer == 1").iloc[0]
    assert got["stability"] == pytest.approx(study.groups[1]["stability"][1], abs=1e-12)
    assert got["weight_decay"] == 0.1 and got["n_models"] == 2
    claims = study.claims_frame()
    assert len(claims) == 6 and claims["verdict"].iloc[2] == "not testable"  # one depth
    assert "weight decay" in study.summary()
    assert back.headline() == head
    np.testing.assert_allclose(back.to_frame()["stability"], frame["stability"], atol=1e-12)
    # the study's stability is head_stability's with the same options
    r = head_stability([a, b], TEXTS, measure="output", n_blocks=4, null=1, n_resamples=200)
    np.testing.assert_array_equal(study.groups[0]["stability"], r.stability)


# ---- options -----------------------------------------------------------------------------------

class _Tripwire:
    """A stand-in model that fails the test on any use: options must be refused first."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was touched ({name}) before the options were checked")


@pytest.mark.parametrize("bad, match", [
    (dict(measure="weights"), "unknown measure 'weights'"),
    (dict(region="upper"), "unknown region"),
    (dict(null=-1), "null must be a number of random-init copies"),
    (dict(null=True), "null must be a number of random-init copies"),
    (dict(n_blocks=1), "n_blocks must be an integer >= 2"),
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(max_length=1), "max_length must be an integer >= 2"),
    (dict(stat_dtype="float16"), "unknown stat_dtype"),
    (dict(n_resamples=50), "n_resamples must be an integer >= 100"),
    (dict(confidence=1.5), "confidence must be strictly between 0 and 1"),
    (dict(n_resample=500), "did you mean 'n_resamples'"),
])
def test_bad_options_are_refused_before_any_model_work(bad, match):
    with pytest.raises(TLSpecError, match=match):
        head_stability([_Tripwire(), _Tripwire()], TEXTS, **bad)
    if set(bad) & {"measure", "n_blocks", "n_resamples", "confidence", "n_resample"}:
        group = StudyGroup("g", 2, 0.0, [_Tripwire(), _Tripwire()])
        with pytest.raises(TLSpecError, match=match):
            stability_study([group], TEXTS, TEXTS, **bad)


def test_data_dependent_checks_come_before_any_forward_pass(models):
    a, b, _ = models["bridge"]
    with pytest.raises(TLSpecError, match="cannot fill n_blocks=8"):
        head_stability([a, b], TEXTS[:3], n_blocks=8)
    tokens, mask = _padded(a, TEXTS[:4], "left")
    with pytest.raises(TLSpecError, match="prepend_bos applies to text prompts"):
        head_stability([a, b], tokens, attention_mask=mask, prepend_bos=True)
    with pytest.raises(TLSpecError, match="attention_mask goes with a"):
        head_stability([a, b], TEXTS, attention_mask=mask)
    with pytest.raises(TLSpecError, match="cannot fill n_blocks=16"):
        stability_study([StudyGroup("g", 3, 0.0, [_Tripwire(), _Tripwire()])], TEXTS, TEXTS)


def test_options_classes_defaults_and_flags():
    assert StabilityOptions.defaults() == dict(
        measure="pattern", null=2, resid=True, region="lower", max_length=128, batch_size=8,
        n_blocks=None, prepend_bos=None, stat_dtype="float64", estimator="auto")
    assert StabilityStatsOptions.defaults() == dict(confidence=0.95, n_resamples=1000, seed=0)
    assert StabilityStudyOptions.defaults() == dict(measure="output", n_blocks=16, null=2)
    assert StabilityOptions(stat_dtype=torch.float32).torch_dtype is torch.float32
    assert StabilityOptions(null=[1, 2]).null == (1, 2)  # a list of null models, kept immutable
    opts, st = stability_options(StabilityOptions(measure="output"), StatsOptions(seed=4),
                                 n_resamples=300)
    assert (opts.measure, st.seed, st.n_resamples) == ("output", 4, 300)
    parser = argparse.ArgumentParser()
    StabilityOptions.add_arguments(parser)
    args = parser.parse_args(["--null", "0", "--measure", "output", "--n-blocks", "4", "--no-resid"])
    got = StabilityOptions.from_namespace(args)
    assert (got.null, got.measure, got.n_blocks, got.resid, got.batch_size) == (0, "output", 4, False, 8)
    assert "(default: 8)" in parser.format_help()


def test_batch_features_follow_the_hookset_protocol(models):
    a = models["bridge"][0]
    feats = BatchFeatures(a, keep=("pattern", "output", "resid"))
    assert isinstance(feats, HookSet)
    names = [n for n, _ in feats]
    assert names == [n for n, _ in feats.fwd_hooks]
    assert names[:1] == [hook_name("pattern", 0)] and hook_name("z", 2) in names
    assert hook_name("resid_post", 2) in names and len(names) == 3 * 3
    tokens, mask = _padded(a, TEXTS[:3], "right")
    assert feats.bind(tokens, mask) is feats and feats.attention_mask is mask
    with torch.inference_mode(), a.hooks(fwd_hooks=list(feats)):
        a(tokens, return_type=None)
    padded = ~mask.bool()
    assert feats.output[1].shape[:3] == (3, tokens.shape[1], 8)
    assert float(feats.output[1][padded].abs().max()) == 0.0  # padding zeroed
    assert float(feats.resid[0][padded].abs().max()) == 0.0
    assert float(feats.resid[0][~padded].abs().sum()) > 0
    feats.clear()
    assert feats.output == {} and feats.pattern == {}


def test_the_zoo_default_groups_are_deprecated_but_still_work(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_SPEC_CACHE", str(tmp_path / "empty-cache"))
    with pytest.deprecated_call(), pytest.raises(TLSpecError, match="is not built"):
        stability_study(seeds=2, n_resamples=200)
