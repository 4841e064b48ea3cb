"""`tl_spec.audit` on the paper's own E11 result files (copies in ``tests/data/paper4``, MIT).

Tolerances: stored SI vs SI recomputed from the stored ``entropies`` 1e-9 (observed <= 1.2e-16);
Delta SI vs the values written out to 0.1 % in docs/reproduction/audit.md 0.1 percentage points;
"identical seeds" means exactly equal floats (``tl_spec.stats.check_seeds``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tl_spec.audit import (
    AGREE_PP,
    PAPER_TABLE_4,
    add_audit_parser,
    audit_file,
    audit_files,
    audit_record,
    run_audit,
)
from tl_spec.errors import TLSpecError

DATA = Path(__file__).parent / "data" / "paper4"
FILES = sorted(DATA.glob("E11*.json"))
SI_TOL = 1e-9
PP_TOL = 0.1

GQA = "E11T_gqa_comparison_20260113_181926.json"
MISTRAL = "E11_territorial_collapse_mistral_20260113_182026.json"
LLAMA2 = "E11_llama2_territorial_20260113_201152.json"
YI = "E11_yi15_territorial_20260113_201056.json"
GEMMA = "E11_gemma2_territorial_20260113_195146.json"
FALCON = "E11_falcon_territorial_collapse_20260113_195443.json"
BOOTSTRAP = "E11T_v3_bootstrap_ci.json"
WITH_MATRICES = {GQA: 3, MISTRAL: 3, LLAMA2: 1, YI: 1, GEMMA: 1, FALCON: 1}  # matrices per variant


@pytest.fixture(scope="module")
def report():
    return audit_files(FILES, paper_table=True)


@pytest.fixture(scope="module")
def rows(report):
    return {r.file: r for r in report.rows}


def test_data_copy_is_complete():
    assert (DATA / "LICENSE").read_text().startswith("MIT License")
    assert len(FILES) == 14 and (DATA / BOOTSTRAP) in FILES


def test_every_stored_si_with_a_matrix_is_reproduced(rows):
    n = 0
    for name, per_variant in WITH_MATRICES.items():
        row = rows[name]
        assert not row.no_matrix
        for variant in ("base", "instruct"):
            va = row.variants[variant]
            assert va.n_matrices == per_variant
            assert va.max_abs_diff is not None and va.max_abs_diff < SI_TOL, (name, variant)
            assert abs(va.si_recomputed - va.si_stored) < SI_TOL
            n += va.n_matrices
    assert n == 20  # every entropies matrix in the package
    assert all(rows[f.name].no_matrix for f in FILES if f.name not in WITH_MATRICES)


def test_recomputation_matches_the_formula_written_out():
    """Independent of tl_spec.metrics: 1 - nanmean(triu(corrcoef(E.T), 1)) on Falcon's (32, 71) matrix."""
    doc = json.loads((DATA / FALCON).read_text())
    for variant in ("base", "instruct"):
        e = np.asarray(doc["results"][variant]["entropies"])
        assert e.shape == (32, 71)
        c = np.corrcoef(e.T)
        expected = 1 - np.nanmean(c[np.triu_indices_from(c, 1)])
        assert abs(audit_file(DATA / FALCON).variants[variant].si_recomputed - expected) < 1e-12


def test_delta_si_recomputed_per_eq2(rows):
    expected = {LLAMA2: -20.4, YI: -7.5, MISTRAL: 4.2, GEMMA: 1.9, GQA: -56.3}
    for name, value in expected.items():
        assert rows[name].delta_recomputed == pytest.approx(value, abs=PP_TOL), name
    gemma = rows[GEMMA]  # the only file storing a relative Delta SI
    assert abs(gemma.delta_stored_pct - gemma.delta_recomputed) < SI_TOL
    for name in (LLAMA2, YI, MISTRAL, GQA, FALCON):  # these store SI_instruct - SI_base
        assert rows[name].delta_stored_pct is None
        assert abs(rows[name].delta_stored_abs - rows[name].delta_recomputed_abs) < SI_TOL
        assert not any("!=" in n or "differs from the recomputed" in n for n in rows[name].notes)


def test_identical_seeds_flagged(rows):
    for name in (GQA, MISTRAL):
        assert rows[name].identical_seeds and "identical_seeds" in rows[name].flags
        assert any("deterministic forward pass" in n for n in rows[name].notes)
    # noise treatments: seeds differ where noise is added, so only the noise-free groups decide
    control = rows["E11T_indra_B_base_control_20260113_184219.json"]
    assert control.identical_seeds
    assert any("seeds differ in 20 of 20" in n for n in control.notes)


def test_seeds_that_differ_are_not_flagged():
    e = [[0.2, 0.9, 0.5], [0.6, 0.4, 0.5], [0.9, 0.1, 0.7]]
    v = {"entropies": e, "seed_results": [{"si": 0.5}, {"si": 0.5}, {"si": 0.51}]}
    row = audit_record({"model": "toy", "results": {"base": v, "instruct": v}})
    assert not row.identical_seeds and row.flags == []


