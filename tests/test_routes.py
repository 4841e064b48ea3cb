"""The SI reproduction routes (``SIOptions.route``) equal the paper's code path redone in plain HF.

``hf_reference_routes`` pads every prompt to 128 with the tokenizer exactly as the E11 notebooks
did and runs Hugging Face eager attention with that mask; tl_spec's hooked, batched computation
must match it to 1e-6 on three zoo models (GQA, MHA and Mistral sliding-window, whose window of
32 binds at 128 tokens so right-padded pad rows past it see only pads) on every backend this
TransformerLens can load.
"""

from __future__ import annotations

import json
import re
import warnings
from functools import lru_cache

import numpy as np
import pytest
import torch
from conftest import LOADABLE
from hf_reference_routes import hf_padded_attentions, reference_route

import tl_spec
from tl_spec import TLSpecError
from tl_spec.errors import TLSpecWarning
from tl_spec.options.si import ROUTE_METHOD, ROUTES, SIOptions
from tl_spec.prompts import STANDARD_10
from tl_spec.zoo.registry import model_dir

ATOL = 1e-6
MODELS = ("base-gqa", "base-mha", "base-swa")
ROUTED = tuple(r for r in ROUTES if r != "tl_spec")


@lru_cache(maxsize=None)
def _model(name: str, backend: str):
    return tl_spec.load_model(model_dir(name), backend=backend)


@lru_cache(maxsize=None)
def _hf(name: str):
    return hf_padded_attentions(model_dir(name), list(STANDARD_10), max_length=128)


@lru_cache(maxsize=None)
def _si(name: str, backend: str, route: str):
    return tl_spec.specialization_index(_model(name, backend), STANDARD_10,
                                        method=ROUTE_METHOD[route], route=route)


def _close(name: str, actual, desired) -> None:
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(desired, np.float64),
                               rtol=0, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("route", ROUTED)
@pytest.mark.parametrize("backend", LOADABLE)
@pytest.mark.parametrize("name", MODELS)
def test_route_matches_hf_eager(name, backend, route):
    ids, mask, atts = _hf(name)
    res = _si(name, backend, route)
    assert res.tokens == ids  # the notebooks' tokenization: the tokenizer's own BOS
    ref = reference_route(mask, atts, route)
    assert abs(res.value - ref["value"]) <= ATOL, (res.value, ref["value"])
    if route == "metrics_py":
        _close("per_layer", res.per_layer, ref["per_layer"])
        _close("per_prompt", res.per_prompt, ref["per_prompt"])
        _close("per_head", res.per_head, ref["per_head"])
    else:
        _close("entropies", res.entropies, ref["entropies"])
        _close("per_prompt_heads", res.per_prompt_heads, ref["per_prompt_heads"])
    assert res.settings["route"] == route and res.settings["padded_to"] == 128
    assert res.provenance["options"]["route"] == route


