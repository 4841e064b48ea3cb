"""The noise experiments' API: options objects, token-id inputs, the result protocol.

Token inputs: the per-prompt ``model.to_tokens`` rows, padded left or right into one tensor with
a ragged attention mask, give the string route's numbers (probe response 1e-6, sensitivity slopes
1e-6), also on a model without a tokenizer. Options are validated before the model is touched.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import LOADABLE

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments.probe import ProbeResult, SweepResult
from tl_spec.experiments.sensitivity import SensitivityComparison, SensitivityResult
from tl_spec.hooks.base import HookSet
from tl_spec.hooks.noising import SITES, NoiseHooks, check_noise_options, noise, site_hook_name
from tl_spec.names import hook_name
from tl_spec.options import SIOptions, StatsOptions
from tl_spec.options.noise import (
    ProbeOptions,
    SensitivityOptions,
    SweepOptions,
    parse_seeds,
    parse_sigmas,
)
from tl_spec.prompts import E06_TEXTS, STANDARD_10

PROMPTS = list(STANDARD_10[:5])
TEXTS = list(E06_TEXTS[:4])
PROBE = dict(sigma=0.1, seeds=(42, 123), n_resamples=200)
SENS = dict(sigmas=(0, 0.1, 0.3), seeds=(42, 123))


def _padded(model, texts, side):
    """The texts' own ``to_tokens`` rows in one tensor, padded on ``side``, and the ragged mask."""
    rows = [model.to_tokens(t)[0] for t in texts]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), 7, dtype=torch.long)  # pad id: any in-vocab id
    mask = torch.zeros_like(tokens)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        tokens[i, cols], mask[i, cols] = r, 1
    assert len({len(r) for r in rows}) > 1  # the mask really is ragged
    return tokens, mask


