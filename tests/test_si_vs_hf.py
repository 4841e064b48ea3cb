"""tl_spec's Specialization Index equals an independent Hugging Face eager-attention reference.

For every tiny architecture, both backends and every (method, region, aggregate), tl_spec's
batched, hooked computation must match ``hf_reference`` (one prompt at a time, no padding,
float64 numpy loops) to 1e-5 absolute on the Standard-10 prompts.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, COMBOS, combo_id, si_kwargs, standard10
from hf_reference import hf_attentions, layer_windows, reference_si, visible_mask

from tl_spec.zoo.tiny import ARCHS

ATOL = 1e-5


def assert_close(name: str, actual, desired, atol: float = ATOL) -> None:
    assert actual is not None, f"{name} is None, expected an array"
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, f"{name}: shape {actual.shape} != {desired.shape}"
    np.testing.assert_allclose(actual, desired, rtol=0, atol=atol, err_msg=name)


def compare_to_reference(res, ref: dict, method: str, aggregate: str | None, atol: float) -> None:
    assert res.method == method
    assert abs(float(res.value) - ref["value"]) <= atol, (
        f"value {float(res.value)!r} != reference {ref['value']!r} "
        f"(diff {float(res.value) - ref['value']:.3g})"
    )
    assert_close("per_head", res.per_head, ref["per_head"], atol)
    if method == "entropy_profile":
        assert res.per_layer is None
        assert res.head_correlation is None
        assert res.per_prompt is None
        assert_close("entropies", res.entropies, ref["entropies"], atol)
        return
    assert_close("per_layer", res.per_layer, ref["per_layer"], atol)
    assert res.entropies is None
    if method == "pattern":
        assert_close("head_correlation", res.head_correlation, ref["head_correlation"], atol)
        np.testing.assert_allclose(res.per_head, 1.0 - np.asarray(res.head_correlation), atol=1e-12)
        assert int(res.undefined_heads) == ref["undefined_heads"]
    else:
        assert res.head_correlation is None
    if ref["per_prompt"] is None:
        assert res.per_prompt is None
    else:
        assert_close("per_prompt", res.per_prompt, ref["per_prompt"], atol)


@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_si_matches_hf_reference(arch, backend, combo, si_result, hf_atts, hf_model):
    method, region, aggregate = combo
    res = si_result(arch, backend, **si_kwargs(*combo))
    assert len(res.tokens) == 10
    assert all(0 < len(t) <= 128 for t in res.tokens)
    atts = hf_atts(arch, res.tokens)
    windows = layer_windows(hf_model(arch).config)
    ref = reference_si(
        atts, windows, method=method, region=region or "lower", aggregate=aggregate or "prompt"
    )
    n_layers, n_heads = len(atts[0]), atts[0][0].shape[0]
    assert np.asarray(res.per_head).shape == (n_layers, n_heads)
    # the comparison is only meaningful if heads actually differ
    assert np.nanstd(ref["per_head"]) > 1e-3
    compare_to_reference(res, ref, method, aggregate, ATOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_window_semantics(arch, hf_model):
    """HF eager patterns: exactly zero outside k <= q (and q - k < w on window layers), > 0 inside."""
    model = hf_model(arch)
    windows = layer_windows(model.config)
    ids = list(range(5, 45))  # 40 tokens, longer than the tiny windows (8)
    for layer, a in enumerate(hf_attentions(model, ids)):
        vis = visible_mask(len(ids), windows[layer])
        assert np.all(a[:, ~vis] == 0.0), f"layer {layer}: attention outside the visible cells"
        assert np.all(a[:, vis] > 0.0), f"layer {layer}: zero attention inside the visible cells"
    if arch in ("mistral-swa", "gemma2"):
        assert any(w is not None for w in windows)


@pytest.mark.parametrize("arch", ["mistral-swa", "gemma2"])
def test_window_binds_on_standard10(arch, hf_atts, hf_model, tiny_checkpoints):
    """The Standard-10 prompts are longer than the window, so the window changes the answer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoints[arch]))
    tokens = [tok(p).input_ids[:128] for p in standard10()]
    windows = layer_windows(hf_model(arch).config)
    w = min(x for x in windows if x is not None)
    assert all(len(t) > w for t in tokens)
    atts = hf_atts(arch, tokens)
    for layer, win in enumerate(windows):
        if win is None:
            continue
        for a in atts:
            n = a[layer].shape[-1]
            causal_out = visible_mask(n, None) & ~visible_mask(n, win)
            assert causal_out.any() and np.all(a[layer][:, causal_out] == 0.0)
    with_window = reference_si(atts, windows, method="pattern", region="lower")
    no_window = reference_si(atts, [None] * len(windows), method="pattern", region="lower")
    assert abs(with_window["value"] - no_window["value"]) > 1e-2
