"""Attention-variant hook points and the deconstruct study (seed 003).

Closed-form checks on real TransformerLens models: zero layers change nothing, no-mixing is the
identity, uniform rows are 1/(valid keys), softmax through the "form" path reproduces the model,
decoupled attention from the layer's own input reproduces it, padding does not matter, and the
static variant keeps a constructed previous-token head while changing content-dependent heads.
"""

from __future__ import annotations

import json
from importlib.metadata import version
import math

import pytest
import torch
from conftest import BACKENDS, HAS_HOOKED, LOADABLE

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments.deconstruct import deconstruct, expand_placements
from tl_spec.hooks.variants import VARIANTS, attention_variant, resolve_variant_layers, static_patterns
from tl_spec.metrics.patterns import entry_mask
from tl_spec.models import layer_windows
from tl_spec.tokens import pad_batch, pad_id

ARCHS = ("llama-gqa", "gpt2", "mistral-swa")
PROMPTS = ["The cat sat on the mat because it was warm.", "Dogs bark.",
           "A longer sentence about functions, lists and dictionaries in Python code here."]
REFERENCE = ["Return the number of items in a container, or raise an error when the container "
             "has no length at all.",
             "The module defines classes for reading and writing files on disk, with buffering "
             "and text decoding."] * 3


def _variant(model, name, layers="all"):
    kw = {"reference_texts": REFERENCE} if name == "static" else {}
    if name == "form":
        kw["form"] = "relu"
    return attention_variant(model, name, layers=layers, **kw)


def _run(model, variant, tokens, mask, capture=None):
    variant.attention_mask = mask
    hooks = list(variant.fwd_hooks) + (capture or [])
    with torch.inference_mode(), model.hooks(fwd_hooks=hooks):
        return model(tokens, attention_mask=mask, return_type="logits")


def _batch(model, side="right"):
    ids = [model.to_tokens(p)[0].tolist() for p in PROMPTS]
    return pad_batch(ids, pad_id=pad_id(model), padding_side=side)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_forms(tl_model, arch, backend):
    model = tl_model(arch, backend)
    tokens, mask = _batch(model)
    base = _run(model, _variant(model, "uniform", "none"), tokens, torch.ones_like(mask))
    for name in VARIANTS:  # applied to zero layers: nothing changes, bit for bit
        got = _run(model, _variant(model, name, "none"), tokens, torch.ones_like(mask))
        assert torch.equal(got, base), name
    seen: dict[int, torch.Tensor] = {}
    capture = [(f"blocks.{layer}.attn.hook_pattern",
                lambda x, hook, layer=layer: seen.__setitem__(layer, x.clone()))
               for layer in range(model.cfg.n_layers)]
    windows = layer_windows(model)
    for name in ("no_mixing", "uniform"):
        _run(model, _variant(model, name), tokens, torch.ones_like(mask), capture)
        for layer, pattern in seen.items():
            valid = entry_mask(mask.bool(), window=windows[layer])
            real = mask.bool()[:, None, :, None].expand_as(pattern)
            if name == "no_mixing":
                want = torch.eye(pattern.shape[-1]).expand_as(pattern) * valid[:, None]
            else:
                want = (valid / valid.sum(-1, keepdim=True).clamp_min(1))[:, None].expand_as(pattern)
            torch.testing.assert_close(pattern[real].float(), want[real].float(), atol=1e-6, rtol=0)
    # softmax through the form path, and decoupled from the layer's own input, reproduce the model
    for variant in (attention_variant(model, "form", form="softmax"),
                    attention_variant(model, "decoupled", layers=[1], source_layer=1)):
        got = _run(model, variant, tokens, torch.ones_like(mask))
        torch.testing.assert_close(got, base, atol=1e-6, rtol=0)
    changed = _run(model, attention_variant(model, "form", form="sigmoid"), tokens,
                   torch.ones_like(mask))
    assert (changed - base).abs().max() > 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_invariance_for_every_variant(tl_model, backend):
    model = tl_model("llama-gqa", backend)
    static = static_patterns(model, REFERENCE)
    for name in VARIANTS:
        kw = {"static": static} if name == "static" else {}
        variant = attention_variant(model, name, layers="hybrid:2", **kw)
        singles = []
        for p in PROMPTS:
            t = model.to_tokens(p)
            singles.append(_run(model, variant, t, torch.ones_like(t))[0])
        for side in ("right", "left"):
            tokens, mask = _batch(model, side)
            run_mask = torch.ones_like(mask) if side == "right" else mask
            variant.attention_mask = mask
            with torch.inference_mode(), model.hooks(fwd_hooks=variant.fwd_hooks):
                logits = model(tokens, attention_mask=run_mask, return_type="logits")
            for b, single in enumerate(singles):
                real = mask[b].bool()
                torch.testing.assert_close(logits[b][real], single, atol=2e-5, rtol=0,
                                           msg=f"{name}, {side} padding, prompt {b}")


