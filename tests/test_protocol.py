"""The result protocol, checked on every result kind of the registry (no kind can be left out).

Each kind is built once, cheaply, on the tiny Llama GQA checkpoint (bridge: both TransformerLens
lines). For every kind: ``repr`` is one line under 400 characters naming the kind, its model(s)
and a headline number; ``_repr_html_`` holds a ``<table>`` and is under 200 kB (no array dump);
``summary()`` and its alias ``table()`` are the same text; ``to_frame()`` is a non-empty tidy
table without full paths; ``to_json`` / ``load_result`` round-trips to an equal record.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest

import tl_spec
from tl_spec.records import registry

PROMPTS = ["The cat sat on the mat and looked at the door.",
           "Paris is the capital of France, a country in Europe.",
           "Write a function that checks if a number is prime.",
           "Machine learning is a subset of artificial intelligence."]


@pytest.fixture(scope="module")
def models(tiny_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list:
    from tl_spec.zoo.tiny import build_random_checkpoint

    other = build_random_checkpoint(tmp_path_factory.mktemp("twin") / "llama-gqa-s1",
                                    arch="llama-gqa", seed=1)
    return [tl_spec.load_model(tiny_checkpoints["llama-gqa"], backend="bridge"),
            tl_spec.load_model(other, backend="bridge")]


def _sensitivity(m: Any) -> Any:
    return tl_spec.noise_sensitivity(m, PROMPTS, sigmas=(0.0, 0.05, 0.1), seeds=(1, 2),
                                     max_length=32)


def _claims_audit(ms: list) -> Any:  # no model: the paper's own result files (tests/data/paper4)
    from tl_spec.audit import claims_audit

    data = Path(__file__).parent / "data" / "paper4"
    return claims_audit(sorted(data.glob("E*.json")), claims=data / "claims.yaml")


def _study(ms: list) -> Any:
    groups = [tl_spec.StudyGroup("a", 2, 0.0, ms), tl_spec.StudyGroup("b", 2, 0.1, ms[::-1])]
    return tl_spec.stability_study(groups, prompts=PROMPTS * 3, texts=PROMPTS[:2], n_blocks=4,
                                   null=1, n_resamples=200)


def _controlled(ms: list) -> Any:
    families = [tl_spec.TwinFamily("a", ms[0], [ms[1]], [ms[1]]),
                tl_spec.TwinFamily("b", ms[1], [ms[0]], [ms[0]])]
    return tl_spec.controlled_alignment_study(families, PROMPTS, lengths=(32, 8),
                                              methods=("pattern",), n_resamples=200)


FACTORIES: dict[str, Callable[[list], Any]] = {
    "controlled_alignment": _controlled,
    "specialization_index": lambda ms: tl_spec.specialization_index(ms[0], PROMPTS, max_length=32),
    "delta_si": lambda ms: tl_spec.delta_si(ms[0], ms[1], PROMPTS, max_length=32,
                                            n_resamples=200),
    "perturbation_probe": lambda ms: tl_spec.perturbation_probe(ms[0], PROMPTS, seeds=(1, 2),
                                                                n_resamples=200, max_length=32),
    "probe_sweep": lambda ms: tl_spec.probe_sweep(ms[0], PROMPTS, sigmas=(0.0, 0.05),
                                                  regions=("early", "all"), seeds=(1,),
                                                  max_length=32),
    "noise_sensitivity": lambda ms: _sensitivity(ms[0]),
    "sensitivity_comparison": lambda ms: tl_spec.compare_sensitivity(_sensitivity(ms[0]),
                                                                     _sensitivity(ms[1])),
    "head_importance": lambda ms: tl_spec.head_importance(ms[0], PROMPTS, max_length=32),
    "head_stability": lambda ms: tl_spec.head_stability(ms, PROMPTS * 3, null=0, n_blocks=4,
                                                        n_resamples=200, max_length=32),
    "stability_study": _study,
    "deconstruct": lambda ms: tl_spec.deconstruct(ms[0], PROMPTS, variants=["uniform"],
                                                  placements=["all"], n_resamples=200,
                                                  max_length=32),
    "length_profile": lambda ms: tl_spec.length_profile(ms[0], PROMPTS, (8, 16, 32),
                                                        n_resamples=200),
    "variant_study": lambda ms: tl_spec.trained_variants_study(
        ms[:1], {("uniform", "all"): ms[1:]}, texts=PROMPTS, n_resamples=200),
    "claims_audit": _claims_audit,
}


def test_every_result_kind_has_a_factory() -> None:
    import tl_spec.results  # noqa: F401  (registers every kind)

    assert sorted(FACTORIES) == sorted(registry())


@pytest.fixture(scope="module")
def built(models: list) -> dict[str, Any]:
    return {}


def _result(kind: str, models: list, built: dict[str, Any]) -> Any:
    if kind not in built:
        built[kind] = FACTORIES[kind](models)
    return built[kind]


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_protocol(kind: str, models: list, built: dict[str, Any], tmp_path: Path) -> None:
    r = _result(kind, models, built)
    assert r.kind == kind and type(r) is registry()[kind]
    text = repr(r)
    assert "\n" not in text and len(text) < 400, text
    assert text.startswith(type(r).__name__ + "(")
    headline = r.headline()
    assert headline, "a result has headline numbers"
    numbers = [v for v in headline.values() if isinstance(v, (int, float))]
    assert numbers and any(math.isfinite(v) for v in numbers), headline
    assert any(name in text for name in ("llama-gqa", "tiny", "s1")) or r.model_names(), text
    page = r._repr_html_()
    assert "<table" in page and len(page.encode()) < 200_000
    assert "[[" not in page and "array(" not in page  # never an array dump
    summary = r.summary()
    assert isinstance(summary, str) and summary.strip() and r.table() == summary
    assert str(r) == summary
    frame = r.to_frame()
    assert len(frame) > 0 and len(frame.columns) > 1
    for col in frame.columns:
        assert not frame[col].astype(str).str.contains("/tmp/|/root/", regex=True).any(), col
    path = tmp_path / f"{kind}.json"
    r.to_json(path)
    back = tl_spec.load_result(path)
    assert type(back) is type(r)
    assert json.loads(back.to_json()) == json.loads(r.to_json())
    assert repr(back) == repr(r)


def test_si_repr_reads_like_the_example(models: list, built: dict[str, Any]) -> None:
    r = _result("specialization_index", models, built)
    assert repr(r) == (f"SIResult(pattern, {r.model_names()[0]}, SI={r.value:.3g}, "
                       f"prompts=4, 3x8 heads)")
    html = r._repr_html_()
    assert html.count("<td") >= r.n_layers * r.n_heads  # the heat table's cells
