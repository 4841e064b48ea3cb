"""The ``tl-spec`` command: parse, call the public API, print. No measurement logic lives here.

>>> main(["describe", "path/to/checkpoint"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tl_spec.cli.inputs import add_json_arg as _add_json_arg
from tl_spec.cli.inputs import add_loading_args as _add_loading_args
from tl_spec.cli.inputs import add_model_args as _add_model_args
from tl_spec.cli.inputs import add_prompt_args as _add_prompt_args
from tl_spec.cli.inputs import add_quiet_arg as _add_quiet_arg
from tl_spec.cli.inputs import check_creatable
from tl_spec.cli.inputs import check_models as _check_models
from tl_spec.cli.inputs import check_output as _check_output
from tl_spec.cli.inputs import check_text_file as _check_text_file
from tl_spec.cli.inputs import load_resolved as _load_resolved
from tl_spec.cli.inputs import progress as _progress
from tl_spec.errors import TLSpecError
from tl_spec.options import (
    DeconstructOptions,
    ProbeOptions,
    SensitivityOptions,
    SIOptions,
    StabilityOptions,
    StabilityStatsOptions,
    StatsOptions,
    SweepOptions,
)

__all__ = ["build_parser", "main"]


class _LazySubParsers(argparse._SubParsersAction):
    """Sub-commands whose flags live in heavy modules get them only when chosen.

    ``tl-spec --help`` lists every command from its one-line help without importing torch or
    TransformerLens; ``tl-spec audit --help`` (or any use of ``audit``) fills the parser first.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fillers: dict[str, tuple[argparse.ArgumentParser, Callable[[Any], None]]] = {}

    def add_lazy(self, name: str, help: str, fill: Callable[[Any], None]) -> None:
        """Register ``name`` now; ``fill(subparsers)`` adds its flags when it is parsed."""
        self._fillers[name] = (self.add_parser(name, help=help), fill)

    def fill(self, name: str) -> argparse.ArgumentParser:
        """The parser of ``name`` with all its flags (filled on first call)."""
        if name in self._fillers:
            parser, fill = self._fillers.pop(name)
            fill(_Existing(parser))
        return self._name_parser_map[name]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values and values[0] in self._fillers:
            self.fill(values[0])
        super().__call__(parser, namespace, values, option_string)