def test_sliding_window_pad_rows_are_uniform_in_hf():
    """What the route reproduces on base-swa: right-padded rows past the window see only pads,
    and HF eager makes them uniform over all 128 keys (not zero, not NaN)."""
    _, mask, atts = _hf("base-swa")
    n = int(mask[0].sum())
    assert n + 32 < 128
    np.testing.assert_allclose(atts[0][0, :, n + 32:], 1.0 / 128, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", MODELS)
def test_masked_route_equals_entropy_profile(name):
    """On the zoo tokenizers (which add BOS as TransformerLens does) e11_masked is tl_spec's
    entropy_profile up to float rounding: padding to 128 with the mask changes no real row."""
    backend = LOADABLE[0]
    clean = tl_spec.specialization_index(_model(name, backend), STANDARD_10,
                                         method="entropy_profile")
    masked = _si(name, backend, "e11_masked")
    assert masked.tokens == clean.tokens
    assert abs(masked.value - clean.value) < 1e-9
    _close("entropies", masked.entropies, clean.entropies)


def test_routes_differ_on_the_zoo():
    """The unmasked artifact moves SI by 0.1-0.6 on the zoo models (issue 18 reports 0.08-0.58)."""
    backend = LOADABLE[0]
    gaps = [abs(_si(n, backend, "e11_unmasked").value - _si(n, backend, "e11_masked").value)
            for n in MODELS]
    assert min(gaps) > 0.05 and max(gaps) > 0.5, gaps


def test_default_route_is_unchanged():
    opts = SIOptions()
    assert opts.route == "tl_spec"
    model = _model("base-gqa", LOADABLE[0])
    a = tl_spec.specialization_index(model, STANDARD_10, method="entropy_profile")
    b = tl_spec.specialization_index(model, STANDARD_10, method="entropy_profile",
                                     route="tl_spec")
    assert a.value == b.value and "route" not in repr(a) and "padded_to" not in a.settings


def test_bad_combinations_are_clear():
    with pytest.raises(TLSpecError, match="route='e11_unmasked' .* needs method='entropy_profile'"):
        SIOptions(route="e11_unmasked", method="pattern")
    with pytest.raises(TLSpecError, match="needs method='normalized_entropy'"):
        SIOptions(route="metrics_py", method="entropy_profile")
    with pytest.raises(TLSpecError, match="prepend_bos must stay None"):
        SIOptions(route="e11_masked", method="entropy_profile", prepend_bos=True)
    with pytest.raises(TLSpecError, match="beyond the model's context of 128"):
        tl_spec.specialization_index(_model("base-gqa", LOADABLE[0]), ["a cat sat"],
                                     method="entropy_profile", route="e11_unmasked",
                                     max_length=200)


def test_long_prompt_is_truncated_as_the_notebooks_did():
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    model = _model("base-swa", LOADABLE[0])
    with pytest.warns(TLSpecWarning, match="truncated by the tokenizer"):
        res = tl_spec.specialization_index(model, [long, STANDARD_10[0]],
                                           method="entropy_profile", route="e11_unmasked")
    ids, mask, atts = hf_padded_attentions(model_dir("base-swa"), [long, STANDARD_10[0]])
    assert res.tokens == ids and len(ids[0]) == 128 and res.settings["n_truncated"] == 1
    assert abs(res.value - reference_route(mask, atts, "e11_unmasked")["value"]) <= ATOL


def test_token_ids_are_padded_with_the_tokenizer_pad():
    model = _model("base-mha", LOADABLE[0])
    text = _si("base-mha", LOADABLE[0], "e11_unmasked")
    ids = [torch.tensor(t) for t in text.tokens]
    res = tl_spec.specialization_index(model, ids, method="entropy_profile",
                                       route="e11_unmasked")
    assert res.value == pytest.approx(text.value, abs=1e-12)
    assert res.settings["pad_token_id"] == model.tokenizer.pad_token_id


def test_token_ids_without_tokenizer_are_refused():
    model = tl_spec.load_model(model_dir("base-mha"), backend=LOADABLE[0])
    model.tokenizer = None
    with pytest.raises(TLSpecError, match="has no tokenizer"):
        tl_spec.specialization_index(model, torch.tensor([[1, 5, 6, 7]]),
                                     method="entropy_profile", route="e11_unmasked")


@pytest.mark.parametrize("backend", LOADABLE)
def test_real_nan_is_still_caught_on_the_unmasked_route(backend):
    model = tl_spec.load_model(model_dir("base-swa"), backend=backend)
    with torch.no_grad():
        if backend == "hooked":
            model.blocks[1].attn.W_Q.view(-1)[0] = float("nan")
        else:
            name, param = next((n, p) for n, p in model.named_parameters()
                               if re.search(r"layers\.1\..*q_proj.*weight", n))
            param.data.reshape(-1)[0] = float("nan")
    with pytest.raises(TLSpecError, match="starting at layer 1"):
        tl_spec.specialization_index(model, list(STANDARD_10[:3]), method="entropy_profile",
                                     route="e11_unmasked")


def test_summary_repr_and_json_show_the_route():
    res = _si("base-swa", LOADABLE[0], "e11_unmasked")
    assert "route=e11_unmasked" in repr(res)
    assert "reproduction of an artifact of the paper's code" in res.summary()
    back = type(res).from_dict(json.loads(res.to_json()))
    assert back.route == "e11_unmasked" and back.value == res.value


def test_delta_si_takes_the_route():
    backend = LOADABLE[0]
    base, tuned = _model("base-gqa", backend), tl_spec.load_model(model_dir("gqa-sft-1"),
                                                                  backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TLSpecWarning)
        d = tl_spec.delta_si(base, tuned, STANDARD_10, method="entropy_profile",
                             route="e11_unmasked", n_resamples=200)
    si_b = _si("base-gqa", backend, "e11_unmasked").value
    si_t = tl_spec.specialization_index(tuned, STANDARD_10, method="entropy_profile",
                                        route="e11_unmasked").value
    assert d.delta_pct == pytest.approx((si_t - si_b) / si_b * 100, abs=1e-9)
    assert d.settings["si_options"]["route"] == "e11_unmasked"
    assert "route=e11_unmasked" in repr(d) and "route: e11_unmasked" in d.summary()


def test_delta_refuses_mixed_routes():
    backend = LOADABLE[0]
    clean = tl_spec.specialization_index(_model("base-gqa", backend), STANDARD_10,
                                         method="entropy_profile")
    with pytest.raises(TLSpecError, match="different routes"):
        tl_spec.delta_from_results(clean, _si("base-gqa", backend, "e11_unmasked"))


@pytest.mark.parametrize("route", ROUTED)
def test_probe_takes_the_route(route):
    """The probe's clean SI is the route's SI; noise at sigma 0.05 moves it."""
    backend = LOADABLE[0]
    model = _model("base-swa", backend)
    p = tl_spec.perturbation_probe(model, STANDARD_10, method=ROUTE_METHOD[route], route=route,
                                   sigma=0.05, seeds=(1,), layers="all", n_resamples=200)
    assert p.si_clean == pytest.approx(_si("base-swa", backend, route).value, abs=1e-9)
    assert abs(p.response_pct) > 0.01
    assert p.settings["route"] == route


def test_report_marks_a_reproduction_route():
    from tl_spec.viz.report import render_report

    html = render_report([_si("base-swa", LOADABLE[0], "e11_unmasked")])
    assert "Route e11_unmasked: reproduction of an artifact of the paper&#x27;s code" in html \
        or "Route e11_unmasked: reproduction of an artifact of the paper's code" in html
    clean = tl_spec.specialization_index(_model("base-swa", LOADABLE[0]), STANDARD_10,
                                         method="entropy_profile")
    assert "reproduction of an artifact" not in render_report([clean])


@pytest.mark.parametrize("backend", LOADABLE)
def test_left_padding_tokenizer_matches_hf(backend):
    """A tokenizer that pads on the left: pad rows before the first real token see no real key
    (HF eager: uniform over all keys) and positions still count from 0, as in HF."""
    model = tl_spec.load_model(model_dir("base-swa"), backend=backend)
    model.tokenizer.padding_side = "left"
    _, mask, atts = hf_padded_attentions(model_dir("base-swa"), list(STANDARD_10),
                                         padding_side="left")
    for route in ("e11_unmasked", "e11_masked"):
        res = tl_spec.specialization_index(model, STANDARD_10, method="entropy_profile",
                                           route=route)
        assert res.settings["route_padding_side"] == "left"
        assert abs(res.value - reference_route(mask, atts, route)["value"]) <= ATOL


def test_eager_padding_scores_unit():
    """Both backends' own masks (-inf, or the dtype's minimum) give the same softmax; a row with
    no visible real key is uniform over every key; a NaN score stays NaN (so it is caught)."""
    from tl_spec.metrics.routes import eager_padding_scores

    torch.manual_seed(0)
    s = torch.randn(2, 3, 5, 5)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    hooked = s.masked_fill(~causal, -torch.inf)
    bridge = s.masked_fill(~causal, torch.finfo(s.dtype).min)
    keys = torch.tensor([[True, True, True, False, False], [False, False, True, True, True]])
    a = eager_padding_scores(hooked, keys, window=2).softmax(-1)
    b = eager_padding_scores(bridge, keys, window=2).softmax(-1)
    assert torch.equal(a, b)
    # prompt 0, query 4 with window 2 sees keys 3, 4: both pads -> uniform over all 5 keys
    assert torch.allclose(a[0, :, 4], torch.full((3, 5), 0.2))
    # prompt 1 (left-padded), queries 0 and 1 see only pads -> uniform; query 2 sees key 2 only
    assert torch.allclose(a[1, :, :2], torch.full((3, 2, 5), 0.2))
    assert torch.equal(a[1, :, 2], torch.tensor([0.0, 0, 1, 0, 0]).expand(3, 5))
    s[0, 0, 2, 1] = float("nan")
    assert torch.isnan(eager_padding_scores(s, keys).softmax(-1)[0, 0, 2]).all()


def test_pattern_stats_rows_option_is_checked():
    model = _model("base-gqa", LOADABLE[0])
    with pytest.raises(TLSpecError, match="rows must be"):
        tl_spec.PatternStats(model, stats=("column_entropy",), rows="pads")
    with pytest.raises(TLSpecError, match="pattern statistics always use real tokens"):
        tl_spec.PatternStats(model, stats=("correlation",), rows="all")


def test_study_cells_take_the_route():
    from tl_spec.study.kinds import KINDS, run_kind

    assert KINDS["si"].defaults()["route"] == "tl_spec"
    res = run_kind(KINDS["si"], [_model("base-swa", LOADABLE[0])], STANDARD_10,
                   {"method": "entropy_profile", "route": "e11_unmasked"}, 0)
    assert res.route == "e11_unmasked"
    assert res.value == pytest.approx(_si("base-swa", LOADABLE[0], "e11_unmasked").value,
                                      abs=1e-12)


def test_report_marks_a_probe_on_a_route():
    from tl_spec.viz.report import render_report

    p = tl_spec.perturbation_probe(_model("base-swa", LOADABLE[0]), STANDARD_10[:4],
                                   method="entropy_profile", route="e11_unmasked", sigma=0.05,
                                   seeds=(1,), n_resamples=200)
    assert "Route e11_unmasked: reproduction of an artifact" in render_report([p])