def _no_tokenizer(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the bridge notes its config is shared
        bare = copy.copy(model)
    bare.tokenizer = None
    assert bare.tokenizer is None and model.tokenizer is not None
    with pytest.raises(Exception):  # noqa: B017 - whatever the backend raises without one
        bare.to_tokens("no tokenizer here")
    return bare


class _Untouchable:
    """Stands in for a model where none may be used: any attribute access fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was touched ({name}) before the options were checked")


# ------------------------------------------------------------------ token inputs


@pytest.mark.parametrize("backend", LOADABLE)
def test_probe_token_input_equals_strings(tl_model, backend):
    model = tl_model("llama-gqa", backend)
    ref = tl_spec.perturbation_probe(model, PROMPTS, **PROBE)
    assert ref.settings["input"] == "text" and abs(ref.response_pct) > 1e-3  # noise acts
    bare = _no_tokenizer(model)
    for side in ("right", "left"):
        tokens, mask = _padded(model, PROMPTS, side)
        for m in (model, bare):
            got = tl_spec.perturbation_probe(m, tokens, attention_mask=mask, **PROBE)
            assert got.response_pct == pytest.approx(ref.response_pct, abs=1e-6)
            np.testing.assert_allclose(got.si_noised, ref.si_noised, rtol=0, atol=1e-9)
            assert got.si_clean == pytest.approx(ref.si_clean, abs=1e-9)
            assert got.interval.low == pytest.approx(ref.interval.low, abs=1e-6)
            assert got.interval.high == pytest.approx(ref.interval.high, abs=1e-6)
            assert got.settings["input"] == "token ids"
            assert got.provenance["prompts"]["token_ids_sha256"] == \
                ref.provenance["prompts"]["token_ids_sha256"]


def test_sweep_token_input_equals_strings(tl_model):
    model = tl_model("llama-gqa", LOADABLE[-1])
    kw = dict(sigmas=(0, 0.2), seeds=(42,), regions=("early", (0, 2)))
    ref = tl_spec.probe_sweep(model, PROMPTS, **kw)
    tokens, mask = _padded(model, PROMPTS, "left")
    got = tl_spec.probe_sweep(_no_tokenizer(model), tokens, attention_mask=mask, **kw)
    assert got.regions == ref.regions == ["early", "0:2"]
    np.testing.assert_allclose(got.si, ref.si, rtol=0, atol=1e-9)
    assert np.abs(ref.change_pct[:, 1]).max() > 0.01  # sigma 0.2 changes the SI


@pytest.mark.parametrize("backend", LOADABLE)
def test_sensitivity_token_input_equals_strings(tl_model, backend):
    model = tl_model("llama-gqa", backend)
    ref = tl_spec.noise_sensitivity(model, TEXTS, **SENS)
    assert ref.slope > 0  # perplexity rises with sigma
    bare = _no_tokenizer(model)
    for side in ("right", "left"):
        tokens, mask = _padded(model, TEXTS, side)
        for m in (model, bare):
            got = tl_spec.noise_sensitivity(m, tokens, attention_mask=mask, **SENS)
            assert got.slope == pytest.approx(ref.slope, rel=1e-6, abs=1e-6)
            assert got.log_slope == pytest.approx(ref.log_slope, rel=1e-6, abs=1e-6)
            np.testing.assert_allclose(got.ppl, ref.ppl, rtol=1e-6)


# ------------------------------------------------------------------ result protocol


@pytest.fixture(scope="module")
def results(tiny_checkpoints):
    backend = LOADABLE[-1]
    gqa = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)
    mha = tl_spec.load_model(tiny_checkpoints["llama-mha"], backend=backend)
    probe = tl_spec.perturbation_probe(gqa, PROMPTS, **PROBE)
    sweep = tl_spec.probe_sweep(gqa, PROMPTS, sigmas=(0, 0.05, 0.2), seeds=(42, 123),
                                target_si=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tl_spec.TLSpecWarning)  # low r^2 on random weights
        a = tl_spec.noise_sensitivity(mha, TEXTS, **SENS)
        b = tl_spec.noise_sensitivity(gqa, TEXTS, **SENS)
    return {"probe": probe, "sweep": sweep, "sensitivity": b,
            "comparison": tl_spec.compare_sensitivity(a, b)}


KINDS = {"probe": ProbeResult, "sweep": SweepResult, "sensitivity": SensitivityResult,
         "comparison": SensitivityComparison}


@pytest.mark.parametrize("name", list(KINDS))
def test_result_protocol(results, name, tmp_path):
    r = results[name]
    assert type(r) is KINDS[name]
    text = repr(r)
    assert "\n" not in text and len(text) < 400 and text.startswith(KINDS[name].__name__ + "(")
    html = r._repr_html_()
    assert "<table" in html and len(html.encode()) < 200_000
    assert r.summary() and r.summary() == str(r) == r.table()
    frame = r.to_frame()
    assert len(frame) > 0
    path = tmp_path / f"{r.kind}.json"
    r.to_json(path)
    back = tl_spec.load_result(path)
    assert type(back) is type(r) and back.headline().keys() == r.headline().keys()
    assert json.loads(path.read_text())["kind"] == r.kind
    expected = ["llama-mha", "llama-gqa"] if name == "comparison" else ["llama-gqa"]
    assert r.model_names() == back.model_names() == expected
    for shown in expected:
        assert shown in text


def test_probe_headline_and_frame(results):
    p = results["probe"]
    head = p.headline()
    assert head["response %"] == p.response_pct and head["verdict"] == p.verdict
    assert head["95% CI"] == p.interval and head["sigma"] == 0.1
    assert p.heat() is None  # per layer, not per head
    frame = p.to_frame()
    assert frame.seed.tolist() == [42, 123] and set(frame.model) == {"llama-gqa"}
    np.testing.assert_allclose(frame.response_pct, p.response_per_seed, rtol=0, atol=0)
    layers = p.layer_frame()
    assert len(layers) == 3 and layers.noised.all()  # sigma at every layer of 3
    np.testing.assert_allclose(layers.si_clean, p.per_layer_clean, rtol=0, atol=0)
    assert "verdict:" in p.summary()


def test_sweep_headline_and_summary(results):
    s = results["sweep"]
    head = s.headline()
    assert head["conditions"] == 4 * 3 * 2 and head["SI clean"] == s.si_clean
    mean = s.change_pct.mean(axis=-1)
    assert abs(head["largest change %"]) == pytest.approx(np.abs(mean).max(), abs=1e-12)
    assert head["largest change %"] != 0
    frame = s.to_frame()
    assert len(frame) == 24 and set(frame.model) == {"llama-gqa"}
    assert frame.recovery.notna().all()
    assert "SI clean" in s.summary() and "sigma 0.2" in s.summary()


def test_sensitivity_and_comparison_headlines(results):
    s, c = results["sensitivity"], results["comparison"]
    head = s.headline()
    assert head["PPL slope per unit sigma"] == s.slope
    assert head["r²"] == pytest.approx(np.mean([f.r2 for f in s.fits]), abs=1e-12)
    assert head["log-PPL slope per unit sigma"] == s.log_slope
    frame = s.to_frame()
    assert len(frame) == 3 * 2 * len(TEXTS)
    np.testing.assert_allclose(frame.log_ppl, np.log(frame.ppl), rtol=1e-12)
    assert c.headline()["ratio of means"] == c.ratio_of_means
    cf = c.to_frame()
    assert cf.seed.tolist() == [42, 123] and cf.model_b.unique().tolist() == ["llama-gqa"]
    np.testing.assert_allclose(cf.ratio, c.per_seed_ratios, rtol=0, atol=0)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("call", "kwargs", "message"),
    [
        ("perturbation_probe", {"sigmaa": 0.1}, "unknown option 'sigmaa' \\(did you mean 'sigma'"),
        ("perturbation_probe", {"seeds": (1.5, 2)}, "seeds must be integers, got 1.5"),
        ("perturbation_probe", {"seeds": (1, 1)}, "distinct integers"),
        ("perturbation_probe", {"sigma": -1}, "sigma must be a finite number >= 0"),
        ("perturbation_probe", {"site": "mlp"}, "unknown noise site 'mlp'"),
        ("perturbation_probe", {"layers": "upper"}, "layer range 'upper'"),
        ("perturbation_probe", {"n_resamples": 5}, "n_resamples must be an integer >= 100"),
        ("perturbation_probe", {"aggregate": "mean_pattern"}, "needs aggregate='prompt'"),
        ("perturbation_probe", {"sigmas": (0, 0.1)}, "unknown option 'sigmas'"),
        ("probe_sweep", {"sigmas": ()}, "sigmas is empty"),
        ("probe_sweep", {"sigmas": ""}, "sigmas is empty"),
        ("probe_sweep", {"seeds": (1.5, 2)}, "seeds must be integers"),
        ("probe_sweep", {"regions": ("late", "late")}, "distinct layer ranges"),
        ("probe_sweep", {"confidence": 0.9}, "unknown option 'confidence'"),
        ("noise_sensitivity", {"sigmas": ()}, "sigmas is empty"),
        ("noise_sensitivity", {"sigmas": (0, 0.1)}, "at least 3 distinct sigmas"),
        ("noise_sensitivity", {"sigmas": (0, 0.1, float("nan"))}, "finite number"),
        ("noise_sensitivity", {"seeds": (1.5, 2)}, "seeds must be integers"),
        ("noise_sensitivity", {"method": "pattern"}, "unknown sensitivity option 'method'"),
    ],
)
def test_bad_options_fail_before_the_model_is_touched(call, kwargs, message):
    with pytest.raises(TLSpecError, match=message):
        getattr(tl_spec, call)(_Untouchable(), PROMPTS, **kwargs)


def test_command_line_text_parses_with_clear_errors():
    parser = argparse.ArgumentParser(prog="x", exit_on_error=False)
    SweepOptions.add_arguments(parser)
    args = parser.parse_args(["--sigmas", "0,0.1", "--seeds", "7", "--regions", "early,0:2",
                              "--no-fast"])
    opts = SweepOptions.from_namespace(args)
    assert (opts.sigmas, opts.seeds, opts.regions, opts.fast) == ((0.0, 0.1), (7,),
                                                                   ("early", "0:2"), False)
    for flag, value, message in (("--sigmas", "", "sigmas is empty"),
                                 ("--sigmas", "0,,1", "empty entry"),
                                 ("--seeds", "1.5", "comma-separated integers, got '1.5'")):
        with pytest.raises(argparse.ArgumentError, match=message):
            parser.parse_args([flag, value])
    assert parse_sigmas("0, 0.05") == (0.0, 0.05) and parse_seeds("42,123") == (42, 123)
    parser = argparse.ArgumentParser(prog="x", exit_on_error=False)
    ProbeOptions.add_arguments(parser)
    assert ProbeOptions.from_namespace(parser.parse_args(["--layers", "3,5"])).layers == "3,5"


def test_options_defaults_round_trip_and_objects_equal_keywords(tl_model):
    assert ProbeOptions().sigma == 0.05 and ProbeOptions().seeds == (42, 123, 456)
    assert SweepOptions().sigmas == SensitivityOptions().sigmas == (0, 0.01, 0.02, 0.05, 0.1, 0.2)
    assert SensitivityOptions().min_r2 == 0.5 and SensitivityOptions().max_length == 128
    opts = ProbeOptions(layers=(0, 2), seeds=[7, 8], sigma=0.2)
    assert ProbeOptions.build(json.loads(json.dumps(opts.to_dict()))) == opts
    model = tl_model("llama-gqa", LOADABLE[-1])
    by_keywords = tl_spec.perturbation_probe(model, PROMPTS, sigma=0.1, seeds=(42,), layers="0:2",
                                             n_resamples=200)
    by_objects = tl_spec.perturbation_probe(
        model, PROMPTS, options=ProbeOptions(sigma=0.1, seeds=(42,), layers=(0, 2)),
        si_options=SIOptions(), stats=StatsOptions(n_resamples=200, seed=42))
    assert by_objects.layers == by_keywords.layers == [0, 1]
    assert by_objects.response_pct == by_keywords.response_pct
    assert by_objects.interval == by_keywords.interval  # bootstrap seed: the first noise seed
    other = tl_spec.perturbation_probe(model, PROMPTS, sigma=0.1, seeds=(42,), layers="0:2",
                                       n_resamples=200, seed=1)
    assert other.settings["seed"] == 1 and other.response_pct == by_keywords.response_pct
    assert other.interval != by_keywords.interval


# ------------------------------------------------------------------ hooks


def test_noise_hooks_follow_the_hookset_protocol(tl_model):
    model = tl_model("llama-gqa", "bridge")
    assert SITES == {s: hook_name(s, 0).replace(".0.", ".{layer}.") for s in SITES}
    assert site_hook_name("z", 2) == hook_name("z", 2)
    hooks = noise(model, sigma=0.1, layers="1:3", site="resid_pre")
    assert isinstance(hooks, HookSet) and isinstance(hooks, NoiseHooks)
    tokens, mask = _padded(model, PROMPTS[:2], "left")
    assert hooks.bind(tokens, mask) is hooks and hooks.attention_mask is mask
    assert [name for name, _ in hooks] == [hook_name("resid_pre", 1), hook_name("resid_pre", 2)]
    with pytest.warns(DeprecationWarning):
        check_noise_options(site="z", sigmas=[0.1], seeds=[1])
    with pytest.warns(DeprecationWarning), pytest.raises(TLSpecError, match="unknown noise site"):
        check_noise_options(site="mlp")