class _Existing:
    """Stands in for argparse subparsers: ``add_parser`` hands back an already made parser."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return self.parser

    def add_subparsers(self, **kwargs: Any) -> Any:  # pragma: no cover - not used by fillers
        return self.parser.add_subparsers(**kwargs)


def _fill_study(sub: Any) -> None:
    from tl_spec.study.cli import add_parser

    add_parser(sub)


def _fill_audit(sub: Any) -> None:
    from tl_spec.audit import add_audit_parser

    add_audit_parser(sub)


def _fill_controlled(sub: Any) -> None:
    from tl_spec.cli.controlled import add_controlled_parser

    add_controlled_parser(sub)


def _fill_report(sub: Any) -> None:
    from tl_spec.viz.report import add_report_parser

    add_report_parser(sub)


def _fill_length(sub: Any) -> None:
    from tl_spec.cli.length import add_parser

    add_parser(sub)


def _fill_tiny(sub: Any) -> None:
    from tl_spec.zoo.tiny import ARCHS

    tiny = sub.add_parser("tiny")
    tiny.add_argument("path", help="directory to create (refused if it is a file)")
    tiny.add_argument("--arch", default="llama-gqa", choices=ARCHS)
    tiny.add_argument("--seed", type=int, default=0)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tl-spec`` (one sub-command per measurement)."""
    parser = argparse.ArgumentParser(
        prog="tl-spec",
        description="Attention-head specialization measurements for TransformerLens models.",
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command", action=_LazySubParsers)

    si = sub.add_parser("si", help="Specialization Index of one model")
    _add_model_args(si)
    SIOptions.add_arguments(si, exclude=("stat_dtype",))
    _add_prompt_args(si)
    _add_quiet_arg(si)
    si.add_argument("--json", default=None, metavar="PATH|-",
                    help="write the result as JSON (atomically) to PATH, or to stdout with -")

    dl = sub.add_parser("delta", help="ΔSI between a base model and its tuned twin, with statistics")
    dl.add_argument("base", help="base model: checkpoint directory, zoo name or hub name")
    dl.add_argument("tuned", help="tuned model (same architecture)")
    _add_loading_args(dl)
    SIOptions.add_arguments(dl, exclude=("stat_dtype", "aggregate"))
    StatsOptions.add_arguments(dl)
    _add_prompt_args(dl)
    dl.add_argument("--chat-template", nargs="?", const="tokenizer", default=None,
                    metavar="FILE",
                    help="wrap prompts for the tuned model in its tokenizer's chat template, or "
                         "in the Jinja template read from FILE (default: no template)")
    dl.add_argument("--allow-different-tokenizers", action="store_true",
                    help="let each model tokenize the prompts itself (default: refuse models "
                         "that tokenize differently)")
    _add_quiet_arg(dl)
    dl.add_argument("--json", default=None, metavar="PATH|-",
                    help="write the result as JSON (atomically) to PATH, or to stdout with -")

    pr = sub.add_parser("probe", help="perturbation probe: SI response to attention-output noise")
    _add_model_args(pr)
    ProbeOptions.add_arguments(pr)
    pr.add_argument("--sweep", action="store_true",
                    help="run the E11-T grid: --regions x --sigmas x --seeds (default: one probe)")
    SweepOptions.add_arguments(pr, only=("sigmas", "regions", "target_si"))
    SIOptions.add_arguments(pr, exclude=("stat_dtype", "aggregate"))
    StatsOptions.add_arguments(pr)
    _add_prompt_args(pr)
    _add_quiet_arg(pr)
    _add_json_arg(pr)

    se = sub.add_parser("sensitivity", help="perplexity slope against noise sigma (E06)")
    se.add_argument("model", help="model A: checkpoint directory, zoo name or hub name")
    se.add_argument("model_b", nargs="?", default=None, help="optional model B to compare")
    _add_loading_args(se)
    SensitivityOptions.add_arguments(se)
    se.add_argument("--texts", default=None, help="text file (default: the E06 texts)")
    _add_quiet_arg(se)
    _add_json_arg(se)

    st = sub.add_parser("stability", help="per-head stability across independently trained models")
    st.add_argument("models", nargs="*", metavar="MODEL",
                    help="two or more checkpoints (directories, hub names or zoo model names)")
    st.add_argument("--study", default=None, choices=("refits",),
                    help="run seed 004's five claims on the zoo's refit set instead")
    st.add_argument("--seeds", type=int, default=None, metavar="N",
                    help="--study: seeds per group (default: all built)")
    _add_loading_args(st)
    StabilityOptions.add_arguments(st, exclude=("stat_dtype", "n_blocks"))
    st.add_argument("--n-blocks", type=int, default=16, metavar="G",
                    help="prompt blocks of the bootstrap (default: 16)")
    StabilityStatsOptions.add_arguments(st)
    _add_prompt_args(st, default="32 held-out documents of the zoo corpus")
    _add_quiet_arg(st)
    _add_json_arg(st)

    dc = sub.add_parser("deconstruct", help="loss and SI under attention variants (seed 003)")
    dc.add_argument("model", nargs="?", default=None,
                    help="checkpoint directory, hub name or zoo name (or --trained)")
    dc.add_argument("--trained", action="store_true",
                    help="compare the zoo's models trained with each variant against standard "
                         "attention (needs `tl-spec zoo build variants`)")
    _add_loading_args(dc)
    DeconstructOptions.add_arguments(dc)
    dc.add_argument("--texts", default=None,
                    help="text file, one per line (default: Standard-10 and the E06 texts)")
    _add_quiet_arg(dc)
    _add_json_arg(dc)

    sub.add_lazy("study", "declarative studies over many models: plan, run (resumable; local, "
                 "Dask or Ray), collect", _fill_study)

    zoo = sub.add_parser("zoo", help="the embedded model zoo: list, build")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="every zoo model, whether it is built, and where")
    zb = zsub.add_parser("build", help="build a set (resumable) into the cache or --out")
    zb.add_argument("set", help="default | refits | variants")
    zb.add_argument("--out", default=None, help="directory (default: $TL_SPEC_CACHE/<set>)")
    zb.add_argument("--only", default=None, help="comma-separated model names of the set")
    zb.add_argument("--workers", type=int, default=2,
                    help="models built in parallel (one thread each; weights do not change)")
    zb.add_argument("--max-steps", type=int, default=None, help="cap every recipe (smoke builds)")
    zb.add_argument("--max-examples", type=int, default=None, help=argparse.SUPPRESS)
    _add_quiet_arg(zb)

    dm = sub.add_parser("demo", help="the main job on the embedded zoo, offline")
    dm.add_argument("--out", default="tl_spec_demo", help="report directory")
    _add_quiet_arg(dm)

    sub.add_lazy("audit", "audit the paper's result files against its tables and claims", _fill_audit)
    sub.add_lazy("report", "a self-contained offline HTML report of result files", _fill_report)
    sub.add_lazy("controlled", "ΔSI of the zoo's SFT/DPO twins of MHA, GQA and SWA under one "
                 "recipe, with paired intervals (Table 4 under control)", _fill_controlled)

    de = sub.add_parser("describe", help="architecture facts: heads, KV sharing, windows, rho_eff")
    _add_model_args(de)
    de.add_argument("--seq-len", type=_positive_int, default=None, metavar="N",
                    help="say whether windows bind here (a positive token count)")
    de.add_argument("--json", default=None, metavar="PATH|-")

    sub.add_lazy("length", "SI at several prompt lengths; where sliding windows bind",
                 _fill_length)
    sub.add_lazy("tiny", "write a tiny random-init HF checkpoint (offline trials)", _fill_tiny)
    return parser


