"""The zoo's named models: recipes, where they live, loading, and resumable atomic builds.

The ``default`` set (three base models, MHA, GQA and sliding-window, and each base's SFT and DPO
twins at three seeds) ships inside the package in float16; ``tl-spec zoo build default`` rebuilds it in float32 from
the same recipe into the cache. Larger sets (``refits``) are built on demand into
``$TL_SPEC_CACHE`` (default ``~/.cache/tl_spec``). Every model is built in a temporary
directory and renamed into place only when complete, with a marker holding its recipe, metrics
and the SHA-256 of its weights; an interrupted build resumes where it stopped.

>>> [m.name for m in SETS["default"]][:3]
['base-gqa', 'base-mha', 'base-swa']
>>> model = load("base-gqa")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from importlib import resources
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from tl_spec.errors import TLSpecError
from tl_spec.experiments.controlled import TwinFamily
from tl_spec.experiments.stability_study import StudyGroup
from tl_spec.models import load_model
from tl_spec.sources import register_source
from tl_spec.zoo.align import (
    instruction_examples,
    preference_pairs,
    train_dpo,
    train_sft,
)
from tl_spec.corpus import load_corpus
from tl_spec.zoo.train import TrainConfig, train_base, train_tokenizer
from tl_spec.zoo.variant_models import ATTRIBUTE as _VARIANT_ATTRIBUTE

__all__ = ["MARKER", "SETS", "ZooEntry", "ZooModel", "available", "build", "cache_dir", "find",
           "load", "model_dir", "refit_groups", "twin_families", "variant_groups"]

MARKER = "tl_spec_zoo.json"
TOKENIZER = "tokenizer"
# Refits and trained variants keep the zoo's first base recipe (8 heads of width 8, text only):
# they measure seed-to-seed stability and variants against each other, not induction.
_BASE_V1 = dict(n_layers=4, d_model=64, n_heads=8, d_mlp=192, ctx=128, steps=1200,
                batch_size=16, lr=3e-3, warmup=60)
# The default set's base recipe: 4 heads of width 16 (at width 8 no induction heads formed at any
# budget tried) and an induction-head curriculum of repeated random-token sequences (README).
_BASE = {**_BASE_V1, "n_heads": 4, "steps": 2600, "copy_warmup": 1500, "copy_until": 0.4,
         "copy_frac": 0.125, "bos_frac": 0.5}
_TWIN_SEEDS = (1, 2, 3)
# Every base of the default set gets SFT and DPO twins with one recipe (seed = data order and
# preference sampling), so the twins differ from each other only in the attention they inherit.
TWIN_ARCHS = ("gqa", "mha", "swa")
_SFT = {"steps": 200, "lr": 1e-3, "batch_size": 16}
_DPO = {"steps": 150, "lr": 5e-4, "batch_size": 8, "beta": 0.1}
THREADS = 1  # torch threads per model build: part of the recipe (reductions follow it)


@dataclass(frozen=True)
class ZooModel:
    """A recipe: ``kind`` pretrain (from ``config``) or sft / dpo (from ``parent``, ``seed``)."""

    name: str
    set: str
    kind: str
    config: TrainConfig | None = None
    parent: str | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def recipe(self) -> dict[str, Any]:
        """JSON-ready recipe (what the marker records and what the build runs)."""
        out = {"name": self.name, "set": self.set, "kind": self.kind, "parent": self.parent,
               "seed": self.seed, "options": self.options}
        if self.config is not None:
            out["config"] = asdict(self.config)
        return out


def _default() -> list[ZooModel]:
    models = [
        ZooModel("base-gqa", "default", "pretrain", TrainConfig(n_kv_heads=2, seed=0, **_BASE)),
        ZooModel("base-mha", "default", "pretrain", TrainConfig(n_kv_heads=4, seed=0, **_BASE)),
        ZooModel("base-swa", "default", "pretrain",
                 TrainConfig(arch="mistral", n_kv_heads=2, sliding_window=32, seed=0, **_BASE)),
    ]
    for arch in TWIN_ARCHS:  # gqa first: its twins were the set's first, names unchanged
        for seed in _TWIN_SEEDS:
            models.append(ZooModel(f"{arch}-sft-{seed}", "default", "sft", parent=f"base-{arch}",
                                   seed=seed, options=dict(_SFT)))
        for seed in _TWIN_SEEDS:
            models.append(ZooModel(f"{arch}-dpo-{seed}", "default", "dpo",
                                   parent=f"{arch}-sft-{seed}", seed=seed, options=dict(_DPO)))
    return models


def _refits() -> list[ZooModel]:
    out = []
    for depth in (2, 4):
        for wd in (0.0, 0.1):
            for seed in range(5):
                cfg = TrainConfig(n_kv_heads=8, seed=seed, weight_decay=wd,
                                  **{**_BASE_V1, "n_layers": depth})
                out.append(ZooModel(f"refit-L{depth}-wd{wd:g}-s{seed}", "refits", "pretrain", cfg))
    return out


_PLACEMENTS = {"all": [0, 1, 2, 3], "hybrid2": [0, 2]}  # hybrid:2 keeps layers 1 and 3 standard


def _variants() -> list[ZooModel]:
    """Seed 003 at this scale: the first base-gqa recipe with an attention variant trained in."""
    out = [ZooModel(f"var-standard-s{seed}", "variants", "pretrain",
                    TrainConfig(n_kv_heads=2, seed=seed, **_BASE_V1)) for seed in range(3)]
    for variant in ("no_mixing", "uniform", "form", "decoupled"):
        for placement, layers in _PLACEMENTS.items():
            for seed in range(3):
                spec = {"variant": variant, "layers": layers, "form": "relu", "source_layer": 0}
                cfg = TrainConfig(n_kv_heads=2, seed=seed, variant=spec, **_BASE_V1)
                out.append(ZooModel(f"var-{variant}-{placement}-s{seed}", "variants", "pretrain",
                                    cfg))
    return out


SETS: dict[str, list[ZooModel]] = {"default": _default(), "refits": _refits(),
                                   "variants": _variants()}


def find(name: str) -> ZooModel:
    """The recipe called ``name``; a clear error listing the names otherwise."""
    for models in SETS.values():
        for m in models:
            if m.name == name:
                return m
    names = ", ".join(m.name for ms in SETS.values() for m in ms[:4]) + ", ..."
    raise TLSpecError(f"unknown zoo model {name!r}; `tl-spec zoo list` shows them all ({names})")


def cache_dir() -> Path:
    """``$TL_SPEC_CACHE``, else ``$XDG_CACHE_HOME/tl_spec``, else ``~/.cache/tl_spec``."""
    env = os.environ.get("TL_SPEC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "tl_spec"


def _shipped_root() -> Path:
    return Path(str(resources.files("tl_spec").joinpath("zoo/default")))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ready(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "model.safetensors").is_file()


def _verify(path: Path) -> dict[str, Any]:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TLSpecError(f"{path}: unreadable zoo marker ({exc}); delete the directory and run "
                          "`tl-spec zoo build` to rebuild it") from None
    if _sha256(path / "model.safetensors") != marker.get("weights_sha256"):
        raise TLSpecError(
            f"{path}: model.safetensors does not match the SHA-256 recorded when it was built "
            "(corrupted or modified); delete the directory and run `tl-spec zoo build "
            f"{marker.get('recipe', {}).get('set', 'SET')}` to rebuild it"
        )
    return marker


def model_dir(name: str, *, verify: bool = True) -> Path:
    """Directory of a ready zoo model: the cache first, then the copy shipped with tl_spec."""
    entry = find(name)
    for root in (cache_dir() / entry.set, _shipped_root()):
        path = root / name
        if _ready(path):
            if verify:
                _verify(path)
            return path
    raise TLSpecError(f"zoo model {name!r} is not built; run `tl-spec zoo build {entry.set}` "
                      f"(it goes to {cache_dir() / entry.set})")


def load(name: str, **load_kwargs: Any) -> Any:
    """A zoo model as a TransformerLens model (``tl_spec.load_model`` options apply).

    >>> model = load("gqa-dpo-1", backend="bridge")  # doctest: +SKIP
    """
    return load_model(model_dir(name), **load_kwargs)


def variant_groups(*, backend: str = "auto") -> tuple[list[Any], dict[tuple[str, str], list[Any]]]:
    """The ``variants`` set, loaded: ``(standard models, {(variant, placement): models})``.

    What :func:`tl_spec.trained_variants_study` compares (needs ``tl-spec zoo build variants``);
    each group holds one model per seed, with its trained-in variant attached.

    >>> standard, groups = variant_groups()                          # doctest: +SKIP
    >>> study = tl_spec.trained_variants_study(standard, groups, texts)  # doctest: +SKIP
    """
    standard: list[Any] = []
    groups: dict[tuple[str, str], list[Any]] = {}
    for m in SETS["variants"]:
        model = load(m.name, backend=backend)
        if m.config is None or m.config.variant is None:
            standard.append(model)
        else:
            placement = m.name.split("-")[-2]
            groups.setdefault((m.config.variant["variant"], placement), []).append(model)
    for models in groups.values():  # every model of a group carries its variant
        if any(getattr(x, _VARIANT_ATTRIBUTE, None) is None for x in models):
            raise TLSpecError("a zoo variant model loaded without its variant; rebuild the "
                              "variants set (`tl-spec zoo build variants`)")
    return standard, groups


def refit_groups(*, seeds: int | None = None, depths: Sequence[int] | None = None,
                 backend: str = "auto") -> list[StudyGroup]:
    """The zoo's refit set as study groups (built models only; a clear error otherwise).

    What :func:`tl_spec.stability_study` compares (needs ``tl-spec zoo build refits``).

    >>> [g.name for g in refit_groups(seeds=2)]  # doctest: +SKIP
    ['L2-wd0', 'L2-wd0.1', 'L4-wd0', 'L4-wd0.1']
    """
    found: dict[tuple[int, float], list[str]] = {}
    for m in SETS["refits"]:
        if m.config is None:
            raise TLSpecError(f"zoo model {m.name} of the refit set has no training config")
        key = (m.config.n_layers, m.config.weight_decay)
        if depths is None or key[0] in depths:
            found.setdefault(key, []).append(m.name)
    groups = []
    for (depth, wd), names in sorted(found.items()):
        names = names[:seeds] if seeds else names
        groups.append(StudyGroup(f"L{depth}-wd{wd:g}", depth, wd,
                                 [load(n, backend=backend) for n in names]))
    return groups


def twin_families(archs: Sequence[str] = ("mha", "gqa", "swa"), *,
                  seeds: Sequence[int] = _TWIN_SEEDS, backend: str = "auto") -> list[TwinFamily]:
    """The default set's bases with their SFT and DPO twins, one family per attention type.

    What :func:`tl_spec.controlled_alignment_study` compares (shipped: nothing to build). The
    order of ``archs`` is the order of the study's differences (later minus earlier).

    >>> [f.name for f in twin_families(("gqa", "swa"), seeds=(1,))]  # doctest: +SKIP
    ['gqa', 'swa']
    """
    archs, seeds = list(archs), list(seeds)
    bad = [a for a in archs if a not in TWIN_ARCHS]
    if bad or not archs or len(set(archs)) != len(archs):
        raise TLSpecError(f"archs must be distinct names among {', '.join(TWIN_ARCHS)}, got "
                          f"{archs}")
    if not seeds or any(s not in _TWIN_SEEDS for s in seeds) or len(set(seeds)) != len(seeds):
        raise TLSpecError(f"seeds must be distinct twin seeds among {list(_TWIN_SEEDS)}, got "
                          f"{seeds}")
    for name in [f"{a}-{k}-{s}" for a in archs for k in ("sft", "dpo") for s in seeds]:
        model_dir(name, verify=False)  # every twin exists before any is loaded
    return [TwinFamily(a, load(f"base-{a}", backend=backend),
                       [load(f"{a}-sft-{s}", backend=backend) for s in seeds],
                       [load(f"{a}-dpo-{s}", backend=backend) for s in seeds], seeds=tuple(seeds))
            for a in archs]


@dataclass(frozen=True)
class ZooEntry:
    """One line of ``tl-spec zoo list``."""

    name: str
    set: str
    kind: str
    ready: bool
    location: str


def available() -> list[ZooEntry]:
    """Every recipe, whether it is built, and where."""
    out = []
    for set_name, models in SETS.items():
        for m in models:
            where = [r / m.name for r in (cache_dir() / set_name, _shipped_root())]
            ready = [p for p in where if _ready(p)]
            out.append(ZooEntry(m.name, set_name, m.kind, bool(ready),
                                str(ready[0]) if ready else str(where[0])))
    return out


def _writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TLSpecError(
            f"cannot write to the zoo cache {root} ({exc.strerror}); set TL_SPEC_CACHE to a "
            "writable directory or pass out= / --out"
        ) from None


def _tokenizer(root: Path, corpus: Any) -> Path:
    path = root / TOKENIZER
    if not (path / "tokenizer.json").is_file():
        tmp = root / f".building-{TOKENIZER}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        train_tokenizer(corpus, tmp)
        os.replace(tmp, path)
    return path


def _capped(model: ZooModel, max_steps: int | None) -> ZooModel:
    """The recipe with at most ``max_steps`` optimisation steps (smoke builds and tests)."""
    if max_steps is None:
        return model
    config = model.config
    if config is not None:
        config = dataclasses.replace(config, steps=min(config.steps, max_steps),
                                     warmup=min(config.warmup, max_steps // 2),
                                     copy_warmup=min(config.copy_warmup, max_steps // 2))
    options = dict(model.options)
    if "steps" in options:
        options["steps"] = min(options["steps"], max_steps)
    return dataclasses.replace(model, config=config, options=options)


def _run(model: ZooModel, out: Path, root: Path, corpus: Any, progress: bool,
         max_examples: int | None = None) -> dict:
    if model.kind == "pretrain":
        if model.config is None:
            raise TLSpecError(f"zoo recipe {model.name} is a pretraining without a TrainConfig")
        return train_base(model.config, out, tokenizer_dir=_tokenizer(root, corpus),
                          corpus=corpus, progress=progress)
    parent = root / model.parent if model.parent else None
    if parent is None or not _ready(parent):
        raise TLSpecError(f"{model.name} needs {model.parent} built first in {root}")
    examples = instruction_examples(corpus.train, seed=0)[:max_examples]
    if model.kind == "sft":
        held = instruction_examples(corpus.heldout, seed=0)[:64]
        return train_sft(parent, out, examples, seed=model.seed, progress=progress,
                         eval_examples=held, **model.options)
    pairs = preference_pairs(examples, seed=model.seed)
    return train_dpo(parent, out, pairs, seed=model.seed, progress=progress, **model.options)


def _build_one(name: str, root: str, progress: bool, max_steps: int | None = None,
               max_examples: int | None = None) -> dict[str, Any]:
    """Build one model into ``root`` atomically (runs in a worker process or in-process)."""
    model, base = _capped(find(name), max_steps), Path(root)
    torch.set_num_threads(THREADS)  # part of the recipe: weights are bitwise reproducible
    corpus = load_corpus()
    tmp = base / f".building-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    metrics = _run(model, tmp, base, corpus, progress, max_examples)
    marker = {"recipe": model.recipe(), "metrics": metrics, "corpus": corpus.meta,
              "threads": THREADS, "caps": {"max_steps": max_steps, "max_examples": max_examples},
              "weights_sha256": _sha256(tmp / "model.safetensors")}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    final = base / name
    shutil.rmtree(final, ignore_errors=True)  # a directory without marker is not a model
    os.replace(tmp, final)
    return metrics


def build(
    set_name: str,
    *,
    out: str | Path | None = None,
    only: list[str] | None = None,
    workers: int = 1,
    progress: bool = True,
    on_done: Callable[[str, dict], None] | None = None,
    max_steps: int | None = None,
    max_examples: int | None = None,
) -> Path:
    """Build (or finish building) every model of ``set_name`` under ``out`` (default: the cache).

    Models already complete are skipped; leftovers of an interrupted build are removed first.
    Models of one stage (pretraining, then SFT, then DPO) build in ``workers`` processes of one
    thread each, so the weights do not depend on ``workers``. ``max_steps`` / ``max_examples``
    cap every recipe (smoke builds; the caps are recorded in each model's marker).
    """
    if set_name not in SETS:
        raise TLSpecError(f"unknown zoo set {set_name!r}; choose one of {', '.join(SETS)}")
    if not isinstance(workers, int) or workers < 1:
        raise TLSpecError(f"workers must be a positive integer, got {workers!r}")
    if only is not None:
        valid = [m.name for m in SETS[set_name]]
        unknown = [name for name in only if name not in valid]
        if unknown or not only:
            what = (f"{', '.join(map(repr, unknown))} not in the zoo set {set_name!r}" if unknown
                    else "no model names given")
            raise TLSpecError(f"only: {what}; choose among {', '.join(valid)}")
    root = Path(out) if out is not None else cache_dir() / set_name
    _writable(root)
    for stale in root.glob(".building-*"):
        shutil.rmtree(stale, ignore_errors=True)
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(THREADS)
        _tokenizer(root, load_corpus())
    finally:
        torch.set_num_threads(old_threads)
    models = [m for m in SETS[set_name] if only is None or m.name in only]
    for kind in ("pretrain", "sft", "dpo"):
        todo = [m.name for m in models if m.kind == kind and not _ready(root / m.name)]
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_build_one, n, str(root), False, max_steps, max_examples): n
                           for n in todo}
                for future in as_completed(futures):
                    metrics = future.result()
                    if on_done is not None:
                        on_done(futures[future], metrics)
            continue
        for name in todo:
            try:
                metrics = _build_one(name, str(root), progress, max_steps, max_examples)
            finally:
                torch.set_num_threads(old_threads)
            if on_done is not None:
                on_done(name, metrics)
    return root


register_source("refit_groups", refit_groups)
register_source("variant_groups", variant_groups)
register_source("twin_families", twin_families)