def _previous_token_model():
    """A real HookedTransformer whose layer-0 head 0 attends to the previous token by position."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4,
                                  d_vocab=60, attn_only=True, normalization_type=None,
                                  positional_embedding_type="standard", seed=0)
    model = HookedTransformer(cfg)
    omega, scale = 2 * math.pi / 128, 2e4
    t = torch.arange(64, dtype=torch.float32)
    with torch.no_grad():
        model.W_E.mul_(5.0)  # content: large, and kept out of the two positional dimensions
        model.W_E[:, :2] = 0
        model.W_pos.zero_()
        model.W_pos[:, 0], model.W_pos[:, 1] = torch.cos(omega * t), torch.sin(omega * t)
        w_q = torch.zeros(32, 8)
        w_q[0, 0] = w_q[1, 1] = math.sqrt(scale)
        rot = torch.tensor([[math.cos(omega), math.sin(omega)], [-math.sin(omega), math.cos(omega)]])
        w_k = torch.zeros(32, 8)
        w_k[:2, :2] = rot * math.sqrt(scale)  # k(t) = q-direction of position t + 1
        model.blocks[0].attn.W_Q[0] = w_q
        model.blocks[0].attn.W_K[0] = w_k
        model.blocks[0].attn.b_Q[0] = 0
        model.blocks[0].attn.b_K[0] = 0
    return model


@pytest.mark.skipif(not HAS_HOOKED, reason="builds a LayerNorm-free HookedTransformer (TL 3.x); "
                    "the static variant itself is backend-agnostic and tested under TL 3.9 in CI")
def test_static_keeps_positional_heads_and_changes_content_heads():
    model = _previous_token_model()
    gen = torch.Generator().manual_seed(0)
    a = [torch.randint(1, 60, (40,), generator=gen) for _ in range(6)]
    b = torch.randint(1, 60, (1, 40), generator=gen)
    own: dict[int, torch.Tensor] = {}
    grab = [("blocks.0.attn.hook_pattern", lambda x, hook: own.__setitem__(0, x.clone()))]
    with torch.inference_mode(), model.hooks(fwd_hooks=grab):
        model(b)
    prev = own[0][0, 0].diagonal(offset=-1)
    assert prev.min() > 0.99  # the constructed head is a previous-token head on B
    static = static_patterns_ids(model, a)
    variant = attention_variant(model, "static", layers=[0], static=static)
    got: dict[int, torch.Tensor] = {}
    grab = [("blocks.0.attn.hook_pattern", lambda x, hook: got.__setitem__(0, x.clone()))]
    with torch.inference_mode(), model.hooks(fwd_hooks=variant.fwd_hooks + grab):
        model(b)
    torch.testing.assert_close(got[0][0, 0], own[0][0, 0], atol=1e-2, rtol=0)
    assert got[0][0, 0].diagonal(offset=-1).min() > 0.99
    for head in (1, 2, 3):  # content-dependent heads: the static pattern is not B's own
        assert (got[0][0, head] - own[0][0, head]).abs().max() > 0.05, head


def static_patterns_ids(model, sequences):
    """static_patterns on token sequences (this toy model has no tokenizer)."""
    from tl_spec.hooks.capture import PatternStats

    stats = PatternStats(model, stats=("mean_pattern",), region="full", max_positions=40)
    with torch.inference_mode(), model.hooks(fwd_hooks=stats.fwd_hooks):
        for seq in sequences:
            model(seq[None])
    raw = stats.collect()
    return raw["mean_pattern_sum"] / raw["mean_pattern_count"]


def test_deconstruct_study_and_prefix_reuse(tiny_checkpoints, tmp_path):
    texts = PROMPTS + ["Values are returned as tuples of integers.", "Errors are raised early."]
    results = {be: deconstruct(tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=be), texts,
                               variants=("uniform", "decoupled", "form"),
                               placements=("all", "hybrid:2", "single"), source_layer=0,
                               n_resamples=200)
               for be in LOADABLE}
    bridge = results["bridge"]
    # the bridge resumes mid-way from TransformerLens 4 on (resume.probe_start_at_layer)
    assert bridge.settings["prefix_reuse"] == (int(version("transformer-lens").split(".")[0]) >= 4)
    assert len(bridge.rows) == 3 * (2 + 3)
    if HAS_HOOKED:
        hooked = results["hooked"]
        assert hooked.settings["prefix_reuse"]
        for h, b in zip(hooked.rows, bridge.rows, strict=True):  # start_at_layer == full forward
            assert h["delta_loss"] == pytest.approx(b["delta_loss"], abs=1e-5), (h["variant"],
                                                                                  h["placement"])
            if h["si_kept"] is not None:
                assert h["si_kept"] == pytest.approx(b["si_kept"], abs=1e-6)
    hooked = results.get("hooked", bridge)
    rows = {(r["variant"], r["placement"]): r for r in hooked.rows}
    assert rows[("decoupled", "single:0")]["delta_loss"] == 0.0  # source = its own input
    assert rows[("uniform", "all")]["si_kept"] is None
    assert rows[("uniform", "hybrid:2")]["kept_layers"] == [1]
    # layers before the changed one are untouched, so their SI is the clean SI
    assert rows[("uniform", "single:2")]["kept_layers"] == [0, 1]
    assert rows[("uniform", "single:2")]["delta_si_kept"] == pytest.approx(0.0, abs=1e-12)
    assert rows[("uniform", "single:0")]["delta_si_kept"] != 0.0
    hooked.to_json(tmp_path / "d.json")
    back = tl_spec.load_result(tmp_path / "d.json")
    assert back.rows[0]["interval"].low == hooked.rows[0]["interval"].low
    assert len(back.to_frame()) == len(hooked.rows)
    assert "hybrid:2" in hooked.table()
    page = tl_spec.viz.write_report([back], tmp_path / "report").read_text()
    assert "Deconstructing attention" in page and "single:2" in page


def test_bad_input(tl_model):
    model = tl_model("llama-gqa", "bridge")
    with pytest.raises(TLSpecError, match="unknown attention variant"):
        attention_variant(model, "linear")
    with pytest.raises(TLSpecError, match="out of range"):
        attention_variant(model, "uniform", layers=[7])
    with pytest.raises(TLSpecError, match="computed after them"):
        attention_variant(model, "decoupled", layers=[0, 1], source_layer=1)
    with pytest.raises(TLSpecError, match="needs mean patterns"):
        attention_variant(model, "static")
    with pytest.raises(TLSpecError, match="hybrid:k"):
        resolve_variant_layers("hybrid:1", 4)
    with pytest.raises(TLSpecError, match="unknown attention variant"):
        deconstruct(model, PROMPTS, variants=("softmax",))
    with pytest.raises(TLSpecError, match="changes no layer"):
        expand_placements(["none"], 3)
    with pytest.raises(TLSpecError, match="computed after them"):
        deconstruct(model, PROMPTS, variants=("decoupled",), placements=("all",), source_layer=2)


@pytest.mark.parametrize("arch", ["llama-gqa", "mistral-swa"])
def test_trained_variant_loads_as_it_was_trained(tiny_checkpoints, tmp_path, arch):
    """The variant as trained (inside the HF model) equals the variant load_model re-attaches."""
    import shutil

    from transformers import AutoModelForCausalLM

    from tl_spec.zoo.variant_models import FILE, VariantSpec, install

    tokens = torch.tensor([[1, 5, 9, 33, 7, 100, 42, 8, 9, 10, 11, 12]])  # > the window of 8
    specs = [VariantSpec("no_mixing", [0, 2]), VariantSpec("uniform", [1]),
             VariantSpec("form", [0, 1, 2], form="sigmoid"), VariantSpec("decoupled", [1, 2])]
    for spec in specs:
        hf = AutoModelForCausalLM.from_pretrained(tiny_checkpoints[arch], attn_implementation="eager")
        with torch.no_grad():
            standard = hf(tokens).logits
            install(hf, spec)
            trained = hf(tokens).logits
        assert (trained - standard).abs().max() > 1e-3, spec
        path = tmp_path / f"{arch}-{spec.variant}"
        shutil.copytree(tiny_checkpoints[arch], path)
        (path / FILE).write_text(spec.to_json())
        for backend in BACKENDS:
            try:
                model = tl_spec.load_model(path, backend=backend)
            except TLSpecError:
                continue  # TL 4 has no HookedTransformer (asserted in test_api)
            assert model.tl_spec_variant == spec
            with torch.no_grad():
                got = model(tokens)
                with model.hooks(fwd_hooks=[]):  # users' own hook contexts keep the variant
                    again = model(tokens)
            torch.testing.assert_close(got, trained, atol=1e-6, rtol=0)
            torch.testing.assert_close(again, trained, atol=1e-6, rtol=0)


def test_zoo_variant_models_build_and_load_on_both_backends(tmp_path):
    from tl_spec import zoo

    zoo.build("variants", out=tmp_path, only=["var-form-hybrid2-s0", "var-standard-s0"],
              max_steps=3, progress=False)
    marker = json.loads((tmp_path / "var-form-hybrid2-s0" / "tl_spec_zoo.json").read_text())
    assert marker["recipe"]["config"]["variant"]["layers"] == [0, 2]
    losses = []
    for backend in LOADABLE:
        model = tl_spec.load_model(tmp_path / "var-form-hybrid2-s0", backend=backend)
        assert model.tl_spec_variant.variant == "form"
        with torch.no_grad():
            losses.append(float(model(model.to_tokens("Return a list."), return_type="loss")))
    assert losses[0] == pytest.approx(losses[-1], abs=1e-5)
    standard = [tl_spec.load_model(tmp_path / "var-standard-s0")]
    form = [tl_spec.load_model(tmp_path / "var-form-hybrid2-s0")]
    study = tl_spec.trained_variants_study(standard, {("form", "hybrid2"): form}, texts=PROMPTS,
                                           n_resamples=200)
    row = study.rows[0]
    assert row["layers"] == [0, 2] and row["n_seeds"] == 1
    assert row["delta_loss"] == pytest.approx(row["loss"] - study.standard_loss, abs=1e-9)
    study.to_json(tmp_path / "v.json")
    assert tl_spec.load_result(tmp_path / "v.json").rows[0]["interval"].high == row["interval"].high
    with pytest.raises(TLSpecError, match="give both"):
        tl_spec.trained_variants_study(standard)


def test_variant_models_in_null_copies_and_ablations(tmp_path):
    """A trained-in decoupled variant: random-init copies get their own hooks, and ablations do
    not start past the layer the variant reads (no prefix reuse), so they equal brute force."""
    from tl_spec import zoo
    from ablation_reference import zero_ablation_loss_change

    from tl_spec.experiments.importance import head_importance
    from tl_spec.models import random_init_like
    from tl_spec.resume import can_start_at_layer

    zoo.build("variants", out=tmp_path, only=["var-decoupled-hybrid2-s0"], max_steps=3,
              progress=False)
    for backend in LOADABLE:
        model = tl_spec.load_model(tmp_path / "var-decoupled-hybrid2-s0", backend=backend)
        assert not can_start_at_layer(model)
        tokens = model.to_tokens(PROMPTS[0])
        null = random_init_like(model, 3)
        with torch.no_grad():
            before = null(tokens)
            model.W_Q  # noqa: B018  (the stacked view exists on both backends)
            for p in model.parameters():
                p.mul_(0.5)
            after = null(tokens)
        assert torch.equal(before, after), backend  # the copy no longer reads the original
        imp = head_importance(null, PROMPTS[:2], ablations=("zero",))
        layer, head = 3, 1
        want = zero_ablation_loss_change(null, PROMPTS[:2], layer=layer, head=head,
                                         clean_loss=imp.clean_loss)
        assert imp.zero_ablation[layer, head] == pytest.approx(want, abs=1e-6), backend
