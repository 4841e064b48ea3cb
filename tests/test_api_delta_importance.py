"""ΔSI and head importance through the one API: token-id prompts (padded either side, no tokenizer)
give the numbers of the text route, the result protocol (repr, HTML, summary, frame, JSON), and
options checked by name and value before the model is touched."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import tl_spec
from tl_spec import TLSpecError
from tl_spec.experiments.delta import check_stats_options, delta_from_results
from tl_spec.experiments.importance import head_importance
from tl_spec.names import hook_name
from tl_spec.options import SIOptions, StatsOptions
from tl_spec.options.importance import ImportanceOptions
from tl_spec.prompts import STANDARD_10
from tl_spec.results import load_result
from tl_spec.zoo.tiny import build_random_checkpoint, build_twin_with_shared_heads

from conftest import LOADABLE

CHANGED = (0, 2)  # layers whose heads 1-3 receive head 0's query/key weights
N_RESAMPLES = 1000
TEXTS = tuple(STANDARD_10[:5])
TOL = 1e-9


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[str, tuple[Any, Any]]:
    """``{backend: (base, tuned)}``: a 4-layer MHA model and its twin with shared heads."""
    root = tmp_path_factory.mktemp("api_twins")
    base = build_random_checkpoint(root / "base", arch="llama-mha", num_hidden_layers=4)
    tuned = build_twin_with_shared_heads(base, root / "tuned", layers=CHANGED, heads=(1, 2, 3))
    return {b: (tl_spec.load_model(base, backend=b), tl_spec.load_model(tuned, backend=b))
            for b in LOADABLE}


@pytest.fixture(scope="module")
def text_delta(twins) -> dict[str, Any]:
    """The text route's ΔSI per backend (the reference of the token route)."""
    return {b: tl_spec.delta_si(*pair, STANDARD_10, n_resamples=N_RESAMPLES)
            for b, pair in twins.items()}


@pytest.fixture(scope="module")
def text_importance(twins) -> dict[str, Any]:
    return {b: head_importance(pair[0], TEXTS, batch_size=2, heads_per_pass=3)
            for b, pair in twins.items()}