def _emit_json(payload: str, target: str | None) -> None:
    from tl_spec.fileio import atomic_write_text

    if target == "-":
        sys.stdout.write(payload)
    elif target:
        Path(target).expanduser().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, payload)
        print(f"wrote {target}", file=sys.stderr)


def _cmd_si(args: argparse.Namespace) -> None:
    from tl_spec.experiments.si import specialization_index

    options = SIOptions.from_namespace(args)
    _check_output(args.json)
    pset = _load_prompt_set(args)
    resolved = _check_models(args, [args.model])[0]
    model = _load_resolved(resolved, args)
    result = specialization_index(model, pset, options=options, progress=_progress(args))
    header = f"model: {args.model}  prompts: {pset.name} ({len(pset)})"
    _report(args, header, result.summary(), result)


def _report(args: argparse.Namespace, header: str, text: str, result: Any) -> None:
    """Print the human summary (to stderr when JSON goes to stdout) and write the JSON."""
    out = sys.stderr if args.json == "-" else sys.stdout
    print(header, file=out)
    print(text, file=out)
    if args.json:
        _emit_json(result.to_json(), args.json)


def _load_prompt_set(args: argparse.Namespace) -> Any:
    from tl_spec.prompts import STANDARD_10_SET, load_prompts

    if args.prompts:
        _check_text_file(args.prompts, "--prompts")
        return load_prompts(args.prompts, md5=args.prompts_md5,
                            sha256=getattr(args, "prompts_sha256", None))
    return STANDARD_10_SET


