"""The attention-variant API: token-id inputs, options objects, the result protocol, variant
checkpoints through ``tl_spec.load_model``, and the import layering of the modules involved.

Token routes are compared with the string routes on real tiny TransformerLens models (1e-9),
also on a copy of the model without a tokenizer.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LOADABLE

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments.deconstruct import DeconstructResult, deconstruct, expand_placements
from tl_spec.experiments.variant_study import VariantStudyResult, text_losses, trained_variants_study
from tl_spec.hooks.base import HookSet
from tl_spec.hooks.variants import AttentionVariant, attention_variant, static_patterns
from tl_spec.models import random_init_like
from tl_spec.options.deconstruct import DeconstructOptions, VariantStudyOptions
from tl_spec.results import load_result
from tl_spec.tokens import pad_batch
from tl_spec.zoo.variant_models import FILE, VariantSpec

PROMPTS = ["The cat sat on the mat because it was warm.", "Dogs bark.",
           "A longer sentence about functions, lists and dictionaries in Python code here.",
           "Values are returned as tuples of integers."]
REFERENCE = ["Return the number of items in a container, or raise an error when the container "
             "has no length at all.",
             "The module defines classes for reading and writing files on disk, with buffering "
             "and text decoding."] * 2
SRC = Path(tl_spec.__file__).resolve().parent
# a small but complete study: every variant kind that needs no training, single placements
OPTS = dict(variants=("uniform", "static", "form", "decoupled"), placements=("all", "single"),
            n_resamples=200)


def _token_batch(model, texts, side):
    rows = [model.to_tokens(t)[0].tolist() for t in texts]
    return pad_batch(rows, pad_id=7, padding_side=side)  # an arbitrary (masked) pad id


def _no_tokenizer(model):
    bare = copy.copy(model)
    bare.tokenizer = None
    return bare


def _assert_same(a: DeconstructResult, b: DeconstructResult, tol: float = 1e-9) -> None:
    assert a.clean_loss == pytest.approx(b.clean_loss, abs=tol)
    np.testing.assert_allclose(a.clean_si, b.clean_si, atol=tol, rtol=0)
    np.testing.assert_allclose(a.clean_text_loss, b.clean_text_loss, atol=tol, rtol=0)
    assert [(r["variant"], r["placement"]) for r in a.rows] == \
        [(r["variant"], r["placement"]) for r in b.rows]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        for key in ("loss", "delta_loss", "ppl_ratio"):
            assert ra[key] == pytest.approx(rb[key], abs=tol), (ra["variant"], ra["placement"], key)
        for key in ("si_kept", "delta_si_kept"):
            if ra[key] is None:
                assert rb[key] is None
            else:
                assert ra[key] == pytest.approx(rb[key], abs=tol), (ra["variant"], key)
        assert ra["interval"].low == pytest.approx(rb["interval"].low, abs=tol)
        assert ra["interval"].high == pytest.approx(rb["interval"].high, abs=tol)


@pytest.fixture(scope="module")
def text_result(tl_model):
    model = tl_model("llama-gqa", LOADABLE[-1])
    return deconstruct(model, PROMPTS, reference_texts=REFERENCE, **OPTS)


@pytest.mark.parametrize("side", ["right", "left"])
def test_deconstruct_token_ids_equal_the_string_route(tl_model, text_result, side):
    model = tl_model("llama-gqa", LOADABLE[-1])
    tokens, mask = _token_batch(model, PROMPTS, side)
    reference = [model.to_tokens(t)[0] for t in REFERENCE]
    got = deconstruct(model, tokens, attention_mask=mask, reference_texts=reference, **OPTS)
    _assert_same(got, text_result)
    assert got.settings["input"] == "token ids" and text_result.settings["input"] == "text"
    assert len(text_result.rows) == 4 * (1 + int(model.cfg.n_layers))
    # no tokenizer at all: the ids are all it needs
    bare = _no_tokenizer(model)
    _assert_same(deconstruct(bare, tokens, attention_mask=mask, reference_texts=reference,
                             **OPTS), text_result)
    with pytest.raises(TLSpecError, match="need the model's tokenizer"):
        deconstruct(bare, tokens, attention_mask=mask, variants=("static",), n_resamples=200)


def test_static_patterns_and_text_losses_take_token_ids(tl_model):
    model = tl_model("llama-gqa", "bridge")
    tokens, mask = _token_batch(model, REFERENCE, "left")
    want = static_patterns(model, REFERENCE)
    got = static_patterns(_no_tokenizer(model), tokens, attention_mask=mask)
    assert got.shape == want.shape and got.shape[:2] == (model.cfg.n_layers, model.cfg.n_heads)
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)
    rows_sum = want[..., : min(len(model.to_tokens(t)[0]) for t in REFERENCE), :].sum(-1)
    np.testing.assert_allclose(rows_sum, 1.0, atol=1e-6)  # mean of attention rows: still rows
    tokens, mask = _token_batch(model, PROMPTS, "right")
    np.testing.assert_allclose(text_losses(_no_tokenizer(model), tokens, attention_mask=mask),
                               text_losses(model, PROMPTS), atol=1e-9, rtol=0)


def _check_protocol(result, tmp_path: Path, name: str) -> None:
    line = repr(result)
    assert "\n" not in line and len(line) < 400, line
    page = result._repr_html_()
    assert "<table" in page and len(page.encode()) < 200_000
    text = result.summary()
    assert text == str(result) == result.table() and len(text.splitlines()) >= 3
    frame = result.to_frame()
    assert len(frame) > 0 and {"variant", "placement", "delta_loss", "ci_low"} <= set(frame.columns)
    assert not frame["model" if "model" in frame.columns else "models"].isna().any()
    path = tmp_path / f"{name}.json"
    result.to_json(path)
    back = load_result(path)
    assert type(back) is type(result)
    assert repr(back) == line
    assert back.rows[0]["interval"] == result.rows[0]["interval"]
    assert back.to_frame().equals(frame)
    assert json.loads(path.read_text())["kind"] == result.kind


def test_deconstruct_result_protocol(text_result, tmp_path):
    r = text_result
    head = r.headline()
    worst = max(r.rows, key=lambda x: x["delta_loss"])
    assert head["conditions"] == len(r.rows) and head["texts"] == len(PROMPTS)
    assert head["largest Δloss"] == worst["delta_loss"] and head["CI"] == worst["interval"]
    assert r.model_names() == ["llama-gqa"]
    assert repr(r).startswith("DeconstructResult(llama-gqa, clean loss=")
    frame = r.to_frame()
    assert len(frame) == len(r.rows)
    assert set(frame["placement"]) == {"all", *(f"single:{i}" for i in range(r.clean_si.size))}
    assert frame.loc[frame["placement"] == "single:0", "layers"].tolist() == ["0"] * 4
    np.testing.assert_allclose(frame["delta_loss"], [x["delta_loss"] for x in r.rows])
    assert "single:1" in r.summary()
    _check_protocol(r, tmp_path, "deconstruct")


def _variant_checkpoint(src: Path, dst: Path, spec: VariantSpec) -> Path:
    shutil.copytree(src, dst)
    (dst / FILE).write_text(spec.to_json())
    return dst


def test_load_model_attaches_variants_and_the_study_protocol(tiny_checkpoints, tmp_path):
    spec = VariantSpec("uniform", [1])
    path = _variant_checkpoint(tiny_checkpoints["llama-gqa"], tmp_path / "uniform-1", spec)
    tokens = torch.tensor([[1, 5, 9, 33, 7, 100, 42, 8, 9, 10]])
    for backend in LOADABLE:
        standard = tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend=backend)
        model = tl_spec.load_model(path, backend=backend)
        assert model.tl_spec_variant == spec and getattr(standard, "tl_spec_variant", None) is None
        hooks = attention_variant(standard, "uniform", layers=[1])
        with torch.no_grad():
            got, plain = model(tokens), standard(tokens)
            with standard.hooks(fwd_hooks=hooks.fwd_hooks):
                want = standard(tokens)
        assert (got - plain).abs().max() > 1e-3  # the variant is attached ...
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)  # ... and is exactly uniform
        null, null_std = random_init_like(model, 5), random_init_like(standard, 5)
        assert null.tl_spec_variant == spec
        with torch.no_grad():
            got = null(tokens)
            with null_std.hooks(fwd_hooks=attention_variant(null_std, "uniform", layers=[1])
                                .fwd_hooks):
                want = null_std(tokens)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    standard = [tl_spec.load_model(tiny_checkpoints["llama-gqa"])]
    uniform = [tl_spec.load_model(path)]
    study = trained_variants_study(standard, {("uniform", "layer1"): uniform}, texts=PROMPTS,
                                   n_resamples=200)
    assert isinstance(study, VariantStudyResult)
    row = study.rows[0]
    assert row["layers"] == [1] and row["models"] == [str(path)]
    want = text_losses(uniform[0], PROMPTS).mean() - text_losses(standard[0], PROMPTS).mean()
    assert row["delta_loss"] == pytest.approx(want, abs=1e-12)
    assert study.model_names() == ["llama-gqa", "uniform-1"]
    frame = study.to_frame()
    assert frame["variant"].tolist() == ["standard", "uniform"]
    assert frame["models"].tolist() == ["llama-gqa", "uniform-1"]
    assert study.headline()["largest Δloss"] == row["delta_loss"]
    # token ids give the same study
    tokens, mask = _token_batch(standard[0], PROMPTS, "left")
    again = trained_variants_study(standard, {("uniform", "layer1"): uniform}, texts=tokens,
                                   attention_mask=mask, n_resamples=200)
    assert again.rows[0]["delta_loss"] == pytest.approx(row["delta_loss"], abs=1e-9)
    assert again.rows[0]["interval"].low == pytest.approx(row["interval"].low, abs=1e-9)
    _check_protocol(study, tmp_path, "variant_study")


class _Untouchable:
    """A 'model' that fails the test if anything reads it: options must be refused first."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was touched ({name}) before the options were checked")


