"""Shared fixtures: tiny random checkpoints built once per session, models loaded once per session.

``tiny_checkpoints`` writes every architecture of :mod:`tl_spec.zoo.tiny` into a session temp dir.
``tl_model(arch, backend)`` loads a model through ``tl_spec.load_model`` and caches it (or the
``TLSpecError`` saying that backend cannot load that arch, which becomes a skip).
``hf_model(arch)`` is the same checkpoint as a Hugging Face eager-attention model, for references.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so test modules can `import hf_reference`
    sys.path.insert(0, str(TESTS_DIR))

BACKENDS = ("bridge", "hooked")
try:
    from transformer_lens import HookedTransformer  # noqa: F401
    HAS_HOOKED = True
except ImportError:  # TransformerLens 4 has only the bridge
    HAS_HOOKED = False
#: The backends this TransformerLens can load (tests that need a model of each, not a skip).
LOADABLE = ("bridge", "hooked") if HAS_HOOKED else ("bridge",)

# (method, region, aggregate); None = leave tl_spec's default (those methods ignore them).
COMBOS = [
    ("pattern", "lower", "prompt"),
    ("pattern", "full", "prompt"),
    ("pattern", "lower", "mean_pattern"),
    ("pattern", "full", "mean_pattern"),
    ("entropy_profile", None, None),
    ("normalized_entropy", None, None),
]


def si_kwargs(method: str, region: str | None, aggregate: str | None) -> dict:
    kw: dict = {"method": method}
    if region is not None:
        kw["region"] = region
    if aggregate is not None:
        kw["aggregate"] = aggregate
    return kw


def combo_id(c: tuple) -> str:
    return "-".join(x for x in c if x)


def standard10() -> tuple[str, ...]:
    """The 10 protocol prompts."""
    from tl_spec.prompts import STANDARD_10

    return tuple(STANDARD_10)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny architecture, built once: arch -> checkpoint directory."""
    from tl_spec.zoo.tiny import ARCHS, build_random_checkpoint

    root = tmp_path_factory.mktemp("tiny_ckpts")
    return {arch: build_random_checkpoint(root / arch, arch=arch, seed=0) for arch in ARCHS}


@pytest.fixture(scope="session")
def tl_model(tiny_checkpoints: dict[str, Path]) -> Callable[[str, str], Any]:
    """``tl_model(arch, backend)``: the tl_spec-loaded model, cached; skips if it cannot load."""
    cache: dict[tuple[str, str], Any] = {}

    def get(arch: str, backend: str) -> Any:
        import tl_spec

        key = (arch, backend)
        if key not in cache:
            try:
                cache[key] = tl_spec.load_model(tiny_checkpoints[arch], backend=backend)
            except tl_spec.TLSpecError as err:
                cache[key] = err
        got = cache[key]
        if isinstance(got, Exception):
            pytest.skip(f"{backend} cannot load {arch}: {got}")
        return got

    return get


@pytest.fixture(scope="session")
def hf_model(tiny_checkpoints: dict[str, Path]) -> Callable[[str], Any]:
    """``hf_model(arch)``: the same checkpoint through Hugging Face with eager attention, cached."""
    from hf_reference import load_hf

    cache: dict[str, Any] = {}

    def get(arch: str) -> Any:
        if arch not in cache:
            cache[arch] = load_hf(tiny_checkpoints[arch])
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def hf_atts(hf_model: Callable[[str], Any]) -> Callable[[str, Any], list]:
    """``hf_atts(arch, tokens)``: per-prompt per-layer float64 HF eager patterns, cached by tokens."""
    from hf_reference import hf_attentions

    cache: dict[tuple, list] = {}

    def get(arch: str, tokens: Any) -> list:
        key = (arch, tuple(tuple(int(t) for t in ids) for ids in tokens))
        if key not in cache:
            model = hf_model(arch)
            cache[key] = [hf_attentions(model, ids) for ids in key[1]]
        return cache[key]

    return get


@pytest.fixture(scope="session")
def si_result(tl_model: Callable[[str, str], Any]) -> Callable[..., Any]:
    """``si_result(arch, backend, **kwargs)``: ``tl_spec.specialization_index`` on Standard-10, cached."""
    cache: dict[tuple, Any] = {}

    def get(arch: str, backend: str, **kwargs: Any) -> Any:
        import tl_spec

        model = tl_model(arch, backend)
        key = (arch, backend, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = tl_spec.specialization_index(model, standard10(), max_length=128, **kwargs)
        return cache[key]

    return get
