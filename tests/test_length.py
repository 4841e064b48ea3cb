"""SI versus prompt length: one forward at the longest length equals separate truncated runs.

For each length ``L``, :func:`tl_spec.length_profile` (one forward, every prefix reduced inside
the hooks) must equal ``specialization_index(model, prompts, max_length=L)`` within 1e-9, for
the three SI definitions, on ``base-gqa`` (global attention) and ``base-swa`` (Mistral, window
32), on every backend this TransformerLens loads. Window marks, input checks (before any forward
pass) and the NaN guard are checked on the same zoo models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import LOADABLE

import tl_spec
from tl_spec import TLSpecError, length_profile, specialization_index
from tl_spec.hooks.length import prefix_tokens
from tl_spec.prompts import STANDARD_10

# 16 to 74 tokens on the zoo tokenizer: every length below cuts some prompt, 48 and 64 bind the
# window of base-swa (32) on the two long ones
PROMPTS = [STANDARD_10[i] for i in (4, 1, 5, 6)]
LENGTHS = (16, 24, 32, 48, 64)
METHODS = ("pattern", "entropy_profile", "normalized_entropy")
TOL = 1e-9


@pytest.fixture(scope="module")
def zoo_model() -> Any:
    from tl_spec.zoo.registry import load

    cache: dict[tuple[str, str], Any] = {}

    def get(name: str, backend: str) -> Any:
        if (name, backend) not in cache:
            cache[(name, backend)] = load(name, backend=backend)
        return cache[(name, backend)]

    return get


@pytest.mark.parametrize("backend", LOADABLE)
@pytest.mark.parametrize("name", ["base-gqa", "base-swa"])
@pytest.mark.parametrize("method", METHODS)
def test_one_forward_equals_separate_runs(zoo_model, name: str, backend: str, method: str) -> None:
    model = zoo_model(name, backend)
    prof = length_profile(model, PROMPTS, LENGTHS, method=method, n_resamples=100)
    assert prof.lengths == list(LENGTHS) and prof.settings["mode"].startswith("prefix")
    for i, n in enumerate(LENGTHS):
        ref = specialization_index(model, PROMPTS, method=method, max_length=n)
        assert abs(prof.si[i] - ref.value) < TOL, (n, prof.si[i], ref.value)
        if method == "entropy_profile":
            assert prof.per_layer is None
            assert np.allclose(prof.per_prompt[i], ref.per_prompt_heads, atol=TOL, rtol=0)
        else:
            assert np.allclose(prof.per_layer[i], ref.per_layer, atol=TOL, rtol=0)
            assert np.allclose(prof.per_prompt[i], ref.per_prompt, atol=TOL, rtol=0)
        iv = prof.intervals[i]
        assert math.isfinite(iv.low) and iv.low <= iv.high and iv.n_resamples == 100
    assert prof.n_truncated == [int(sum(len_ > n for len_ in prof.prompt_lengths))
                                for n in LENGTHS]


def test_region_full_and_float32_statistics_too(zoo_model) -> None:
    model = zoo_model("base-swa", "bridge")
    # float32 statistics sum in another order over a differently sized block: float32 rounding
    for kw, tol in ((dict(region="full"), TOL), (dict(stat_dtype="float32"), 1e-6)):
        prof = length_profile(model, PROMPTS, LENGTHS, n_resamples=100, **kw)
        for i, n in enumerate(LENGTHS):
            ref = specialization_index(model, PROMPTS, max_length=n, **kw)
            assert abs(prof.si[i] - ref.value) < tol, (kw, n)


def test_separate_mode_is_the_same_and_left_padding_too(zoo_model) -> None:
    model = zoo_model("base-swa", "bridge")
    fast = length_profile(model, PROMPTS, LENGTHS, method="pattern", n_resamples=100)
    slow = length_profile(model, PROMPTS, LENGTHS, method="pattern", n_resamples=100, reuse=False)
    left = length_profile(model, PROMPTS, LENGTHS, method="pattern", n_resamples=100,
                          padding_side="left", batch_size=4)
    assert slow.settings["mode"].startswith("separate")
    assert np.allclose(fast.si, slow.si, atol=TOL, rtol=0)
    assert [iv.low for iv in fast.intervals] == pytest.approx([iv.low for iv in slow.intervals],
                                                              abs=TOL)
    assert np.allclose(fast.si, left.si, atol=1e-6, rtol=0)  # left padding: masked forward


def test_prefix_tokens_either_padding_side() -> None:
    valid = torch.tensor([[False, False, True, True, True], [True, True, True, False, False]])
    assert prefix_tokens(valid, 2).int().tolist() == [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert prefix_tokens(valid, 9).equal(valid)


def test_window_marks_on_swa_and_none_on_gqa(zoo_model) -> None:
    swa = length_profile(zoo_model("base-swa", "bridge"), PROMPTS, LENGTHS, n_resamples=100)
    assert swa.windows == [32, 32, 32, 32]
    # 0 <= q - k < 32 binds once a prompt has more than 32 tokens: at 48 (not at 32 itself)
    assert swa.binding_from == [48, 48, 48, 48] and swa.first_binding == 48
    long_prompts = sum(n > 32 for n in swa.prompt_lengths)
    assert swa.n_beyond_window[:, 0].tolist() == [0, 0, 0, long_prompts, long_prompts]
    assert swa.headline()["window binds from"] == 48
    frame = swa.to_frame()
    assert len(frame) == len(LENGTHS) * 4
    assert set(frame.loc[frame.window_binds, "length"]) == {48, 64}
    gqa = length_profile(zoo_model("base-gqa", "bridge"), PROMPTS, LENGTHS, n_resamples=100)
    assert gqa.windows == [None] * 4 and gqa.binding_from == [None] * 4
    assert gqa.headline()["window binds from"] == "never"
    assert not gqa.n_beyond_window.any() and "no layer has a sliding window" in gqa.summary()


@pytest.fixture()
def no_forward(zoo_model):
    """The model, and a list that records every forward pass that reaches its first layer."""
    model = zoo_model("base-gqa", "bridge")
    calls: list[int] = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: calls.append(1))]):
        yield model, calls
    assert calls == [], "an invalid input reached the model"


@pytest.mark.parametrize("kwargs, match", [
    (dict(lengths=(0, 16)), "integers >= 2"),
    (dict(lengths=(-8,)), "integers >= 2"),
    (dict(lengths=(1, 16)), "integers >= 2"),
    (dict(lengths=(32, 16, 32)), "distinct"),
    (dict(lengths=()), "empty"),
    (dict(lengths=(16, 24.5)), "integers"),
    (dict(lengths=(16, 256)), "exceeds max_length=128"),
    (dict(lengths=(16, 64), max_length=48), "exceeds max_length=48"),
    (dict(lengths=(16, 200), max_length=256), "context of 128 tokens"),
    (dict(lengths=(16, 32), aggregate="mean_pattern"), "aggregate='prompt'"),
    (dict(lengths=(16, 32), n_resamples=10), "n_resamples"),
    (dict(lengths=(16, 32), lenghts=(8,)), "did you mean 'lengths'"),
])
def test_bad_input_refused_before_the_model_runs(no_forward, kwargs, match) -> None:
    model, _ = no_forward
    with pytest.raises(TLSpecError, match=match):
        length_profile(model, PROMPTS, **kwargs)


def test_one_prompt_is_refused_before_the_model_runs(no_forward) -> None:
    model, _ = no_forward
    with pytest.raises(TLSpecError, match="at least 2 prompts"):
        length_profile(model, PROMPTS[:1], (16, 32))


def test_unsorted_lengths_are_sorted(zoo_model) -> None:
    prof = length_profile(zoo_model("base-gqa", "bridge"), PROMPTS, (48, 16), n_resamples=100)
    assert prof.lengths == [16, 48]


def test_a_route_is_refused(zoo_model) -> None:
    """Reproduction routes pad every prompt to a fixed length: a length profile is refused."""
    model = zoo_model("base-gqa", "bridge")
    with pytest.raises(TLSpecError, match="route='e11_masked'"):
        length_profile(model, PROMPTS, (16, 32), method="entropy_profile", route="e11_masked")


def test_nan_weights_are_never_silent() -> None:
    from tl_spec.zoo.registry import load

    model = load("base-gqa", backend="bridge")
    with torch.no_grad():  # one NaN in layer 1's query projection (either backend's naming)
        weight = next(p for n, p in model.named_parameters()
                      if ("layers.1." in n or "blocks.1." in n) and ("q_proj" in n or "W_Q" in n))
        weight.view(-1)[0] = float("nan")
    with pytest.raises(TLSpecError, match="non-finite"):
        length_profile(model, PROMPTS, (16, 32), n_resamples=100)


def test_json_report_and_cli(zoo_model, tmp_path: Path, capsys) -> None:
    from tl_spec.cli import main
    from tl_spec.viz import render_report

    prof = length_profile(zoo_model("base-swa", "bridge"), PROMPTS, LENGTHS, n_resamples=100)
    path = tmp_path / "len.json"
    prof.to_json(path)
    back = tl_spec.load_result(path)
    assert json.loads(back.to_json()) == json.loads(prof.to_json())
    page = render_report([prof])
    assert 'data-marks="48"' in page and "window 32 binds" in page
    out = tmp_path / "cli.json"
    status = main(["length", "base-swa", "--backend", "bridge", "--lengths", "32,16,48",
                   "--n-resamples", "100", "--method", "normalized_entropy", "--json", str(out),
                   "--report", str(tmp_path / "rep")])
    assert status == 0 and (tmp_path / "rep" / "report.html").is_file()
    record = json.loads(out.read_text())
    assert record["kind"] == "length_profile" and record["lengths"] == [16, 32, 48]
    assert record["binding_from"] == [48, 48, 48, 48]
    assert main(["length", "base-swa", "--lengths", "16,16"]) == 2
    assert "distinct" in capsys.readouterr().err