@pytest.mark.parametrize("bad, match", [
    ({"placements": ("hybrid:0",)}, "hybrid:k"),
    ({"placements": ("hybrid:x",)}, "hybrid:k"),
    ({"placements": ("none",)}, "changes no layer"),
    ({"placements": ("everywhere",)}, "unknown placement"),
    ({"placements": ()}, "placements is empty"),
    ({"variants": ("softmax",)}, "unknown attention variant"),
    ({"variants": ()}, "unknown attention variant"),
    ({"form": "tanh"}, "unknown form"),
    ({"n_resamples": 50}, "n_resamples must be an integer >= 100"),
    ({"confidence": 1.0}, "strictly between 0 and 1"),
    ({"source_layer": -1}, "source_layer must be an integer >= 0"),
    ({"n_resample": 500}, "did you mean 'n_resamples'"),
])
def test_options_are_refused_before_any_model_work(bad, match):
    with pytest.raises(TLSpecError, match=match):
        deconstruct(_Untouchable(), PROMPTS, **bad)
    if "n_resample" not in bad:
        with pytest.raises(TLSpecError, match=match):
            DeconstructOptions(**bad)


def test_variant_study_options_are_refused_before_any_model_work():
    models = [_Untouchable()]
    for bad, match in (({"confidence": 1.5}, "strictly between"),
                       ({"batch_size": 0}, "batch_size must be an integer >= 1"),
                       ({"variants": ("uniform",)}, "unknown variant study option")):
        with pytest.raises(TLSpecError, match=match):
            trained_variants_study(models, {("uniform", "all"): models}, texts=PROMPTS, **bad)