def _cmd_delta(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tl_spec.experiments.delta import delta_si

    si_options = SIOptions.from_namespace(args)
    stats = StatsOptions.from_namespace(args)
    pset = _load_prompt_set(args)
    stats.check_units(len(pset))
    _check_output(args.json)
    template: bool | str | None = None
    if args.chat_template == "tokenizer":
        template = True
    elif args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise TLSpecError(f"--chat-template {path}: no such file (give a Jinja template file, "
                              "or no value to use the tuned tokenizer's own template)")
        _check_text_file(str(path), "--chat-template")
        template = path.read_text(encoding="utf-8")
    base_at, tuned_at = _check_models(args, [args.base, args.tuned])
    base = _load_resolved(base_at, args)
    tuned = _load_resolved(tuned_at, args)
    result = delta_si(base, tuned, pset, si_options=si_options, stats=stats,
                      chat_template=template,
                      allow_different_tokenizers=args.allow_different_tokenizers,
                      progress=_progress(args))
    header = f"base: {args.base}\ntuned: {args.tuned}\nprompts: {pset.name} ({len(pset)})"
    _report(args, header, result.summary(), result)


def _cmd_probe(args: argparse.Namespace) -> None:
    from tl_spec.experiments.probe import perturbation_probe, probe_sweep

    si_values = {k: v for k, v in vars(args).items() if k in SIOptions.names()}
    si_options = SIOptions.build(**si_values) if si_values else None
    stats = StatsOptions.from_namespace(args)
    if args.sweep:
        options: Any = SweepOptions.from_namespace(args)
    else:
        options = ProbeOptions.from_namespace(args)
    pset = _load_prompt_set(args)
    if not args.sweep:
        stats.check_units(len(pset))
    _check_output(args.json)
    model = _load_resolved(_check_models(args, [args.model])[0], args)
    if args.sweep:
        result = probe_sweep(model, pset, options=options, si_options=si_options,
                             progress=_progress(args))
    else:
        given = {k: v for k, v in vars(args).items() if k in StatsOptions.names()}
        result = perturbation_probe(model, pset, options=options, si_options=si_options,
                                    stats=stats if given else None, progress=_progress(args))
    _report(args, f"model: {args.model}  prompts: {pset.name} ({len(pset)})", result.summary(),
            result)


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from tl_spec.experiments.sensitivity import compare_sensitivity, noise_sensitivity
    from tl_spec.prompts import E06_SET, load_prompts

    options = SensitivityOptions.from_namespace(args)
    _check_output(args.json)
    if args.texts:
        _check_text_file(args.texts, "--texts")
    texts = load_prompts(args.texts) if args.texts else E06_SET
    results = []
    names = [args.model] + ([args.model_b] if args.model_b else [])
    for resolved in _check_models(args, names):
        model = _load_resolved(resolved, args)
        results.append(noise_sensitivity(model, texts, options=options,
                                         progress=_progress(args)))
    text = "\n\n".join(r.summary() for r in results)
    result: Any = results[0]
    if len(results) == 2:
        result = compare_sensitivity(*results)
        text += "\n\n" + result.summary()
    _report(args, f"texts: {texts.name} ({len(texts)})", text, result)


def _cmd_stability(args: argparse.Namespace) -> None:
    from tl_spec.corpus import heldout_texts
    from tl_spec.experiments.stability import head_stability, stability_options
    from tl_spec.experiments.stability_study import stability_study

    values = {k: v for k, v in vars(args).items()
              if k in StabilityOptions.names() + StatsOptions.names()}
    options, stats = stability_options(**values)
    _check_output(args.json)
    if args.seeds is not None and args.seeds < 1:
        raise TLSpecError(f"--seeds must be a positive integer, got {args.seeds}")
    if args.study:
        if args.models:
            raise TLSpecError("give either MODEL arguments or --study, not both")
        from tl_spec.zoo.registry import refit_groups

        study_values = {k: v for k, v in values.items() if k in ("measure", "null", "n_blocks")}
        groups = refit_groups(seeds=args.seeds, backend=args.backend)
        study = stability_study(groups, heldout_texts(32), heldout_texts(16, offset=32),
                                stats=stats, progress=_progress(args), **study_values)
        _report(args, f"study: {args.study}", study.summary(), study)
        return
    if len(args.models) < 2:
        raise TLSpecError(f"stability needs two or more models, got {len(args.models)} "
                          "(or use --study refits)")
    prompts = _load_prompt_set(args) if args.prompts else heldout_texts(32)
    models = [_load_resolved(r, args) for r in _check_models(args, args.models)]
    result = head_stability(models, prompts, options=options, stats=stats,
                            progress=_progress(args))
    header = "models: " + ", ".join(args.models) + f"\nprompts: {len(prompts)}"
    _report(args, header, result.summary(), result)


def _cmd_deconstruct(args: argparse.Namespace) -> None:
    from tl_spec.experiments.deconstruct import deconstruct
    from tl_spec.prompts import E06_TEXTS, STANDARD_10

    options = DeconstructOptions.from_namespace(args)
    _check_output(args.json)
    if args.trained:
        if args.model:
            raise TLSpecError("--trained uses the zoo's variants set; give no MODEL with it")
        from tl_spec.corpus import heldout_texts
        from tl_spec.experiments.variant_study import N_HELDOUT_TEXTS, trained_variants_study
        from tl_spec.zoo.registry import variant_groups

        standard, trained = variant_groups(backend=args.backend)
        study = trained_variants_study(standard, trained, texts=heldout_texts(N_HELDOUT_TEXTS),
                                       n_resamples=options.n_resamples)
        _report(args, "trained variants (zoo set 'variants')", study.summary(), study)
        return
    if not args.model:
        raise TLSpecError("give a MODEL (or --trained for the zoo's trained variants)")
    if args.texts:
        texts = _check_text_file(args.texts, "--texts")
    else:
        texts = list(STANDARD_10) + list(E06_TEXTS)
    model = _load_resolved(_check_models(args, [args.model])[0], args)
    result = deconstruct(model, texts, options=options, progress=_progress(args))
    _report(args, f"model: {args.model}  texts: {len(texts)}", result.summary(), result)


def _cmd_study(args: argparse.Namespace) -> int:
    from tl_spec.study.cli import run as run_study_command

    return run_study_command(args)


def _cmd_zoo(args: argparse.Namespace) -> None:
    from tl_spec import zoo

    if args.zoo_command == "list":
        entries = zoo.available()
        width = max(len(e.name) for e in entries)
        print(f"{'name':<{width}}  {'set':<8} {'kind':<9} {'ready':<6} location")
        for e in entries:
            print(f"{e.name:<{width}}  {e.set:<8} {e.kind:<9} {'yes' if e.ready else 'no':<6} "
                  f"{e.location}")
        return
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only is not None else None

    def done(name: str, metrics: dict) -> None:
        held = metrics.get("heldout_loss")
        extra = f", held-out loss {held:.3f}" if held is not None else ""
        print(f"built {name}{extra}", file=sys.stderr)

    root = zoo.build(args.set, out=args.out, only=only, workers=args.workers, on_done=done,
                     max_steps=args.max_steps, max_examples=args.max_examples,
                     progress=_progress(args))
    print(f"zoo set {args.set!r} complete in {root}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from tl_spec.demo import run_demo

    run_demo(args.out, progress=_progress(args))


def _cmd_describe(args: argparse.Namespace) -> None:
    from tl_spec.models import describe

    _check_output(args.json)
    model = _load_resolved(_check_models(args, [args.model])[0], args)
    facts = describe(model, seq_len=args.seq_len)
    if args.json != "-":
        print(facts.table())
    if args.json:
        _emit_json(json.dumps(facts.to_dict(), indent=1) + "\n", args.json)


def _cmd_tiny(args: argparse.Namespace) -> None:
    from tl_spec.zoo.tiny import build_random_checkpoint

    target = Path(args.path).expanduser()
    if target.exists() and not target.is_dir():
        raise TLSpecError(f"{args.path}: is a file; give a directory for the checkpoint "
                          "(new, or one to overwrite)")
    check_creatable(target, args.path)
    path = build_random_checkpoint(args.path, arch=args.arch, seed=args.seed)
    print(f"wrote a random-init {args.arch} checkpoint to {path}")


def _cmd_report(args: argparse.Namespace) -> int:
    from tl_spec.viz.report import run_report

    return run_report(args)


def _cmd_audit(args: argparse.Namespace) -> int:
    from tl_spec.audit import run_audit

    return run_audit(args)


_COMMANDS: dict[str, Any] = {"si": _cmd_si, "delta": _cmd_delta, "describe": _cmd_describe,
                             "controlled": lambda a: __import__(  # its parser and runner
                                 "tl_spec.cli.controlled", fromlist=["run"]).run_controlled(a),
                             "tiny": _cmd_tiny, "audit": _cmd_audit, "probe": _cmd_probe,
                             "sensitivity": _cmd_sensitivity, "zoo": _cmd_zoo,
                             "demo": _cmd_demo, "report": _cmd_report,
                             "stability": _cmd_stability, "deconstruct": _cmd_deconstruct,
                             "study": _cmd_study, "length": lambda args: args.func(args)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-spec``; returns the exit status (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the error (or the help)
        return int(exc.code or 0)
    if args.version:
        from tl_spec.records import versions

        print(json.dumps(versions(), indent=1))
        return 0
    if not args.command:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            status = _COMMANDS[args.command](args)
    except TLSpecError as exc:
        print(f"tl-spec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
