"""Study specs: models (and twin pairs), experiments with options, seeds and prompt sets.

A study is a TOML (or YAML) file, or the same structure as a Python dict::

    name = "zoo-twins"
    seeds = [0, 1, 2]                      # default seeds of every experiment that has one
    [[twins]]
    base = "zoo:base-gqa"
    tuned = "zoo:gqa-dpo-1"
    family = "gqa-dpo"
    [experiments.probe]
    sigma = 0.05
    n_resamples = 200

Every problem is a :class:`~tl_spec.errors.TLSpecError` naming the file, the line and the key,
raised before anything runs or is written.

>>> study = study_from_dict({"models": ["zoo:base-mha"], "experiments": {"si": {}}})
>>> [m.name for m in study.models.values()], study.experiments[0].kind
(['base-mha'], 'si')
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.prompts import PromptSet
from tl_spec.study.kinds import KINDS, check_kind_options
from tl_spec.study.source import KeyLines, KeyPath, read_study_file

__all__ = ["ExperimentSpec", "ModelSpec", "Study", "TwinSpec", "load_study", "study_from_dict"]

TOP_KEYS = ("name", "store", "seeds", "prompts", "retries", "prompt_sets", "models", "twins",
            "experiments")
MODEL_KEYS = ("name", "path", "backend", "dtype", "device", "family", "role")
TWIN_KEYS = ("base", "tuned", "family")
RESERVED = ("type", "models", "twins", "groups", "seeds", "prompts")
BUILTIN_PROMPTS = ("standard10", "e06", "standard10_e06")
_SETTINGS = ("path", "backend", "dtype", "device")


@dataclass(frozen=True)
class ModelSpec:
    """A model of the study: ``path`` is ``zoo:NAME``, a local directory or a hub name."""

    name: str
    path: str
    backend: str = "auto"
    dtype: str | None = None
    device: str | None = None
    family: str | None = None
    role: str | None = None

    @property
    def source(self) -> str:
        """``"zoo"``, ``"local"`` or ``"hub"``."""
        if self.path.startswith("zoo:"):
            return "zoo"
        return "local" if os.path.isabs(self.path) else "hub"

    def settings(self) -> dict[str, Any]:
        """What identifies the loaded model: path and load options (not the labels)."""
        return {k: getattr(self, k) for k in _SETTINGS}


@dataclass(frozen=True)
class TwinSpec:
    """A base model and its tuned twin (by model name), with the family they belong to."""

    base: str
    tuned: str
    family: str


@dataclass(frozen=True)
class ExperimentSpec:
    """One experiment table: its ``kind``, the models it runs on, seeds, prompt sets, options."""

    name: str
    kind: str
    options: dict[str, Any]
    units: tuple[tuple[str, ...], ...]
    seeds: tuple[int | None, ...]
    prompts: tuple[str, ...]
    line: int | None = None


@dataclass
class Study:
    """A parsed, validated study (see :func:`load_study`, :func:`study_from_dict`)."""

    name: str
    models: dict[str, ModelSpec]
    twins: list[TwinSpec]
    experiments: list[ExperimentSpec]
    prompt_sets: dict[str, PromptSet]
    store: Path
    retries: int = 2
    source: Path | None = None
    lines: KeyLines = field(default_factory=KeyLines, repr=False)

    def with_store(self, store: str | os.PathLike[str] | None) -> Study:
        """The same study with its results kept in ``store`` (unchanged when ``None``)."""
        return self if store is None else replace(self, store=Path(store).expanduser().resolve())


class _Ctx:
    """Where errors point: the file name and its key lines."""

    def __init__(self, where: str, lines: KeyLines, base_dir: Path) -> None:
        self.where, self.lines, self.base_dir = where, lines, base_dir

    def err(self, path: KeyPath, message: str) -> TLSpecError:
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path)
        dotted = dotted.replace(".[", "[")
        line = self.lines.line(path)
        at = f"{self.where}, line {line}" if line else self.where
        return TLSpecError(f"{at}: {dotted or 'top level'}: {message}")


def _unknown(ctx: _Ctx, path: KeyPath, table: Mapping[str, Any], allowed: tuple[str, ...],
             what: str) -> None:
    for key in table:
        if key not in allowed:
            raise ctx.err(path + (key,), f"unknown key {key!r} in {what}; allowed keys: "
                          f"{', '.join(allowed)}. Fix the spelling or remove it.")


def _seeds(ctx: _Ctx, path: KeyPath, value: Any) -> tuple[int, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise ctx.err(path, f"seeds must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ctx.err(path, f"seeds must be distinct, got {value!r}")
    return tuple(value)


def _names(ctx: _Ctx, path: KeyPath, value: Any, what: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
        raise ctx.err(path, f"{what} must be a name or a non-empty list of names, got {value!r}")
    return items


def _prompt_sets(ctx: _Ctx, table: Any) -> dict[str, PromptSet]:
    from tl_spec.prompts import E06_SET, STANDARD_10_SET, load_prompts, prompt_set

    both = prompt_set(STANDARD_10_SET.prompts + E06_SET.prompts, "standard10_e06")
    out = {"standard10": STANDARD_10_SET, "e06": E06_SET, "standard10_e06": both}
    if table is None:
        return out
    if not isinstance(table, dict):
        raise ctx.err(("prompt_sets",), "prompt_sets must be a table: name = [prompts] or "
                      "name = \"file.txt\" or name = {path = \"file.txt\", md5 = \"...\"}")
    for name, value in table.items():
        path = ("prompt_sets", name)
        if name in BUILTIN_PROMPTS:
            raise ctx.err(path, f"{name!r} is a built-in prompt set; give yours another name")
        try:
            if isinstance(value, list):
                out[name] = prompt_set(value, name)
            elif isinstance(value, (str, dict)):
                spec = {"path": value} if isinstance(value, str) else dict(value)
                _unknown(ctx, path, spec, ("path", "md5", "sha256"), f"prompt set {name!r}")
                if not isinstance(spec.get("path"), str):
                    raise TLSpecError(f"prompt set {name!r} needs a file path")
                file = ctx.base_dir / Path(spec["path"]).expanduser()
                out[name] = load_prompts(file, md5=spec.get("md5"), sha256=spec.get("sha256"),
                                         name=name)
            else:
                raise TLSpecError(f"give a list of prompts or a file path, got {value!r}")
        except TLSpecError as exc:
            if str(exc).startswith(ctx.where):
                raise
            raise ctx.err(path, str(exc)) from None
    return out


def _shown(value: Any) -> str:
    return "unset (the default)" if value is None else repr(value)


class _Models:
    """The model registry: every listing of a name must agree with the first one."""

    def __init__(self, ctx: _Ctx) -> None:
        self.ctx = ctx
        self.specs: dict[str, ModelSpec] = {}
        self.first: dict[str, KeyPath] = {}

    def resolve_path(self, path: KeyPath, text: str) -> tuple[str, str]:
        """``(canonical path, default name)`` of a model reference."""
        from tl_spec.zoo.registry import SETS

        zoo_names = {m.name for ms in SETS.values() for m in ms}
        if text.startswith("zoo:"):
            name = text[4:]
            if name not in zoo_names:
                raise self.ctx.err(path, f"unknown zoo model {name!r}; the zoo has "
                                   f"{', '.join(sorted(zoo_names)[:9])}, ... (`tl-spec zoo list`)")
            return text, name
        local = self.ctx.base_dir / Path(text).expanduser()
        if text.startswith(("/", ".", "~")) or local.exists() or text.count("/") >= 2:
            resolved = local.resolve()
            return str(resolved), resolved.name
        if text in zoo_names:
            return f"zoo:{text}", text
        return text, text

    def add(self, path: KeyPath, value: Any) -> str:
        """Register a model listing (a string or a table); return its name."""
        ctx = self.ctx
        if isinstance(value, str):
            value = {"path": value}
        if not isinstance(value, dict):
            raise ctx.err(path, "a model is a path string (zoo:NAME, a directory, a hub name) or "
                          f"a table with path = ..., got {value!r}")
        _unknown(ctx, path, value, MODEL_KEYS, "a model")
        for k, v in value.items():
            if not isinstance(v, str) or not v:
                raise ctx.err(path + (k,), f"{k} must be a non-empty string, got {v!r}")
        if "path" not in value:
            raise ctx.err(path, "a model needs path = \"zoo:NAME\" (or a directory, or a hub name)")
        canonical, default_name = self.resolve_path(path + ("path",), value["path"])
        backend = value.get("backend", "auto")
        if backend not in ("auto", "bridge", "hooked"):
            raise ctx.err(path + ("backend",),
                          f"backend must be auto, bridge or hooked, got {backend!r}")
        dtype = None
        if "dtype" in value:
            from tl_spec.models import resolve_dtype

            try:  # one spelling per dtype ("bf16" is "bfloat16"); float32 is the default
                dtype = str(resolve_dtype(value["dtype"])).removeprefix("torch.")
            except TLSpecError as exc:
                raise ctx.err(path + ("dtype",), str(exc)) from None
            dtype = None if dtype == "float32" else dtype
        spec = ModelSpec(name=value.get("name", default_name), path=canonical, backend=backend,
                         dtype=dtype, device=value.get("device"),
                         family=value.get("family"), role=value.get("role"))
        return self._merge(path, spec)

    def _merge(self, path: KeyPath, spec: ModelSpec) -> str:
        old = self.specs.get(spec.name)
        if old is None:
            self.specs[spec.name], self.first[spec.name] = spec, path
            return spec.name
        labels = {}
        for k in ("path", "backend", "dtype", "device", "family", "role"):
            a, b = getattr(old, k), getattr(spec, k)
            settles = k in _SETTINGS  # load settings must agree; labels may be left out once
            if a != b and (settles or (a is not None and b is not None)):
                first = self.ctx.lines.line(self.first[spec.name])
                at = f"line {first}" if first else ".".join(map(str, self.first[spec.name]))
                raise self.ctx.err(path, (
                    f"model {spec.name!r} is listed twice with different settings: {k} = "
                    f"{_shown(b)} here, {_shown(a)} at {at}. Use the same settings in both "
                    "places, or give one listing its own name = \"...\" so both are measured."))
            labels[k] = a if a is not None else b
        self.specs[spec.name] = ModelSpec(name=spec.name, **labels)
        return spec.name

    def ref(self, path: KeyPath, value: Any) -> str:
        """A reference to a model: a registered name, or a new listing."""
        if isinstance(value, str) and value in self.specs:
            return value
        return self.add(path, value)


def _twins(ctx: _Ctx, models: _Models, value: Any) -> list[TwinSpec]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ctx.err(("twins",), "twins must be a list of {base = ..., tuned = ...} tables "
                      "(or [[twins]] tables, or [base, tuned] pairs)")
    out = []
    for i, item in enumerate(value):
        path = ("twins", i)
        if isinstance(item, list) and len(item) == 2:
            item = {"base": item[0], "tuned": item[1]}
        if not isinstance(item, dict):
            raise ctx.err(path, f"a twin pair is {{base = ..., tuned = ...}} or [base, tuned], got "
                          f"{item!r}")
        _unknown(ctx, path, item, TWIN_KEYS, "a twin pair")
        for k in ("base", "tuned"):
            if k not in item:
                raise ctx.err(path, f"a twin pair needs {k} = (a model name or path)")
        base = models.ref(path + ("base",), item["base"])
        tuned = models.ref(path + ("tuned",), item["tuned"])
        if base == tuned:
            raise ctx.err(path, f"base and tuned are the same model ({base!r}); a twin pair "
                          "compares two different checkpoints")
        family = item.get("family") or models.specs[base].family or base
        if not isinstance(family, str):
            raise ctx.err(path + ("family",), f"family must be a string, got {family!r}")
        out.append(TwinSpec(base, tuned, family))
    return out


def _json_option(ctx: _Ctx, path: KeyPath, value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ctx.err(path, f"{value!r} is not a finite number")
        return value
    if isinstance(value, list):
        return [_json_option(ctx, path + (i,), v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _json_option(ctx, path + (k,), v) for k, v in value.items()}
    raise ctx.err(path, f"options take numbers, strings, booleans and lists, got {value!r}")


def _units(ctx: _Ctx, path: KeyPath, kind: str, table: dict[str, Any], models: _Models,
           twins: list[TwinSpec]) -> tuple[tuple[str, ...], ...]:
    arity = KINDS[kind].arity
    wrong = {"one": ("twins", "groups"), "twin": ("models", "groups"),
             "group": ("models", "twins")}[arity]
    for key in wrong:
        if key in table:
            use = {"one": "models", "twin": "twins", "group": "groups"}[arity]
            raise ctx.err(path + (key,), f"{kind} does not take {key}; it runs on {use}")
    if arity == "one":
        if "models" not in table:
            if not models.specs:
                raise ctx.err(path, f"{kind} runs on models, but the study lists none")
            return tuple((m,) for m in models.specs)
        names = _names(ctx, path + ("models",), table["models"], "models")
        return tuple((models.ref(path + ("models", i), n),) for i, n in enumerate(names))
    if arity == "twin":
        if "twins" not in table:
            if not twins:
                raise ctx.err(path, f"{kind} compares twin pairs, but the study lists no [[twins]]")
            return tuple((t.base, t.tuned) for t in twins)
        pairs = _twins(ctx, models, table["twins"])
        known = {(t.base, t.tuned) for t in twins}
        twins.extend(t for t in pairs if (t.base, t.tuned) not in known)
        return tuple((t.base, t.tuned) for t in pairs)
    groups = table.get("groups")
    if not isinstance(groups, list) or not groups:
        raise ctx.err(path, f"{kind} needs groups = [[\"model-a\", \"model-b\", ...], ...] "
                      "(two or more models of one architecture per group)")
    out = []
    for i, group in enumerate(groups):
        names = _names(ctx, path + ("groups", i), group, "a group")
        if len(names) < 2:
            raise ctx.err(path + ("groups", i), "a group needs two or more models")
        out.append(tuple(models.ref(path + ("groups", i, j), n) for j, n in enumerate(names)))
    return tuple(out)


def _experiment(ctx: _Ctx, name: str, table: Any, models: _Models, twins: list[TwinSpec],
                seeds: tuple[int, ...] | None, prompts: list[str] | None,
                sets: dict[str, PromptSet]) -> ExperimentSpec:
    path = ("experiments", name)
    if not isinstance(table, dict):
        raise ctx.err(path, f"an experiment is a table of options ([experiments.{name}]), got "
                      f"{table!r}")
    kind = table.get("type", name)
    if kind not in KINDS:
        missing = " (not part of this version of tl_spec)" if kind == "deconstruct" else ""
        raise ctx.err(path + (("type",) if "type" in table else ()),
                      f"experiment {kind!r} does not exist{missing}; available: "
                      f"{', '.join(KINDS)}. Name the table after one of them, or set "
                      "type = \"...\"")
    spec = KINDS[kind]
    allowed = tuple(spec.defaults())
    runs_on = {"one": "models", "twin": "twins", "group": "groups"}[spec.arity]
    structural = ("type", runs_on, "prompts") + (("seeds",) if spec.seed_param else ())
    for key in table:
        if key not in RESERVED and key not in allowed:
            raise ctx.err(path + (key,), f"unknown option {key!r} for experiment {kind!r}; it "
                          f"takes {', '.join(allowed)} (and {', '.join(structural)})")
    options = {k: _json_option(ctx, path + (k,), v) for k, v in table.items() if k not in RESERVED}
    units = _units(ctx, path, kind, table, models, twins)
    if "seeds" in table:
        if spec.seed_param is None:
            raise ctx.err(path + ("seeds",), f"{kind} is deterministic (no random seed), so it "
                          "takes no seeds; remove the key")
        cell_seeds: tuple[int | None, ...] = _seeds(ctx, path + ("seeds",), table["seeds"])
    elif spec.seed_param is None:
        cell_seeds = (None,)
    else:
        cell_seeds = seeds or tuple(spec.default_seeds() or [])
    names = (_names(ctx, path + ("prompts",), table["prompts"], "prompts") if "prompts" in table
             else prompts or [spec.default_prompts])
    for n in names:
        if n not in sets:
            where = path + ("prompts",) if "prompts" in table else ("prompts",)
            raise ctx.err(where, f"unknown prompt set {n!r}; define it under [prompt_sets] or use "
                          f"one of {', '.join(sets)}")
    for n in names:
        try:
            check_kind_options(spec, options, len(sets[n]))
        except TLSpecError as exc:
            bad = next((k for k in options if repr(k)[1:-1] in str(exc)), None)
            raise ctx.err(path + ((bad,) if bad else ()), str(exc)) from None
    return ExperimentSpec(name=name, kind=kind, options=options, units=units, seeds=cell_seeds,
                          prompts=tuple(names), line=ctx.lines.line(path))


def study_from_dict(data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None,
                    name: str | None = None, where: str = "study",
                    lines: KeyLines | None = None) -> Study:
    """Build a :class:`Study` from the file's structure (paths relative to ``base_dir``).

    >>> s = study_from_dict({"twins": [["zoo:base-gqa", "zoo:gqa-dpo-1"]],
    ...                      "experiments": {"delta": {"n_resamples": 200}}, "seeds": [1, 2]})
    >>> s.experiments[0].units, s.experiments[0].seeds
    ((('base-gqa', 'gqa-dpo-1'),), (1, 2))
    """
    base = Path(base_dir or Path.cwd()).expanduser().resolve()
    ctx = _Ctx(where, lines or KeyLines(), base)
    if not isinstance(data, Mapping):
        raise ctx.err((), f"a study is a table (dict) of keys, got {type(data).__name__}")
    _unknown(ctx, (), data, TOP_KEYS, "the study")
    study_name = data.get("name", name or "study")
    if (not isinstance(study_name, str) or not study_name.strip() or study_name in (".", "..")
            or any(c in study_name for c in "/\\") or not study_name.isprintable()):
        raise ctx.err(("name",), "name must be a non-empty string of printable characters "
                      f"without '/' or '\\' (it names the store directory), got {study_name!r}")
    retries = data.get("retries", 2)
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 20:
        raise ctx.err(("retries",), f"retries must be an integer from 0 to 20, got {retries!r}")
    seeds = _seeds(ctx, ("seeds",), data["seeds"]) if "seeds" in data else None
    prompts = _names(ctx, ("prompts",), data["prompts"], "prompts") if "prompts" in data else None
    sets = _prompt_sets(ctx, data.get("prompt_sets"))
    models = _Models(ctx)
    listed = data.get("models", [])
    if not isinstance(listed, list):
        raise ctx.err(("models",), "models must be a list (of paths, or of tables with path = ...)")
    for i, item in enumerate(listed):
        models.add(("models", i), item)
    twins = _twins(ctx, models, data.get("twins"))
    experiments = data.get("experiments")
    if not isinstance(experiments, dict) or not experiments:
        raise ctx.err(("experiments",), "a study needs at least one [experiments.NAME] table "
                      f"(NAME one of {', '.join(KINDS)})")
    exps = [_experiment(ctx, n, t, models, twins, seeds, prompts, sets)
            for n, t in experiments.items()]
    store = data.get("store")
    if store is not None and (not isinstance(store, str) or not store):
        raise ctx.err(("store",), f"store must be a directory path, got {store!r}")
    store_path = (base / Path(store).expanduser()) if store else base / f"{study_name}.store"
    return Study(name=study_name, models=models.specs, twins=twins, experiments=exps,
                 prompt_sets=sets, store=store_path.resolve(), retries=retries, lines=ctx.lines)


def load_study(path: str | os.PathLike[str]) -> Study:
    """Read and validate a study file (TOML; YAML with PyYAML installed).

    >>> study = load_study("zoo_study.toml")   # doctest: +SKIP
    """
    p = Path(path).expanduser()
    data, lines = read_study_file(p)
    study = study_from_dict(data, base_dir=p.resolve().parent, name=p.stem, where=p.name,
                            lines=lines)
    study.source = p.resolve()
    return study