def test_options_defaults_placements_and_flags():
    d = DeconstructOptions()
    assert (d.variants, d.placements, d.form, d.source_layer) == (
        ("no_mixing", "uniform", "static", "form", "decoupled"), ("all", "hybrid:2", "single"),
        "relu", 0)
    assert (d.max_length, d.batch_size, d.confidence, d.n_resamples, d.seed) == (128, 8, 0.95,
                                                                                2000, 0)
    assert VariantStudyOptions().to_dict() == {"max_length": 128, "batch_size": 16,
                                               "confidence": 0.95, "n_resamples": 2000, "seed": 0}
    # list / range placements become their labels, resolved the same way as before
    o = DeconstructOptions(placements=[[2, 0], (1, 3), "0+2", "late", "1:3"])
    assert o.placements == ("0,2", "1,2", "0+2", "late", "1:3")
    assert expand_placements(o.placements, 4) == [("0,2", [0, 2]), ("1,2", [1, 2]),
                                                  ("0+2", [0, 2]), ("late", [3]),
                                                  ("1:3", [1, 2])]
    parser = argparse.ArgumentParser()
    DeconstructOptions.add_arguments(parser)
    args = parser.parse_args(["--variants", "uniform,form", "--placements", "all,hybrid:3",
                              "--form", "sigmoid"])
    got = DeconstructOptions.from_namespace(args)
    assert (got.variants, got.placements, got.form, got.n_resamples) == (
        ("uniform", "form"), ("all", "hybrid:3"), "sigmoid", 2000)
    with pytest.raises(TLSpecError, match="hybrid:k"):
        DeconstructOptions.from_namespace(parser.parse_args(["--placements", "hybrid:1"]))


