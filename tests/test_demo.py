"""`tl-spec demo`: the main job, offline, on the embedded zoo."""

from __future__ import annotations

import json

import tl_spec
from tl_spec.cli import main


def test_demo_runs_offline_and_writes_parseable_results(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TL_SPEC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for needle in ("SI (pattern)", "ΔSI (pattern)", "probe sigma=0.05", "slope ratio",
                   "swa - gqa (seed 1)", "ΔSI DPO at 24 tokens", "head stability"):
        assert needle in printed
    kinds = {tl_spec.load_result(p).kind for p in out.glob("*.json")}
    assert kinds == {"specialization_index", "delta_si", "perturbation_probe",
                     "noise_sensitivity", "sensitivity_comparison", "controlled_alignment"}
    delta = json.loads((out / "delta_si_0.json").read_text())
    assert delta["provenance"]["base"]["model"].endswith("base-gqa")
    assert delta["provenance"]["tuned"]["model"].endswith("gqa-dpo-1")
    controlled = tl_spec.load_result(out / "controlled_alignment_0.json")
    assert [f["name"] for f in controlled.families] == ["mha", "gqa", "swa"]
    assert {(r["length"], r["window_binds"]) for r in controlled.rows
            if r["family"] == "swa"} == {(128, True), (24, False)}
    html = (out / "report.html").read_text()
    assert "ΔSI" in html and 'src="http' not in html  # nothing is fetched from a network
    assert (out / "summary.txt").read_text().startswith("model")
