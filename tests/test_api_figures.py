"""Every paper figure takes the result objects it draws: one result, a list, a ``{label: result}``
mapping, and still the plain numbers it always took.

Results come from real tiny TransformerLens models (tests/conftest.py). Each check compares the
numbers drawn (the returned :class:`~tl_spec.viz.figures.FigureData` *and* the matplotlib
artists) with the result's own fields; tolerance 1e-12 where the figure recomputes a mean (the
probe's response is a ratio of means over seeds, the mean of the per-seed responses is the same
number up to rounding), exact equality where it copies numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import tl_spec
from tl_spec.errors import TLSpecError
from tl_spec.prompts import E06_TEXTS, STANDARD_10
from tl_spec.viz import (
    delta_si_figure,
    perplexity_slope_figure,
    probe_response_figure,
    si_by_layer_figure,
    stability_figure,
)
from tl_spec.viz.figures import drawable
from tl_spec.zoo.tiny import build_random_checkpoint, build_twin_with_shared_heads

BAR_HEIGHT = 0.55  # the probe figure's bar thickness, to tell its bars from the band patch


@pytest.fixture(scope="module")
def gqa(tl_model):
    return tl_model("llama-gqa", "bridge")


@pytest.fixture(scope="module")
def si(gqa):
    return tl_spec.specialization_index(gqa, STANDARD_10)


@pytest.fixture(scope="module")
def si_mha(tl_model):
    return tl_spec.specialization_index(tl_model("llama-mha", "bridge"), STANDARD_10)


@pytest.fixture(scope="module")
def delta(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("fig_twin")
    twin = build_twin_with_shared_heads(tiny_checkpoints["llama-mha"], root / "twin",
                                        layers=[0, 2], heads=[1, 2, 3])
    base = tl_spec.load_model(tiny_checkpoints["llama-mha"], backend="bridge")
    tuned = tl_spec.load_model(twin, backend="bridge")
    return tl_spec.delta_si(base, tuned, STANDARD_10, n_resamples=200)


@pytest.fixture(scope="module")
def probe(gqa):
    return tl_spec.perturbation_probe(gqa, STANDARD_10, sigma=0.2, seeds=(42, 123),
                                      n_resamples=200)


@pytest.fixture(scope="module")
def sweep(gqa):
    return tl_spec.probe_sweep(gqa, STANDARD_10, sigmas=(0, 0.2), regions=("early", "all"),
                               seeds=(42, 123))


@pytest.fixture(scope="module")
def sens(gqa):
    return tl_spec.noise_sensitivity(gqa, E06_TEXTS[:4], sigmas=(0, 0.1, 0.2), seeds=(42, 123))


@pytest.fixture(scope="module")
def stab(tmp_path_factory):
    root = tmp_path_factory.mktemp("fig_stab")
    models = [tl_spec.load_model(build_random_checkpoint(root / f"s{i}", arch="llama-mha", seed=i),
                                 backend="bridge") for i in range(2)]
    return tl_spec.head_stability(models, STANDARD_10, measure="pattern", null=0, n_blocks=5,
                                  n_resamples=200)


def _name(result):
    return result.model_names()[0]


# ---------------------------------------------------------------- the one normaliser


def test_drawable_forms_and_refusals(si, si_mha):
    one = drawable(si, "results", (tl_spec.SIResult,))
    assert list(one.values()) == [si] and list(one) == [_name(si)]
    assert list(drawable([si, si], "results", (tl_spec.SIResult,))) == [_name(si), f"{_name(si)} (2)"]
    assert drawable({"a": si, "b": [0.1]}, "results", (tl_spec.SIResult,)) == {"a": si, "b": [0.1]}
    assert list(drawable([si, si_mha], "r", (tl_spec.SIResult,), names=["x", "y"])) == ["x", "y"]
    with pytest.raises(TLSpecError, match="plain values need a label"):
        drawable([0.1, 0.2], "slopes", (tl_spec.SensitivityResult,))
    with pytest.raises(TLSpecError, match="cannot draw a SIResult here; give StabilityResult"):
        drawable({"a": si}, "stability", (tl_spec.StabilityResult,))
    with pytest.raises(TLSpecError, match="2 names for 1 results"):
        drawable([si], "results", (tl_spec.SIResult,), names=["a", "b"])
    with pytest.raises(TLSpecError, match="empty"):
        drawable({}, "results", (tl_spec.SIResult,))
    with pytest.raises(TLSpecError, match="must hold DeltaResult objects; got list"):
        drawable({"a": [1.0]}, "deltas", (tl_spec.DeltaResult,), plain=False)


# ---------------------------------------------------------------- one test per figure


def _bar_heights(ax):
    return [p.get_height() for p in ax.patches]


def test_delta_si_figure_takes_results(delta):
    tuned = str(delta.provenance["tuned"]["model"]).rstrip("/").rsplit("/", 1)[-1]
    want = {"y": [delta.delta_pct], "low": [delta.interval.low], "high": [delta.interval.high],
            "pvalue": [delta.pvalue]}
    for given, labels in ((delta, [tuned]), ([delta, delta], [tuned, f"{tuned} (2)"]),
                          ({"twin": delta}, ["twin"])):
        fig, data = delta_si_figure(given)
        assert list(data.series) == labels
        for label in labels:
            assert {k: data.series[label][k] for k in want} == want
        assert _bar_heights(fig.axes[0]) == [delta.delta_pct] * len(labels)
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == labels
    with pytest.raises(TLSpecError, match="DeltaResult"):
        delta_si_figure({"twin": [1.0, 2.0]})  # ΔSI needs its interval: no plain form


def test_perplexity_slope_figure_takes_results(sens):
    slopes = [f.slope for f in sens.fits]
    assert all(s > 0 for s in slopes), slopes  # a log scale: the tiny model's PPL rises
    label = _name(sens)
    for given, labels in ((sens, [label]), ([sens, sens], [label, f"{label} (2)"]),
                          ({"a": sens}, ["a"]), ({"a": slopes}, ["a"])):
        fig, data = perplexity_slope_figure(given)
        assert list(data.series) == labels
        for i, name in enumerate(labels):
            assert data.series[name]["y"] == slopes
            assert data.series[name]["mean"][0] == pytest.approx(sens.slope, rel=1e-12)
            points = [c for c in fig.axes[0].collections if type(c).__name__ == "PathCollection"]
            drawn = points[i].get_offsets()[:, 1]
            np.testing.assert_array_equal(drawn, slopes)
    _, data = perplexity_slope_figure([sens, sens], names=["MHA", "GQA"])
    assert list(data.series) == ["MHA", "GQA"]
    _, data = perplexity_slope_figure({"cmp": tl_spec.compare_sensitivity(sens, sens)})
    assert [s["y"] for s in data.series.values()] == [slopes, slopes] and len(data.series) == 2


def test_probe_response_figure_takes_probes_and_sweeps(probe, sweep):
    label = _name(probe)
    per_seed = probe.response_per_seed.tolist()
    for given, labels in ((probe, [label]), ([probe], [label]), ({"gqa": probe}, ["gqa"]),
                          ({"gqa": per_seed}, ["gqa"])):
        fig, data = probe_response_figure(given)
        assert list(data.series) == labels
        assert data.series[labels[0]]["y"] == per_seed
        assert data.series[labels[0]]["mean"][0] == pytest.approx(probe.response_pct, abs=1e-12)
        bars = [p.get_width() for p in fig.axes[0].patches
                if abs(p.get_height() - BAR_HEIGHT) < 1e-9]
        assert bars == pytest.approx([probe.response_pct], abs=1e-12)
    _, data = probe_response_figure(probe)
    assert data.notes["verdict"] == {label: probe.verdict}
    assert data.bands["stable"] == [-probe.bands["stable_within"], probe.bands["stable_within"]]
    # a sweep: one bar per region at each nonzero sigma, the per-seed change in SI
    fig, data = probe_response_figure({"sweep": sweep, "probe": probe})
    assert list(data.series) == ["sweep: early σ=0.2", "sweep: all σ=0.2", "probe"]
    for i, region in enumerate(sweep.regions):
        assert data.series[f"sweep: {region} σ=0.2"]["y"] == sweep.change_pct[i, 1].tolist()
    assert len([p for p in fig.axes[0].patches if abs(p.get_height() - BAR_HEIGHT) < 1e-9]) == 3


def test_si_by_layer_figure_takes_results(si, si_mha, delta, probe):
    a, b = _name(si), _name(si_mha)
    for given, want in ((si, {a: si}), ([si, si_mha], {a: si, b: si_mha}),
                        ({"gqa": si}, {"gqa": si}),
                        ({"gqa": si.per_layer.tolist()}, {"gqa": si})):
        fig, data = si_by_layer_figure(given)
        assert list(data.series) == list(want)
        for line, (label, r) in zip(fig.axes[0].lines, want.items()):
            assert data.series[label]["y"] == r.per_layer.tolist()
            np.testing.assert_array_equal(line.get_ydata(), r.per_layer)
    _, data = si_by_layer_figure({"twin": delta})
    assert data.series["twin: base"]["y"] == delta.base.per_layer.tolist()
    assert data.series["twin: tuned"]["y"] == delta.tuned.per_layer.tolist()
    with pytest.raises(TLSpecError, match="cannot draw a ProbeResult"):
        si_by_layer_figure({"p": probe})


def test_stability_figure_takes_results(stab):
    for given, labels in ((stab, ["pattern"]), ([stab, stab], ["pattern", "pattern (2)"]),
                          ({"seeds": stab}, ["seeds"]), ({"seeds": stab.stability}, ["seeds"])):
        fig, data = stability_figure(given, null_band=(0.0, 0.1))
        assert list(data.series) == labels
        for line, label in zip(fig.axes[0].lines, labels):
            assert data.series[label]["y"] == stab.stability.tolist()
            np.testing.assert_array_equal(line.get_ydata(), stab.stability)
        assert data.bands["null_high"] == [0.1] * len(stab.stability)


def test_figures_refuse_a_bare_list_of_numbers():
    for fig in (perplexity_slope_figure, probe_response_figure, si_by_layer_figure,
                stability_figure):
        with pytest.raises(TLSpecError, match="plain values need a label"):
            fig([1.0, 2.0])
