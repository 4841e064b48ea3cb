"""Prefix reuse (resuming a forward mid-way) on both backends, early-stopped SI forwards, and
head importance refusing NaN/Inf losses.

Prefix reuse is switched off by patching the capability an experiment module imported
(``can_start_at_layer``) to False: the experiment then runs every forward from layer 0, the
reference its prefix-reusing run must equal.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import pytest
import torch
from conftest import LOADABLE

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments import deconstruct as deconstruct_mod
from tl_spec.experiments import importance as importance_mod
from tl_spec.experiments import sweep as sweep_mod
from tl_spec.experiments.importance import head_importance
from tl_spec.experiments.sweep import NoiseCondition, run_sweep
from tl_spec.hooks import resolve_layers
from tl_spec.hooks.capture import PatternStats
from tl_spec.resume import can_start_at_layer, forward_from_layer, probe_start_at_layer
from tl_spec.prompts import STANDARD_10
from tl_spec.running import stop_hook
from tl_spec.tokens import tokenize

ARCHS = ("llama-gqa", "mistral-swa", "gpt2")
TL_MAJOR = int(version("transformer-lens").split(".")[0])
TEXTS = list(STANDARD_10[:4])


def _expected(backend: str) -> bool:
    """HookedTransformer resumes; the bridge does from TransformerLens 4 on (3.x raises)."""
    return backend == "hooked" or TL_MAJOR >= 4


def _resuming(tl_model, arch: str, backend: str):
    model = tl_model(arch, backend)
    if not can_start_at_layer(model):
        pytest.skip(f"{backend} on TransformerLens {TL_MAJOR} cannot resume mid-way")
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", LOADABLE)
def test_probe_answers_per_backend_and_resumes_exactly(tl_model, arch, backend):
    model = tl_model(arch, backend)
    assert can_start_at_layer(model) is _expected(backend)
    assert probe_start_at_layer(model) is _expected(backend)
    if not _expected(backend):
        return
    # a longer batch than the probe's, right- and left-padded rows, from every layer: bit-identical
    tokens = tokenize(model, STANDARD_10[:3], max_length=64)
    ids = [torch.tensor(x) for x in tokens.ids]
    width = max(len(x) for x in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for r, x in enumerate(ids):  # left-pad the first row, leave the others right-aligned
        batch[r, width - len(x):] = x
        mask[r, width - len(x):] = 1
    for start in range(1, int(model.cfg.n_layers)):
        got = {}
        with torch.inference_mode():
            full = model.run_with_hooks(
                batch, attention_mask=mask, return_type="logits",
                fwd_hooks=[(f"blocks.{start}.hook_resid_pre",
                            lambda x, hook: got.__setitem__("x", x.clone()))])
            resumed = forward_from_layer(model, got["x"], start, tokens=batch,
                                         attention_mask=mask)
        assert torch.equal(full, resumed), (arch, backend, start)


def test_probe_is_cached_and_says_false_for_look_alikes(tl_model):
    model = tl_model("llama-gqa", "hooked" if "hooked" in LOADABLE else "bridge")
    assert can_start_at_layer(model)
    assert tl_spec.resume._RESUME_PROBED[model] is True  # probed once, then read back
    assert not can_start_at_layer(object())


@pytest.mark.parametrize("backend", LOADABLE)
def test_sweep_with_prefix_reuse_equals_without(tl_model, monkeypatch, backend):
    model = _resuming(tl_model, "llama-gqa", backend)
    tok = tokenize(model, STANDARD_10, max_length=64)
    conds = [NoiseCondition(tuple(resolve_layers(r, 3)), s, seed, site=site, label=str(r))
             for site in ("attn_out", "z") for r in ("middle", "late", (1, 3), "all", (0, 2))
             for s in (0.0, 0.1) for seed in (42, 123)]
    kw = dict(stats=("correlation", "column_entropy"), loss=True, batch_size=4)
    for side in ("right", "left"):
        reused = run_sweep(model, tok, conds, padding_side=side, **kw)
        assert any(start > 0 for _, start, _ in reused.forward_plan)  # it did resume
        with monkeypatch.context() as m:
            m.setattr(sweep_mod, "can_start_at_layer", lambda model: False)
            whole = run_sweep(model, tok, conds, padding_side=side, **kw)
        assert all(start == 0 for _, start, _ in whole.forward_plan)
        for a, b in zip(reused.noised, whole.noised, strict=True):
            for key in a:
                np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("arch", ("llama-gqa", "gpt2"))
@pytest.mark.parametrize("backend", LOADABLE)
def test_importance_with_prefix_reuse_equals_without(tl_model, monkeypatch, arch, backend):
    model = _resuming(tl_model, arch, backend)
    reused = head_importance(model, TEXTS, ablations=("mean", "zero"), max_length=32)
    assert reused.settings["prefix_reuse"]
    monkeypatch.setattr(importance_mod, "can_start_at_layer", lambda model: False)
    whole = head_importance(model, TEXTS, ablations=("mean", "zero"), max_length=32)
    assert not whole.settings["prefix_reuse"]
    assert reused.clean_loss == whole.clean_loss
    np.testing.assert_allclose(reused.mean_ablation, whole.mean_ablation, rtol=0, atol=1e-9)
    np.testing.assert_allclose(reused.zero_ablation, whole.zero_ablation, rtol=0, atol=1e-9)
    assert np.abs(reused.zero_ablation).max() > 1e-4  # the ablations change the loss


@pytest.mark.parametrize("backend", LOADABLE)
def test_deconstruct_with_prefix_reuse_equals_without(tl_model, monkeypatch, backend):
    model = _resuming(tl_model, "llama-gqa", backend)
    kw = dict(variants=("uniform", "form"), placements=("hybrid:2", "single"), n_resamples=100,
              max_length=32)
    reused = tl_spec.deconstruct(model, TEXTS, **kw)
    monkeypatch.setattr(deconstruct_mod, "can_start_at_layer", lambda model: False)
    whole = tl_spec.deconstruct(model, TEXTS, **kw)
    assert reused.settings["prefix_reuse"] and not whole.settings["prefix_reuse"]
    for a, b in zip(reused.rows, whole.rows, strict=True):
        assert abs(a["delta_loss"] - b["delta_loss"]) <= 1e-9, (a["variant"], a["placement"])
        if a["si_kept"] is not None:
            assert abs(a["si_kept"] - b["si_kept"]) <= 1e-9


@pytest.mark.parametrize("method", ("pattern", "entropy_profile"))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", LOADABLE)
def test_si_stopping_early_equals_the_full_forward(tl_model, monkeypatch, arch, backend, method):
    model = tl_model(arch, backend)
    n_layers = int(model.cfg.n_layers)
    names = [name for name, _ in PatternStats(model, stats=("correlation",)).fwd_hooks]
    assert stop_hook(model, names) == f"blocks.{n_layers - 1}.hook_attn_out"
    early = tl_spec.specialization_index(model, STANDARD_10, method=method, batch_size=4)
    monkeypatch.setattr(tl_spec.running, "stop_hook", lambda model, names: None)
    full = tl_spec.specialization_index(model, STANDARD_10, method=method, batch_size=4)
    assert early.value == full.value
    for key in ("per_prompt", "per_prompt_heads", "entropies"):
        a, b = getattr(early, key), getattr(full, key)
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=key)


def test_stopped_forward_leaves_the_model_intact(tl_model):
    """A forward stopped by the hook leaves no state behind: the next full forward is unchanged."""
    for backend in LOADABLE:
        model = tl_model("llama-gqa", backend)
        tokens = model.to_tokens(STANDARD_10[0])
        with torch.inference_mode():
            before = model(tokens)
            tl_spec.specialization_index(model, STANDARD_10[:2])
            after = model(tokens)
        assert torch.equal(before, after), backend


@pytest.mark.parametrize("backend", LOADABLE)
def test_importance_refuses_a_nan_weight(tiny_checkpoints, backend):
    model = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)
    with torch.no_grad():
        block = model.blocks[1]
        weight = next(p for n, p in block.named_parameters() if "mlp" in n and p.ndim == 2)
        weight.view(-1)[0] = float("nan")
    with pytest.raises(TLSpecError, match=r"clean run .*non-finite at blocks\.1\.hook_resid_post"):
        head_importance(model, TEXTS, max_length=32)


@pytest.mark.parametrize("backend", LOADABLE)
def test_importance_names_the_first_head_whose_ablation_breaks(tiny_checkpoints, backend):
    """A model that turns a head's output into NaN only in the ablation passes (batch copies)."""
    model = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)
    n_rows = len(TEXTS)

    def poison(z, hook):
        if z.shape[0] > n_rows:  # an ablation pass: one batch copy per head
            z = z.clone()
            z.view(-1, n_rows, *z.shape[1:])[2] = float("nan")
        return z

    model.add_hook("blocks.1.attn.hook_z", poison, is_permanent=True)
    try:
        with pytest.raises(TLSpecError, match=r"zero-ablating head L0H2 gives a non-finite loss"):
            head_importance(model, TEXTS, ablations=("zero",), max_length=32, batch_size=8)
    finally:
        model.reset_hooks(including_permanent=True)
