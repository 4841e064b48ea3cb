"""Golden values from the paper's reproduction package: every stored E11 `entropies` matrix and its SI.

:func:`collect` finds each place in the E11 result files (copied verbatim into
``tests/data/paper4/``) where an ``entropies`` matrix [layers, heads] sits next to
``specialization/specialization_index`` (base and instruct of six models; per-seed copies where the
file stores them).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from tl_spec.metrics.specialization import si_from_entropy_profile

DATA = Path(__file__).parent / "data" / "paper4"

# file -> (base entries, instruct entries): 4 files store one matrix per variant, 2 store 3 seeds each.
EXPECTED_COUNTS = {
    "E11T_gqa_comparison_20260113_181926.json": 6,
    "E11_falcon_territorial_collapse_20260113_195443.json": 2,
    "E11_gemma2_territorial_20260113_195146.json": 2,
    "E11_llama2_territorial_20260113_201152.json": 2,
    "E11_territorial_collapse_mistral_20260113_182026.json": 6,
    "E11_yi15_territorial_20260113_201056.json": 2,
}

# GUIDE section 1 / paper Eq. 2: Delta SI = (SI_instruct - SI_base) / SI_base * 100, from the matrices.
EXPECTED_DELTA_SI = {
    "E11_llama2_territorial_20260113_201152.json": ("LLaMA-2-7B", -20.4),
    "E11_yi15_territorial_20260113_201056.json": ("Yi-1.5-9B", -7.5),
    "E11_territorial_collapse_mistral_20260113_182026.json": ("Mistral-7B", 4.2),
    "E11_gemma2_territorial_20260113_195146.json": ("Gemma-2-9B", 1.9),
    "E11T_gqa_comparison_20260113_181926.json": ("LLaMA-3.1-8B", -56.3),
}


def collect(results_dir: Path) -> list[dict]:
    """Every dict holding `entropies` plus `specialization.specialization_index`, in every JSON file."""
    entries: list[dict] = []

    def walk(node, path: str, file: str, doc: dict) -> None:
        if isinstance(node, dict):
            spec = node.get("specialization")
            if "entropies" in node and isinstance(spec, dict) and "specialization_index" in spec:
                variant = next((v for v in ("instruct", "base") if f"/{v}" in f"/{path}"), None)
                config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
                model = config.get(variant) or doc.get("model")
                entries.append({"file": file, "path": f"{path}/entropies", "model": model,
                                "variant": variant, "entropies": node["entropies"],
                                "specialization_index": spec["specialization_index"]})
            for k, v in node.items():
                walk(v, f"{path}/{k}" if path else k, file, doc)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", file, doc)

    for f in sorted(Path(results_dir).glob("*.json")):
        doc = json.loads(f.read_text())
        walk(doc, "", f.name, doc if isinstance(doc, dict) else {})
    return entries


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return collect(DATA)


def test_reference_file_is_complete(entries):
    counts = defaultdict(int)
    for e in entries:
        counts[e["file"]] += 1
    assert len(entries) == 20
    assert dict(counts) == EXPECTED_COUNTS
    variants = defaultdict(set)
    for e in entries:
        variants[e["file"]].add(e["variant"])
        assert e["model"], e["path"]
        assert np.array(e["entropies"]).ndim == 2
    assert all(v == {"base", "instruct"} for v in variants.values())


def test_si_from_entropy_profile_reproduces_every_stored_si(entries):
    assert entries, "reference data is empty"
    for e in entries:
        si = si_from_entropy_profile(np.array(e["entropies"], dtype=np.float64))
        assert si == pytest.approx(e["specialization_index"], abs=1e-9, rel=0), (e["file"], e["path"])


def _si_by_variant(entries) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        out[e["file"]][e["variant"]].append(si_from_entropy_profile(np.array(e["entropies"])))
    return out


def test_seed_copies_are_identical(entries):
    """The 3-seed protocol repeats a deterministic pass: each seed gives the same SI (GUIDE sec. 1)."""
    for file, by_variant in _si_by_variant(entries).items():
        for variant, sis in by_variant.items():
            assert max(sis) - min(sis) < 1e-12, (file, variant, sis)


@pytest.mark.parametrize("file", sorted(EXPECTED_DELTA_SI))
def test_delta_si_from_stored_matrices(entries, file):
    label, expected = EXPECTED_DELTA_SI[file]
    sis = _si_by_variant(entries)[file]
    base, instruct = np.mean(sis["base"]), np.mean(sis["instruct"])
    delta = (instruct - base) / base * 100.0
    assert delta == pytest.approx(expected, abs=0.05), (label, delta)