def test_attention_variant_is_a_hookset(tl_model):
    model = tl_model("llama-gqa", "bridge")
    v = AttentionVariant(model, "form", layers="0+2", form="sigmoid")
    assert isinstance(v, HookSet)
    tokens = model.to_tokens(PROMPTS[0])
    assert v.bind(tokens, torch.ones_like(tokens)) is v and v.attention_mask is not None
    assert [name for name, _ in v] == ["blocks.0.attn.hook_attn_scores",
                                       "blocks.0.attn.hook_pattern",
                                       "blocks.2.attn.hook_attn_scores",
                                       "blocks.2.attn.hook_pattern"]
    d = AttentionVariant(model, "decoupled", layers=[1, 2], source_layer=1)
    assert [name for name, _ in d] == ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_q",
                                       "blocks.1.attn.hook_k", "blocks.2.attn.hook_q",
                                       "blocks.2.attn.hook_k"]


def _imports(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (function-level imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_import_layering():
    def under(mods: set[str], prefix: str) -> set[str]:
        return {m for m in mods if m == prefix or m.startswith(prefix + ".")}

    models = _imports(SRC / "models.py")
    assert not under(models, "tl_spec.zoo") and not under(models, "tl_spec.hooks"), models
    variants = _imports(SRC / "hooks" / "variants.py")
    assert not under(variants, "tl_spec.experiments") and not under(variants, "tl_spec.zoo")
    assert not under(_imports(SRC / "running.py"), "tl_spec.hooks")
    for name in ("registry", "train", "evidence", "variant_models"):
        mods = _imports(SRC / "zoo" / f"{name}.py")
        assert "tl_spec.zoo" not in mods, name  # submodules, never the package (its __init__)
        if name != "registry":
            assert not under(mods, "tl_spec.zoo.registry"), name
    options = _imports(SRC / "options" / "deconstruct.py")  # options sit below models and hooks
    assert not {m for m in options if m.startswith(("tl_spec.models", "tl_spec.hooks",
                                                     "tl_spec.experiments"))}, options
    assert not under(_imports(SRC / "experiments" / "variant_study.py"), "tl_spec.zoo")
