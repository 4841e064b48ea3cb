"""``tl-spec audit`` over every file of the paper's reproduction package, with ``--claims`` and
``--paper-table`` (copies in ``tests/data/paper4``, MIT; checked byte-identical to the package
where a checkout of it is found: ``$TL_SPEC_PAPER4`` or ``../shared/reference/paper4`` next to the
repository or its parent).

Tolerances: values stored in the files and printed in the paper 1e-9 (they are read, not
computed); SI and responses recomputed from stored values 5e-4 (the paper prints 2-3 decimals)
or 0.05 percentage points; slopes refitted with ``linregress`` 0.01 relative to the stored digits;
ratios 0.01x.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tl_spec.audit import ClaimsAudit, claims_audit, load_claims
from tl_spec.cli import main

DATA = Path(__file__).parent / "data" / "paper4"
FILES = sorted(DATA.glob("*.json"))
CLAIMS = DATA / "claims.yaml"


def _package() -> Path | None:
    env = os.environ.get("TL_SPEC_PAPER4")
    root = Path(__file__).resolve().parents[1]
    for cand in ([Path(env)] if env else []) + [root.parent / "shared/reference/paper4",
                                                 root.parent.parent / "shared/reference/paper4"]:
        if (cand / "claims.yaml").is_file():
            return cand
    return None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "audit.json"
    import contextlib
    import io

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["audit", *map(str, FILES), "--claims", str(CLAIMS), "--paper-table",
                       "--json", str(out)])
    return status, stdout.getvalue(), stderr.getvalue(), out


@pytest.fixture(scope="module")
def audit(run) -> ClaimsAudit:
    import tl_spec

    return tl_spec.load_result(run[3])


def _check(audit: ClaimsAudit, source: str, item: str) -> dict:
    found = [c for c in audit.checks if c["source"] == source and c["item"].startswith(item)]
    assert len(found) == 1, (source, item, [c["item"] for c in audit.checks if c["source"] == source])
    return found[0]


def _flags(audit: ClaimsAudit, kind: str) -> list[dict]:
    return [f for f in audit.flags if f["kind"] == kind]


def test_copies_are_the_package():
    assert len(FILES) == 27 and CLAIMS.is_file()  # 26 results files + the package's schema_v1.json
    pkg = _package()
    if pkg is None:
        pytest.skip("no checkout of the reproduction package next to the repository")
    for f in sorted((pkg / "results").glob("*.json")) + [pkg / "claims.yaml"]:
        assert (DATA / f.name).read_bytes() == f.read_bytes(), f.name


def test_cli_runs_over_the_whole_package(run, audit):
    status, out, err, _ = run
    assert status == 0, err
    assert "Traceback" not in out + err
    for needle in ("Table 4:", "Table 5:", "Table 7:", "Table 8:", "Table 9:", "Table 11:",
                   "claim A1:", "claim A5:", "flags ("):
        assert needle in out, needle
    status_of = {f["name"]: f["status"] for f in audit.files}
    assert status_of["schema_v1.json"].startswith("not a paper result")
    assert sum(s == "audited" for s in status_of.values()) == 26
    assert audit.headline()["differs"] >= 20 and audit.headline()["reproduced"] >= 40


def test_table7_phi_against_the_e08_index(audit):
    expect = {"Phi-1.5": (0.318, 0.33, "differs"), "Phi-2": (0.344, 0.34, "reproduced"),
              "Phi-3-mini": (0.329, 0.33, "reproduced")}
    for row, (pub, art, verdict) in expect.items():
        c = _check(audit, "Table 7", row)
        assert c["published"] == pytest.approx(pub, abs=1e-9)
        assert c["artifact"] == pytest.approx(art, abs=1e-9) and c["verdict"] == verdict, row
    medium = _check(audit, "Table 7", "Phi-3-medium")
    assert medium["artifact"] is None and medium["verdict"] == "no artifact"


def test_table8_llama31_against_its_canonical_indra_file(audit):
    si = _check(audit, "Table 8", "LLaMA-3.1-8B-Inst · SI")
    assert si["published"] == pytest.approx(0.31, abs=1e-9)
    assert si["artifact"] == pytest.approx(0.592, abs=5e-4) and si["verdict"] == "differs"
    resp = _check(audit, "Table 8", "LLaMA-3.1-8B-Inst · response")
    assert resp["published"] == pytest.approx(28.6, abs=1e-9) and resp["verdict"] == "differs"
    for region in ("early -19.8 %", "middle -3.2 %", "late -0.1 %", "all -4.1 %"):
        assert region in resp["artifact_text"], region
    assert "E11T_indra_B_base_control" in resp["cause"] and "E11T_indra_llama2_v3" in resp["cause"]
    assert _flags(audit, "table_vs_canonical")


def test_table8_other_rows(audit):
    ll2 = _check(audit, "Table 8", "LLaMA-2-7B-Base · response")
    assert ll2["artifact"] == pytest.approx(82.43, abs=0.05) and "sigma = 0.1" in ll2["cause"]
    assert "+114.05 %" in ll2["artifact_text"]
    gemma = _check(audit, "Table 8", "Gemma-2-9B-IT · response")
    assert gemma["artifact"] == pytest.approx(0.336, abs=5e-3) and "+5.15 %" in gemma["cause"]
    assert _check(audit, "Table 8", "Gemma-2-9B-IT · SI")["artifact"] == pytest.approx(0.7417, abs=5e-4)
    assert _check(audit, "Table 8", "Phi-3-mini · response")["verdict"] == "no artifact"


def test_table4_rows_and_qwen_without_si(audit):
    expect = {"LLaMA-2-7B": (-20.36, "differs"), "LLaMA-3.1-8B": (-56.27, "reproduced"),
              "Yi-1.5-9B": (-7.48, "differs"), "Mistral-7B": (4.17, "reproduced"),
              "Gemma-2-9B": (1.93, "reproduced")}
    for row, (value, verdict) in expect.items():
        c = _check(audit, "Table 4", row)
        assert c["artifact"] == pytest.approx(value, abs=0.01) and c["verdict"] == verdict, row
    qwen = _check(audit, "Table 4", "Qwen2-7B")
    assert qwen["verdict"] == "no artifact" and qwen["published"] == pytest.approx(-9.0, abs=1e-9)
    assert "repetition-score (not SI)" in qwen["cause"] and "'+117%'" in qwen["cause"]
    assert _check(audit, "Table 4", "95% CIs")["verdict"] == "no artifact"


def test_table9_rho_eff_and_the_65799_ratio(audit):
    ratio = _check(audit, "Table 9", "Effect size")
    assert ratio["artifact"] == pytest.approx(3026733 / 46, abs=0.01)
    assert "41,264x" in ratio["artifact_text"]  # with LLaMA-2's 3-seed mean 73.35
    flag, = _flags(audit, "ratio_definition")
    assert "ONE MHA slope" in flag["message"] and "llama2_7b: 46" in flag["message"]
    qwen = _check(audit, "Table 9", "Heritage override")
    assert qwen["artifact"] == pytest.approx(1.53125, abs=1e-12) and qwen["verdict"] == "reproduced"
    highest = _check(audit, "Table 9", "Qwen2's rho_eff is the 'highest tested'")
    assert highest["verdict"] == "differs" and highest["artifact"] == pytest.approx(4.0, abs=1e-12)
    assert "tinyllama_1b" in highest["cause"]
    assert _check(audit, "Table 9", "MHA LLaMA-2-7B · rho_eff")["artifact"] == pytest.approx(0.25, abs=1e-12)


def test_three_or_more_rho_definitions(audit):
    assert {"H/d_head", "Eq. 3", "H/sqrt(d_model)"} <= set(audit.rho_definitions)
    flag, = _flags(audit, "definitions_differ")
    assert "E04_qwen_twin" in flag["file"] and "E21_Dimensional" in flag["file"]
    qwen = [w for w in audit.rho_definitions["H/sqrt(d_model)"] if w.startswith("E04_qwen")]
    assert qwen and "0.4677" in qwen[0]  # 28 / sqrt(28 x 128)


def test_table11_and_table5_aggregations(audit):
    for item, value in (("aggregation · ratio of means", 5834.81),
                        ("aggregation · median of ratios", 9514.07),
                        ("aggregation · mean of ratios", 12995.6), ("seed 123 · ratio", 2494.70),
                        ("seed 123 · LLaMA-2 slope", 156.96), ("seed 456 · LLaMA-2 slope", 46.347)):
        c = _check(audit, "Table 11", item)
        assert c["artifact"] == pytest.approx(value, rel=1e-4) and c["verdict"] == "reproduced", item
    assert _check(audit, "Table 11", "seed 42 · LLaMA-2 slope")["verdict"] == "no artifact"
    fam = _check(audit, "Table 5", "Same-Family")
    assert fam["artifact"] == pytest.approx(121096.8, abs=0.1) and fam["verdict"] == "differs"
    scale = _check(audit, "Table 5", "Same-Scale")
    assert scale["artifact"] == pytest.approx(2494.70, abs=0.01) and scale["verdict"] == "differs"


def test_flags_identical_seeds_and_unverified_data(audit):
    iso = [f for f in _flags(audit, "identical_seeds") if f["file"].startswith("E-ISO")]
    assert len(iso) == 4  # 2 files x (Qwen2, LLaMA-3)
    unverified = {f["message"].split(":")[0] for f in _flags(audit, "data_verified_false")}
    assert unverified == {"qwen2_7b", "phi3_mini", "gemma2_9b"}
    assert any("E11T_v3_bootstrap_ci" in f["file"] for f in _flags(audit, "zero_width_intervals"))
    falcon, = _flags(audit, "files_contradict")
    assert "0.1174" in falcon["message"] and "0.3492" in falcon["message"]


def test_claims(audit):
    a1 = _check(audit, "claim A1", "Territorial Collapse")
    assert a1["verdict"] == "differs" and "LLaMA-3.1-8B -56.27" in a1["cause"]
    heal = _check(audit, "claim A2", "Indra State-Dependency: healing")
    assert heal["artifact"] == pytest.approx(114.05, abs=0.01) and heal["verdict"] == "reproduced"
    damage = _check(audit, "claim A2", "Indra State-Dependency: damage")
    assert damage["artifact"] == pytest.approx(-7.836, abs=1e-3) and damage["verdict"] == "reproduced"
    assert _check(audit, "claim A4", "Synthetic Immunity")["verdict"] == "reproduced"
    assert _check(audit, "claim A5", "MQA Pre-Collapsed")["verdict"] == "differs"
    assert _check(audit, "E06d_Same_Family", "PPL-Ratio")["verdict"] == "differs"
    assert _check(audit, "E22_Indra_Cure_v2", "Validation")["verdict"] == "differs"


def test_result_protocol_and_report_section(audit, run):
    assert repr(audit).startswith("ClaimsAudit(") and "\n" not in repr(audit)
    frame = audit.to_frame()
    assert len(frame) == len(audit.checks) and "verdict" in frame.columns
    assert json.loads(audit.to_json()) == json.loads(run[3].read_text())
    from tl_spec.viz.sections import ReportContext, render_section

    section = render_section(audit, ReportContext())
    assert "Table 8" in section.html and "differs" in section.html and "<table" in section.html


def test_a_saved_audit_loads_in_a_fresh_process(run):
    import subprocess
    import sys

    code = ("import sys, tl_spec; r = tl_spec.load_result(sys.argv[1]); "
            "print(type(r).__name__, r.headline()['files'])")
    out = subprocess.run([sys.executable, "-c", code, str(run[3])], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parents[1], check=True).stdout
    assert out.split() == ["ClaimsAudit", "27"]


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content)
    return p


def test_garbage_is_reported_not_crashed_on(tmp_path, capsys):
    bad = [_write(tmp_path, "notjson.json", b"this is not JSON {"),
           _write(tmp_path, "empty.json", b""), _write(tmp_path, "binary.json", b"\xff\xfe\x00x"),
           _write(tmp_path, "other.json", json.dumps({"hello": [1, 2]}).encode()),
           _write(tmp_path, "E21_broken.json", json.dumps({"model_analysis": "x",
                                                           "stage1_results": [1]}).encode()),
           _write(tmp_path, "E06_broken.json", json.dumps({"models": {"m": {"ppl_curve": [
               {"sigma": "a", "mean": None}], "ppl_slope": "x"}}}).encode())]
    status = main(["audit", *map(str, bad), "--paper-table", "--claims", str(CLAIMS)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert status == 1 and "nothing auditable" in err  # none held anything auditable
    for name in ("notjson.json", "empty.json", "binary.json", "other.json"):
        assert f"{name}: -: not a paper result" in out, name
    status = main(["audit", *map(str, bad), str(DATA / "E08_phi3_index.json")])
    assert status == 0 and "Traceback" not in "".join(capsys.readouterr())


@pytest.mark.parametrize("path", [f for f in FILES if f.stat().st_size < 60_000], ids=lambda p: p.name)
def test_damaged_paper_files_never_raise(path, tmp_path):
    """Each top-level field replaced by a string, a list and null in turn: still an audit."""
    doc = json.loads(path.read_text())
    claims = load_claims(CLAIMS)
    items = doc[0].items() if isinstance(doc, list) else doc.items()
    for key, _ in list(items):
        for junk in ("x", [None], None, {"a": {}}):
            damaged = json.loads(path.read_text())
            (damaged[0] if isinstance(damaged, list) else damaged)[key] = junk
            target = tmp_path / path.name
            target.write_text(json.dumps(damaged))
            result = claims_audit([target], claims=claims, paper_table=True)
            assert result.files[0]["name"] == path.name
            errors = [f["message"] for f in result.flags if f["kind"] == "audit_error"]
            assert not errors, (key, junk, errors)  # no stage needed the safety net