def test_tampered_file_is_caught(tmp_path):
    doc = json.loads((DATA / GQA).read_text())
    doc["results"]["base"]["seed_results"][1]["specialization"]["specialization_index"] += 1e-3
    (tmp_path / "t.json").write_text(json.dumps(doc))
    row = audit_file(tmp_path / "t.json")
    assert row.variants["base"].max_abs_diff == pytest.approx(1e-3, rel=1e-6)
    assert any("base: stored SI differs from the recomputed one" in n for n in row.notes)
    assert not row.identical_seeds  # seed 123 now differs from 42 and 456


def test_zero_width_intervals_flagged(rows):
    row = rows[BOOTSTRAP]
    assert row.zero_width_intervals and row.no_matrix
    # 48 BCa intervals over n_samples = 3 seeds; the 16 at noise 0.0 have ci_lower == ci_upper
    note = next(n for n in row.notes if "low == high" in n)
    assert note.startswith("16 of 48") and "n_samples = 3" in note
    assert not any(r.zero_width_intervals for name, r in rows.items() if name != BOOTSTRAP)
    wide = audit_record({"ci": {"ci_lower": 0.1, "ci_upper": 0.2, "n_samples": 10}})
    assert not wide.zero_width_intervals


def test_paper_table_comparison(report):
    by_row = {c.row: c for c in report.paper}
    assert list(by_row) == list(PAPER_TABLE_4)
    for name, recomputed in (("LLaMA-2-7B", -20.4), ("Yi-1.5-9B", -7.5)):
        c = by_row[name]
        assert c.status == "DIFFERS"
        assert c.delta_recomputed == pytest.approx(recomputed, abs=PP_TOL)
        assert abs(c.diff_pp) >= AGREE_PP
        assert "absolute SI difference x 100" in c.note  # -7.95 and -4.3 are SI points, not %
    assert by_row["LLaMA-2-7B"].file == LLAMA2 and by_row["Yi-1.5-9B"].file == YI
    for name, file in (("Mistral-7B", MISTRAL), ("Gemma-2-9B", GEMMA), ("LLaMA-3.1-8B", GQA)):
        c = by_row[name]
        assert c.status == "agree" and abs(c.diff_pp) < AGREE_PP and c.file == file
    qwen = by_row["Qwen2-7B"]
    assert qwen.status == "no matrix" and qwen.delta_recomputed is None and qwen.file is None
    text = report.table()
    assert "DIFFERS" in text and "Qwen2-7B" in text and "no matrix" in text


def test_bad_content_gives_notes_not_crashes(tmp_path):
    (tmp_path / "notjson.json").write_text("this is not JSON {")
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "emptylist.json").write_text("[]")
    (tmp_path / "zero.json").write_bytes(b"")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "badmatrix.json").write_text(json.dumps(
        {"results": {"base": {"entropies": [[1.0, "x"]], "specialization": {"specialization_index": 0.5}}}}))
    names = ["notjson.json", "empty.json", "emptylist.json", "zero.json", "binary.json", "badmatrix.json"]
    report = audit_files([tmp_path / n for n in names])
    got = {r.file: r for r in report.rows}
    for n in ("notjson.json", "zero.json", "binary.json"):
        assert any(note.startswith("not a JSON file") for note in got[n].notes), n
    for n in ("empty.json", "emptylist.json"):
        assert any(note.startswith("nothing auditable") for note in got[n].notes), n
        assert got[n].no_matrix
    bad = got["badmatrix.json"]
    assert any("entropies not usable" in note for note in bad.notes) and bad.no_matrix
    assert bad.variants["base"].si_stored == 0.5
    assert "notjson.json" in report.table()
    json.dumps(report.to_dict(), allow_nan=False)


def test_missing_file_raises_naming_it(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(TLSpecError, match="nope.json"):
        audit_file(missing)
    with pytest.raises(TLSpecError, match="nope.json"):
        audit_files([DATA / GQA, missing])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tl-spec")
    add_audit_parser(parser.add_subparsers(dest="command"))
    return parser


def test_run_audit_writes_parseable_json(tmp_path, capsys):
    out = tmp_path / "sub" / "audit.json"
    args = _parser().parse_args(["audit", *map(str, FILES), "--paper-table", "--json", str(out)])
    assert args.func is run_audit
    assert run_audit(args) == 0
    doc = json.loads(out.read_text())
    assert [r["file"] for r in doc["rows"]] == [f.name for f in FILES]
    statuses = {c["row"]: c["status"] for c in doc["paper_table"]}
    assert statuses["LLaMA-2-7B"] == "DIFFERS" and statuses["Mistral-7B"] == "agree"
    row = next(r for r in doc["rows"] if r["file"] == GQA)
    assert "identical_seeds" in row["flags"] and row["variants"]["base"]["n_matrices"] == 3
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temporary file
    assert "Table 4" in capsys.readouterr().out


def test_run_audit_json_to_stdout_and_bad_input(tmp_path, capsys):
    assert run_audit(_parser().parse_args(["audit", str(DATA / GEMMA), "--json", "-"])) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["paper_table"] is None
    assert GEMMA in captured.err  # the table goes to stderr when JSON goes to stdout
    target = tmp_path / "never.json"
    args = _parser().parse_args(["audit", str(tmp_path / "missing.json"), "--json", str(target)])
    assert run_audit(args) == 2
    assert "missing.json" in capsys.readouterr().err and not target.exists()