def padded(model: Any, texts: Any, side: str, pad: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Each prompt's own ``model.to_tokens`` row, padded on ``side`` with ``pad`` into one tensor."""
    rows = [model.to_tokens(t)[0] for t in texts]
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        tokens[i, cols], mask[i, cols] = r, 1
    assert 0 < int(mask.sum()) < mask.numel()  # ragged: some rows are padded
    return tokens, mask


@contextlib.contextmanager
def without_tokenizer(*models: Any) -> Iterator[None]:
    """The models with ``tokenizer = None`` inside the block (restored after)."""
    saved = [m.tokenizer for m in models]
    try:
        for m in models:
            m.tokenizer = None
        yield
    finally:
        for m, tok in zip(models, saved):
            m.tokenizer = tok


@contextlib.contextmanager
def count_forwards(model: Any) -> Iterator[list[int]]:
    """Counts the forward passes that reach layer 0 while the block runs."""
    calls = [0]

    def hook(x: torch.Tensor, *, hook: Any = None) -> None:
        calls[0] += 1

    with model.hooks(fwd_hooks=[(hook_name("resid_pre", 0), hook)]):
        yield calls


class Untouchable:
    """A model argument that fails on any use: options must be refused before the model is read."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the model was used ({name}) before the options were checked")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model ran before the options were checked")


def close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                               rtol=0, atol=TOL)


# ---------------------------------------------------------------- token ids = text


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("backend", LOADABLE)
def test_delta_from_token_ids_without_tokenizer_equals_text(twins, text_delta, backend, side):
    base, tuned = twins[backend]
    ref = text_delta[backend]
    tokens, mask = padded(base, STANDARD_10, side)
    with without_tokenizer(base, tuned):
        with pytest.raises(Exception, match="tokenizer"):  # the text route needs one
            tl_spec.delta_si(base, tuned, STANDARD_10, n_resamples=N_RESAMPLES)
        d = tl_spec.delta_si(base, tuned, tokens, attention_mask=mask, n_resamples=N_RESAMPLES)
    assert d.base.tokens == ref.base.tokens and d.tuned.tokens == ref.tuned.tokens
    close(d.delta_pct, ref.delta_pct)
    close(d.per_layer_delta_pct, ref.per_layer_delta_pct)
    close(d.per_head_delta, ref.per_head_delta)
    close([d.interval.low, d.interval.high], [ref.interval.low, ref.interval.high])
    close([[i.low, i.high] for i in d.layer_intervals],
          [[i.low, i.high] for i in ref.layer_intervals])
    close(d.pvalue, ref.pvalue)
    assert d.changed_layers == ref.changed_layers == list(CHANGED)
    assert d.settings["input"] == "token ids" and ref.settings["input"] == "text"
    prompts_t, prompts_s = d.provenance["base"]["prompts"], ref.provenance["base"]["prompts"]
    assert prompts_t["source"] == "token ids"
    assert prompts_t["token_ids_sha256"] == prompts_s["token_ids_sha256"]


def test_delta_from_a_list_of_token_rows_equals_text(twins, text_delta):
    base, tuned = twins["bridge"]
    rows = [base.to_tokens(p)[0] for p in STANDARD_10]
    d = tl_spec.delta_si(base, tuned, rows, n_resamples=N_RESAMPLES)
    ref = text_delta["bridge"]
    close(d.delta_pct, ref.delta_pct)
    close([d.interval.low, d.interval.high], [ref.interval.low, ref.interval.high])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("backend", LOADABLE)
def test_importance_from_token_ids_without_tokenizer_equals_text(twins, text_importance,
                                                                  backend, side):
    model = twins[backend][0]
    ref = text_importance[backend]
    tokens, mask = padded(model, TEXTS, side)
    with without_tokenizer(model):
        imp = head_importance(model, tokens, attention_mask=mask, batch_size=2, heads_per_pass=3)
    assert imp.n_tokens == ref.n_tokens
    close(imp.clean_loss, ref.clean_loss)
    close(imp.mean_ablation, ref.mean_ablation)
    close(imp.zero_ablation, ref.zero_ablation)
    assert np.abs(ref.mean_ablation).max() > 1e-4  # the comparison is not between zeros
    assert imp.settings["input"] == "token ids"
    assert imp.provenance["prompts"]["token_ids_sha256"] == \
        ref.provenance["prompts"]["token_ids_sha256"]


# ---------------------------------------------------------------- options


def test_delta_options_objects_equal_keywords(twins):
    base, tuned = twins["bridge"]
    by_kw = tl_spec.delta_si(base, tuned, STANDARD_10, method="entropy_profile",
                             n_resamples=2000, max_length=120)
    by_obj = tl_spec.delta_si(base, tuned, STANDARD_10,
                              si_options=SIOptions(method="entropy_profile", max_length=32),
                              stats=StatsOptions(n_resamples=500), n_resamples=2000,
                              max_length=120)  # keywords override the objects' fields
    assert by_kw.settings["n_resamples"] == by_obj.settings["n_resamples"] == 2000
    assert by_obj.settings["si_options"]["max_length"] == 120
    assert by_kw.delta_pct == by_obj.delta_pct
    assert (by_kw.interval.low, by_kw.interval.high) == (by_obj.interval.low, by_obj.interval.high)
    again = delta_from_results(by_kw.base, by_kw.tuned, stats=StatsOptions(n_resamples=2000))
    assert (again.interval.low, again.pvalue) == (by_kw.interval.low, by_kw.pvalue)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_resample": 1000}, r"unknown option 'n_resample' \(did you mean 'n_resamples'\?\)"),
        ({"methd": "pattern"}, r"unknown option 'methd' \(did you mean 'method'\?\)"),
        ({"n_resamples": 50}, "n_resamples must be an integer >= 100, got 50"),
        ({"confidence": 1.0}, "confidence must be strictly between 0 and 1"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"aggregate": "mean_pattern"}, "needs aggregate='prompt'"),
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"si_options": StatsOptions()}, "expected SIOptions, got StatsOptions"),
    ],
)
def test_delta_bad_option_before_the_model_is_touched(kwargs, message):
    with pytest.raises(TLSpecError, match=message):
        tl_spec.delta_si(Untouchable(), Untouchable(), STANDARD_10, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads_per_pas": 2}, r"unknown importance option 'heads_per_pas' \(did you mean "
                               r"'heads_per_pass'\?\)"),
        ({"ablations": ("mean", "random")}, "unknown ablation 'random'"),
        ({"ablations": ()}, "ablations is empty"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"heads_per_pass": 0}, "heads_per_pass must be an integer >= 1, got 0"),
        ({"max_length": 1.5}, "max_length must be an integer"),
    ],
)
def test_importance_bad_option_before_the_model_is_touched(kwargs, message):
    with pytest.raises(TLSpecError, match=message):
        head_importance(Untouchable(), TEXTS, **kwargs)


def test_bad_token_input_is_refused_before_any_forward(twins):
    base, tuned = twins["bridge"]
    tokens, mask = padded(base, STANDARD_10, "right")
    cases = [
        (dict(prompts=tokens, attention_mask=mask, chat_template="{{ x }}"),
         "chat_template applies to text prompts"),
        (dict(prompts=tokens, attention_mask=mask, prepend_bos=True), "prepend_bos applies to text"),
        (dict(prompts=tokens[:1], attention_mask=mask[:1]), "at least 2 prompts"),
        (dict(prompts=tokens, attention_mask=mask[:, :-1]), "attention_mask has shape"),
        (dict(prompts=STANDARD_10, attention_mask=mask), "attention_mask goes with"),
    ]
    for kwargs, message in cases:
        with count_forwards(base) as calls_b, count_forwards(tuned) as calls_t:
            with pytest.raises(TLSpecError, match=message):
                tl_spec.delta_si(base, tuned, kwargs.pop("prompts"), n_resamples=N_RESAMPLES,
                                 **kwargs)
        assert calls_b == calls_t == [0], message
    with count_forwards(base) as calls:
        with pytest.raises(TLSpecError, match="attention_mask has shape"):
            head_importance(base, tokens, attention_mask=mask[:, 1:])
    assert calls == [0]


def test_importance_options_object_and_deprecated_texts_keyword(twins, text_importance):
    model = twins["bridge"][0]
    ref = text_importance["bridge"]
    opts = ImportanceOptions(ablations=("zero",), batch_size=2, heads_per_pass=3)
    imp = head_importance(model, TEXTS, options=opts)
    assert imp.mean_ablation is None
    close(imp.zero_ablation, ref.zero_ablation)
    with pytest.warns(DeprecationWarning, match=r"texts=\.\.\.\) is deprecated"):
        old = head_importance(model, texts=TEXTS, ablations=("zero",), batch_size=2,
                              heads_per_pass=3)
    close(old.zero_ablation, ref.zero_ablation)


def test_check_stats_options_is_a_deprecated_wrapper():
    with pytest.warns(DeprecationWarning, match="check_stats_options is deprecated"):
        check_stats_options(0.95, 1000, 10)
    with pytest.warns(DeprecationWarning), pytest.raises(TLSpecError, match="at least 2 prompts"):
        check_stats_options(0.95, 1000, 1)
    with pytest.warns(DeprecationWarning), pytest.raises(TLSpecError, match="n_resamples"):
        check_stats_options(0.95, 99, 10)


# ---------------------------------------------------------------- the result protocol


def check_protocol(result: Any, tmp_path: Any, name: str) -> Any:
    """repr, HTML, summary, frame and JSON round trip; returns the reloaded result."""
    text = repr(result)
    assert "\n" not in text and len(text) < 400, text
    page = result._repr_html_()
    assert "<table" in page and len(page.encode()) < 200_000
    assert result.summary() and str(result) == result.summary()
    assert len(result.to_frame()) > 0
    path = tmp_path / f"{name}.json"
    result.to_json(path)
    back = load_result(path)
    assert type(back) is type(result)
    assert repr(back) == text
    assert back.summary() == result.summary()
    return back


def test_delta_result_protocol(text_delta, tmp_path):
    d = text_delta["bridge"]
    assert d.model_names() == ["base", "tuned"]
    head = d.headline()
    assert list(head) == ["SI base", "SI tuned", "ΔSI %", "CI", "p"]
    assert head["ΔSI %"] == d.delta_pct and head["CI"] == d.interval and head["p"] == d.pvalue
    text = repr(d)
    assert text.startswith("DeltaResult(pattern, base, tuned, SI base=0.447")
    assert "ΔSI %=-10.3" in text and "4x8 heads" in text
    caption, values, diverging = d.heat()
    assert diverging is True and "tuned − base" in caption
    np.testing.assert_array_equal(values, d.per_head_delta)
    frame = d.to_frame()
    assert len(frame) == 4 and set(frame["model_base"]) == {"base"}
    assert set(frame["model_tuned"]) == {"tuned"}
    np.testing.assert_array_equal(frame["delta_pct"], d.per_layer_delta_pct)
    assert list(frame["changed"]) == [layer in CHANGED for layer in range(4)]
    assert "ΔSI of tuned vs base" in d.summary()
    back = check_protocol(d, tmp_path, "delta")
    assert back.interval == d.interval and back.model_names() == ["base", "tuned"]
    json.loads(d.to_json())  # plain JSON


def test_delta_result_protocol_without_per_layer_values(twins, tmp_path):
    d = tl_spec.delta_si(*twins["bridge"], STANDARD_10, method="entropy_profile",
                         n_resamples=500)
    frame = d.to_frame()
    assert len(frame) == 1 and frame["layer"].isna().all()
    assert frame["delta_pct"].iloc[0] == d.delta_pct
    check_protocol(d, tmp_path, "delta_entropy")


def test_importance_result_protocol(text_importance, twins, tmp_path):
    imp = text_importance["bridge"]
    layer, head = np.unravel_index(int(np.nanargmax(imp.mean_ablation)),
                                   imp.mean_ablation.shape)
    head_line = imp.headline()
    assert head_line["top head"] == f"L{layer}H{head}"
    assert head_line["Δloss (mean)"] == imp.mean_ablation[layer, head]
    assert head_line["clean loss"] == imp.clean_loss
    caption, values, _ = imp.heat()
    assert "mean ablation" in caption
    np.testing.assert_array_equal(values, imp.mean_ablation)
    frame = imp.to_frame()
    assert len(frame) == 2 * 4 * 8 and list(frame["ablation"].unique()) == ["mean", "zero"]
    zero = frame.query("ablation == 'zero'").sort_values(["layer", "head"])
    np.testing.assert_array_equal(zero["loss_increase"].to_numpy(), imp.zero_ablation.ravel())
    assert set(frame["model"]) == {"base"}
    check_protocol(imp, tmp_path, "importance")
    only_zero = head_importance(twins["bridge"][0], TEXTS[:2], ablations=("zero",))
    assert "Δloss (zero)" in only_zero.headline() and "zero" in only_zero.heat()[0]
    back = check_protocol(only_zero, tmp_path, "importance_zero")
    assert back.mean_ablation is None


def test_no_warnings_on_a_clean_token_run(twins):
    base, tuned = twins["bridge"]
    tokens, mask = padded(base, STANDARD_10, "left")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tl_spec.delta_si(base, tuned, tokens, attention_mask=mask, n_resamples=N_RESAMPLES)
        head_importance(base, tokens[:3], attention_mask=mask[:3], ablations=("zero",))
