"""The controlled alignment study on the shipped twins: real values, paired intervals, bad input.

Light on purpose (CI budget): the GQA and SWA families with one seed each, six held-out prompts,
two short lengths on either side of base-swa's window (32), 200 resamples.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import tl_spec
from tl_spec import TLSpecError
from tl_spec.cli import main
from tl_spec.experiments.controlled import TwinFamily, controlled_alignment_study, zoo_prompts
from tl_spec.options.controlled import ROUTE_METHOD

PROMPTS = zoo_prompts(6)
KW = dict(lengths=(40, 24), methods=("pattern", "entropy_profile"), n_resamples=200)


@pytest.fixture(scope="module")
def families() -> list[TwinFamily]:
    return tl_spec.zoo.twin_families(("gqa", "swa"), seeds=(1,), backend="bridge")


@pytest.fixture(scope="module")
def study(families: list[TwinFamily]) -> tl_spec.ControlledResult:
    return controlled_alignment_study(families, PROMPTS, **KW)


def _rows(study, **match):
    return [r for r in study.rows if all(r[k] == v for k, v in match.items())]


def test_each_seed_equals_delta_si_on_that_pair(study, families) -> None:
    by_name = {f.name: f for f in families}
    checked = 0
    for method, length in (("pattern", 40), ("entropy_profile", 24)):
        for row in _rows(study, method=method, length=length):
            if row["seed"] is None:
                continue
            fam = by_name[row["family"]]
            tuned = getattr(fam, row["stage"])[0]
            d = tl_spec.delta_si(fam.base, tuned, PROMPTS, method=method, max_length=length,
                                 n_resamples=200)
            assert abs(row["delta_pct"] - d.delta_pct) < 1e-12, row
            assert abs(row["si_base"] - d.base.value) < 1e-12
            # the same prompt resamples and BCa: the per-seed interval is delta_si's
            assert abs(row["interval"].low - d.interval.low) < 1e-9
            assert abs(row["interval"].high - d.interval.high) < 1e-9
            checked += 1
    assert checked == 8


def test_means_differences_and_window(study) -> None:
    assert {r["family"] for r in study.rows} == {"gqa", "swa"}
    for r in _rows(study, seed=None):
        seeds = _rows(study, route=r["route"], method=r["method"], length=r["length"],
                      family=r["family"], stage=r["stage"])
        per_seed = [x["delta_pct"] for x in seeds if x["seed"] is not None]
        assert r["delta_pct"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        # base-swa's window is 32: binds at 40 tokens, not at 24; gqa has none
        assert r["window_binds"] == (r["family"] == "swa" and r["length"] == 40)
    assert len(study.differences) == 2 * 2 * 2  # conditions x stages, one pair
    for d in study.differences:
        assert d["label"] == "swa - gqa"
        a = _rows(study, route=d["route"], method=d["method"], length=d["length"],
                  family="swa", stage=d["stage"], seed=None)[0]
        b = _rows(study, route=d["route"], method=d["method"], length=d["length"],
                  family="gqa", stage=d["stage"], seed=None)[0]
        assert d["diff_pp"] == pytest.approx(a["delta_pct"] - b["delta_pct"], abs=1e-12)
        assert d["interval"].contains(d["diff_pp"]), d
    assert "at 40 tokens (window 32 binding), swa twins vs gqa twins: " in study.verdict
    assert "at 24 tokens (window 32 not binding), swa twins vs gqa twins: " in study.verdict
    assert len(study.verdicts) == 4 and all("swa twins vs gqa twins" in v for v in study.verdicts)
    lead = [d for d in study.differences if (d["method"], d["length"], d["stage"])
            == ("pattern", 40, "sft")][0]  # the verdict quotes the numbers of the table
    assert f"SFT {lead['diff_pp']:+.2f} pp [{lead['interval'].low:+.2f}" in study.verdict


def test_result_round_trips_and_reports(study, tmp_path) -> None:
    path = tmp_path / "controlled.json"
    study.to_json(path)
    back = tl_spec.load_result(path)
    assert json.loads(back.to_json()) == json.loads(study.to_json())
    assert back.settings["lengths"] == [40, 24] and back.settings["n_resamples"] == 200
    frame = study.to_frame()
    assert len(frame) == 4 * 2 * 2 * 2  # conditions x families x stages x (1 seed + mean)
    from tl_spec.viz.report import write_report

    html = write_report([back], tmp_path / "report").read_text()
    assert "Controlled alignment" in html and "swa - gqa" in html


def _count_forwards(families):
    calls = []
    handles = [m.register_forward_pre_hook(lambda *a: calls.append(1))
               for f in families for m in [f.base, *f.sft, *f.dpo]]
    return calls, handles


@pytest.mark.parametrize("bad, match", [
    (dict(lengths=(1,)), "lengths must be integers >= 2"),
    (dict(methods=("pattern", "nope")), "unknown SI method 'nope'"),
    (dict(routes=("e11_bogus",)), "unknown route 'e11_bogus'"),
    (dict(method="pattern"), "pass methods=... instead"),
    (dict(max_length=64), "pass lengths=... instead"),
    (dict(n_resamples=10), "n_resamples"),
    (dict(aggregate="mean_pattern", methods=("pattern",)), "aggregate='prompt'"),
    (dict(prompts=["only one"]), "at least 2 prompts"),
    (dict(prompts="not a list"), "prompts must be a list of texts"),
    (dict(uneven=True), "one SFT and one DPO twin per seed"),
    (dict(same_names=True), "family names must be distinct"),
])
def test_bad_input_errors_before_any_model_runs(families, bad, match) -> None:
    bad = dict(bad)
    fams = list(families)
    if bad.pop("uneven", False):
        fams = [TwinFamily("gqa", families[0].base, families[0].sft, [])]
    if bad.pop("same_names", False):
        fams = [families[0], families[0]]
    prompts = bad.pop("prompts", PROMPTS)
    calls, handles = _count_forwards(families)
    try:
        with pytest.raises(TLSpecError, match=match):
            controlled_alignment_study(fams, prompts, **bad)
    finally:
        for h in handles:
            h.remove()
    assert not calls


def test_routes_are_passed_only_off_the_default(families) -> None:
    if not ROUTE_METHOD:  # this tl_spec has no reproduction routes: refused up front
        with pytest.raises(TLSpecError, match="unknown route 'e11_masked'"):
            controlled_alignment_study(families, PROMPTS, routes=("tl_spec", "e11_masked"))
        return
    study = controlled_alignment_study(families, PROMPTS, routes=("e11_masked",), lengths=(24,),
                                       n_resamples=200)
    assert {(r["route"], r["method"]) for r in study.rows} == {("e11_masked", "entropy_profile")}


def test_cli_refuses_bad_flags_before_loading(capsys) -> None:
    assert main(["controlled", "--lengths", "1"]) == 2
    assert "lengths must be integers >= 2" in capsys.readouterr().err
    assert main(["controlled", "--archs", "gqa,xyz", "--n-prompts", "4"]) == 2
    assert "archs must be distinct names among" in capsys.readouterr().err
