"""The ``tl-spec`` command: parse, call the public API, print. No measurement logic lives here.

>>> main(["describe", "path/to/checkpoint"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.options import SIOptions, StatsOptions

__all__ = ["build_parser", "main"]


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="local Hugging Face checkpoint directory, zoo model name "
                   "(`tl-spec zoo list`) or hub name (online)")
    _add_loading_args(p)


def _add_loading_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=("auto", "bridge", "hooked"),
                   help="TransformerLens backend (default: auto)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None,
                   help="prompt file (numbered 'N. text' or one per line) (default: Standard-10)")
    p.add_argument("--prompts-md5", default=None,
                   help="expected MD5 of '|||'.join(prompts) (default: not checked)")
    p.add_argument("--prompts-sha256", default=None,
                   help="expected SHA-256 of the file (default: not checked)")


def _add_noise_args(p: argparse.ArgumentParser) -> None:
    from tl_spec.hooks.noising import SITES

    p.add_argument("--seeds", default="42,123,456", help="comma-separated noise seeds")
    p.add_argument("--layers", default="all",
                   help="early|middle|late|all, START:STOP, or comma-separated layer indices")
    p.add_argument("--site", default="attn_out", help=f"one of {', '.join(SITES)}")
    p.add_argument("--relative", action="store_true", help="sigma in units of the site's RMS")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TLSpecError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _layer_spec(text: str) -> Any:
    if text in ("early", "middle", "late", "all"):
        return text
    if ":" in text:
        start, _, stop = text.partition(":")
        return tuple(_numbers(f"{start},{stop}", int, "--layers START:STOP"))
    return _numbers(text, int, "--layers")


def _noise_options(args: argparse.Namespace, sigmas: list[float]) -> dict[str, Any]:
    """Validate the noise options before any model is loaded."""
    from tl_spec.hooks.noising import check_noise_options

    seeds = _numbers(args.seeds, int, "--seeds")
    check_noise_options(site=args.site, sigmas=sigmas or [float("nan")], seeds=seeds)
    return dict(seeds=seeds, site=args.site, relative=args.relative,
                max_length=args.max_length, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tl-spec`` (one sub-command per measurement)."""
    parser = argparse.ArgumentParser(
        prog="tl-spec",
        description="Attention-head specialization measurements for TransformerLens models.",
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command")

    si = sub.add_parser("si", help="Specialization Index of one model")
    _add_model_args(si)
    SIOptions.add_arguments(si, exclude=("stat_dtype",))
    _add_prompt_args(si)
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
    dl.add_argument("--json", default=None, metavar="PATH|-",
                    help="write the result as JSON (atomically) to PATH, or to stdout with -")

    pr = sub.add_parser("probe", help="perturbation probe: SI response to attention-output noise")
    _add_model_args(pr)
    _add_noise_args(pr)
    pr.add_argument("--sigma", type=float, default=0.05)
    pr.add_argument("--method", default=None, help="SI method (probe: pattern; sweep: "
                    "entropy_profile)", choices=("pattern", "entropy_profile", "normalized_entropy"))
    pr.add_argument("--prompts", default=None, help="prompt file; default Standard-10")
    pr.add_argument("--prompts-md5", default=None)
    pr.add_argument("--sweep", action="store_true",
                    help="run the E11-T grid: --regions x --sigmas x --seeds")
    pr.add_argument("--sigmas", default="0,0.01,0.02,0.05,0.1,0.2", help="sweep sigmas")
    pr.add_argument("--regions", default="early,middle,late,all", help="sweep layer regions")
    pr.add_argument("--target-si", type=float, default=None,
                    help="sweep: report recovery towards this SI (e.g. the base twin's)")
    pr.add_argument("--json", default=None, metavar="PATH|-")

    se = sub.add_parser("sensitivity", help="perplexity slope against noise sigma (E06)")
    se.add_argument("model", help="model A: checkpoint directory or hub name")
    se.add_argument("model_b", nargs="?", default=None, help="optional model B to compare")
    se.add_argument("--backend", default="auto", choices=("auto", "bridge", "hooked"))
    se.add_argument("--dtype", default=None)
    se.add_argument("--device", default=None)
    _add_noise_args(se)
    se.add_argument("--sigmas", default="0,0.01,0.02,0.05,0.1,0.2")
    se.add_argument("--texts", default=None, help="text file; default the E06 texts")
    se.add_argument("--json", default=None, metavar="PATH|-")

    st = sub.add_parser("stability", help="per-head stability across independently trained models")
    st.add_argument("models", nargs="*", metavar="MODEL",
                    help="two or more checkpoints (directories, hub names or zoo model names)")
    st.add_argument("--study", default=None, choices=("refits",),
                    help="run seed 004's five claims on the zoo's refit set instead")
    st.add_argument("--seeds", type=int, default=None, help="--study: seeds per group (subset)")
    st.add_argument("--measure", default="pattern", choices=("pattern", "output"))
    st.add_argument("--null", type=int, default=2, help="random-init null models (0: none)")
    st.add_argument("--prompts", default=None,
                    help="prompt file; default: 32 held-out documents of the zoo corpus")
    st.add_argument("--prompts-md5", default=None)
    st.add_argument("--max-length", type=int, default=128)
    st.add_argument("--batch-size", type=int, default=8)
    st.add_argument("--n-blocks", type=int, default=16, help="prompt blocks for the bootstrap")
    st.add_argument("--n-resamples", type=int, default=1000)
    st.add_argument("--no-resid", action="store_true", help="skip resid_post CKA")
    st.add_argument("--backend", default="auto", choices=("auto", "bridge", "hooked"))
    st.add_argument("--dtype", default=None)
    st.add_argument("--device", default=None)
    st.add_argument("--json", default=None, metavar="PATH|-")

    dc = sub.add_parser("deconstruct", help="loss and SI under attention variants (seed 003)")
    dc.add_argument("model", nargs="?", default=None,
                    help="checkpoint directory, hub name or zoo name (or --trained)")
    dc.add_argument("--trained", action="store_true",
                    help="compare the zoo's models trained with each variant against standard "
                         "attention (needs `tl-spec zoo build variants`)")
    dc.add_argument("--backend", default="auto", choices=("auto", "bridge", "hooked"))
    dc.add_argument("--dtype", default=None)
    dc.add_argument("--device", default=None)
    dc.add_argument("--variants", default="no_mixing,uniform,static,form,decoupled",
                    help="comma-separated: no_mixing, uniform, static, form, decoupled")
    dc.add_argument("--placements", default="all,hybrid:2,single",
                    help="comma-separated: all, hybrid:K, single, early|middle|late")
    dc.add_argument("--form", default="relu", choices=("relu", "sigmoid", "softmax"))
    dc.add_argument("--source-layer", type=int, default=0, help="decoupled: resid_pre of this layer")
    dc.add_argument("--texts", default=None,
                    help="text file (one per line); default Standard-10 and the E06 texts")
    dc.add_argument("--max-length", type=int, default=128)
    dc.add_argument("--n-resamples", type=int, default=2000)
    dc.add_argument("--json", default=None, metavar="PATH|-")

    from tl_spec.study.cli import add_parser as add_study_parser

    add_study_parser(sub)

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

    dm = sub.add_parser("demo", help="the main job on the embedded zoo, offline")
    dm.add_argument("--out", default="tl_spec_demo", help="report directory")

    from tl_spec.audit import add_audit_parser

    add_audit_parser(sub)
    from tl_spec.viz.report import add_report_parser

    add_report_parser(sub)

    de = sub.add_parser("describe", help="architecture facts: heads, KV sharing, windows, rho_eff")
    _add_model_args(de)
    de.add_argument("--seq-len", type=int, default=None, help="say whether windows bind here")
    de.add_argument("--json", default=None, metavar="PATH|-")

    tiny = sub.add_parser("tiny", help="write a tiny random-init HF checkpoint (offline trials)")
    tiny.add_argument("path")
    from tl_spec.zoo.tiny import ARCHS

    tiny.add_argument("--arch", default="llama-gqa", choices=ARCHS)
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _emit_json(payload: str, target: str | None) -> None:
    from tl_spec.fileio import atomic_write_text

    if target == "-":
        sys.stdout.write(payload)
    elif target:
        atomic_write_text(target, payload)
        print(f"wrote {target}", file=sys.stderr)


def _cmd_si(args: argparse.Namespace) -> None:
    from tl_spec.experiments.si import specialization_index

    options = SIOptions.from_namespace(args)
    pset = _load_prompt_set(args)
    model = _load_any(args.model, args)
    result = specialization_index(model, pset, options=options, progress=sys.stderr.isatty())
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
    template: bool | str | None = None
    if args.chat_template == "tokenizer":
        template = True
    elif args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise TLSpecError(f"--chat-template {path}: no such file (give a Jinja template file, "
                              "or no value to use the tuned tokenizer's own template)")
        template = path.read_text(encoding="utf-8")
    base = _load_any(args.base, args)
    tuned = _load_any(args.tuned, args)
    result = delta_si(base, tuned, pset, si_options=si_options, stats=stats,
                      chat_template=template,
                      allow_different_tokenizers=args.allow_different_tokenizers)
    header = f"base: {args.base}\ntuned: {args.tuned}\nprompts: {pset.name} ({len(pset)})"
    _report(args, header, result.summary(), result)


def _cmd_probe(args: argparse.Namespace) -> None:
    from tl_spec import load_model, perturbation_probe, probe_sweep

    pset = _load_prompt_set(args)
    sigmas = _numbers(args.sigmas, float, "--sigmas") if args.sweep else [args.sigma]
    options = _noise_options(args, sigmas)
    layers = _layer_spec(args.layers)
    regions = [_layer_spec(r) for r in args.regions.split(",")] if args.sweep else None
    model = load_model(args.model, backend=args.backend, dtype=args.dtype, device=args.device)
    if args.sweep:
        result = probe_sweep(model, pset, sigmas=sigmas, regions=regions,
                             method=args.method or "entropy_profile", target_si=args.target_si,
                             progress=True, **options)
        frame = result.to_frame()
        text = (f"clean SI = {result.si_clean:.6f} ({result.method})\n"
                + frame.groupby(["region", "sigma"], sort=False)["si"].mean().unstack()
                .round(4).to_string())
    else:
        result = perturbation_probe(model, pset, sigma=args.sigma, layers=layers,
                                    method=args.method or "pattern", **options)
        text = result.summary()
    _report(args, f"model: {args.model}  prompts: {pset.name} ({len(pset)})", text, result)


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from tl_spec import compare_sensitivity, load_model, noise_sensitivity
    from tl_spec.prompts import E06_SET, load_prompts

    sigmas = _numbers(args.sigmas, float, "--sigmas")
    options = _noise_options(args, sigmas)
    texts = load_prompts(args.texts) if args.texts else E06_SET
    layers = _layer_spec(args.layers)
    results = []
    for name in [args.model] + ([args.model_b] if args.model_b else []):
        model = load_model(name, backend=args.backend, dtype=args.dtype, device=args.device)
        results.append(noise_sensitivity(model, texts, sigmas=sigmas, layers=layers,
                                         progress=True, **options))
    text = "\n\n".join(r.summary() for r in results)
    result: Any = results[0]
    if len(results) == 2:
        result = compare_sensitivity(*results)
        text += "\n\n" + result.summary()
    _report(args, f"texts: {texts.name} ({len(texts)})", text, result)


def _load_any(name: str, args: argparse.Namespace) -> Any:
    """A checkpoint directory or hub name, or the name of a zoo model."""
    from pathlib import Path

    from tl_spec import load_model, zoo

    if not Path(name).exists() and name in {m.name for ms in zoo.registry.SETS.values() for m in ms}:
        return zoo.load(name, backend=args.backend, dtype=args.dtype, device=args.device)
    return load_model(name, backend=args.backend, dtype=args.dtype, device=args.device)


def _cmd_stability(args: argparse.Namespace) -> None:
    from tl_spec import head_stability, stability_study
    from tl_spec.experiments.stability import _check_options
    from tl_spec.zoo.corpus import heldout_texts

    _check_options(args.measure, "lower", args.null, args.n_blocks, args.batch_size,
                   args.n_resamples)
    if args.study:
        if args.models:
            raise TLSpecError("give either MODEL arguments or --study, not both")
        study = stability_study(seeds=args.seeds, measure=args.measure, null=args.null,
                                n_blocks=args.n_blocks, n_resamples=args.n_resamples,
                                backend=args.backend, progress=sys.stderr.isatty())
        _report(args, f"study: {args.study}", study.table(), study)
        return
    if len(args.models) < 2:
        raise TLSpecError(f"stability needs two or more models, got {len(args.models)} "
                          "(or use --study refits)")
    prompts = list(_load_prompt_set(args).prompts) if args.prompts else heldout_texts(32)
    models = [_load_any(name, args) for name in args.models]
    result = head_stability(models, prompts, measure=args.measure, null=args.null,
                            resid=not args.no_resid, max_length=args.max_length,
                            batch_size=args.batch_size, n_blocks=args.n_blocks,
                            n_resamples=args.n_resamples, progress=sys.stderr.isatty())
    header = "models: " + ", ".join(args.models) + f"\nprompts: {len(prompts)}"
    _report(args, header, result.table(), result)


def _cmd_deconstruct(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tl_spec import deconstruct
    from tl_spec.experiments.deconstruct import _check
    from tl_spec.prompts import E06_TEXTS, STANDARD_10

    if args.trained:
        if args.model:
            raise TLSpecError("--trained uses the zoo's variants set; give no MODEL with it")
        from tl_spec import trained_variants_study

        study = trained_variants_study(n_resamples=args.n_resamples, backend=args.backend)
        _report(args, "trained variants (zoo set 'variants')", study.table(), study)
        return
    if not args.model:
        raise TLSpecError("give a MODEL (or --trained for the zoo's trained variants)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    _check(variants, args.form, args.n_resamples)
    if args.texts:
        path = Path(args.texts)
        if not path.is_file():
            raise TLSpecError(f"--texts {path}: no such file (one text per line)")
        texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    else:
        texts = list(STANDARD_10) + list(E06_TEXTS)
    model = _load_any(args.model, args)
    result = deconstruct(model, texts, variants=variants, placements=placements, form=args.form,
                         source_layer=args.source_layer, max_length=args.max_length,
                         n_resamples=args.n_resamples, progress=sys.stderr.isatty())
    _report(args, f"model: {args.model}  texts: {len(texts)}", result.table(), result)


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
    only = [x for x in args.only.split(",") if x] if args.only else None

    def done(name: str, metrics: dict) -> None:
        held = metrics.get("heldout_loss")
        extra = f", held-out loss {held:.3f}" if held is not None else ""
        print(f"built {name}{extra}", file=sys.stderr)

    root = zoo.build(args.set, out=args.out, only=only, workers=args.workers, on_done=done,
                     max_steps=args.max_steps, max_examples=args.max_examples)
    print(f"zoo set {args.set!r} complete in {root}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from tl_spec.demo import run_demo

    run_demo(args.out, progress=True)


def _cmd_describe(args: argparse.Namespace) -> None:
    from tl_spec import describe, load_model

    model = load_model(args.model, backend=args.backend, dtype=args.dtype, device=args.device)
    facts = describe(model, seq_len=args.seq_len)
    if args.json != "-":
        print(facts.table())
    if args.json:
        _emit_json(json.dumps(facts.to_dict(), indent=1) + "\n", args.json)


def _cmd_tiny(args: argparse.Namespace) -> None:
    from tl_spec.zoo.tiny import build_random_checkpoint

    path = build_random_checkpoint(args.path, arch=args.arch, seed=args.seed)
    print(f"wrote a random-init {args.arch} checkpoint to {path}")


def _cmd_report(args: argparse.Namespace) -> int:
    from tl_spec.viz.report import run_report

    return run_report(args)


def _cmd_audit(args: argparse.Namespace) -> int:
    from tl_spec.audit import run_audit

    return run_audit(args)


_COMMANDS: dict[str, Any] = {"si": _cmd_si, "delta": _cmd_delta, "describe": _cmd_describe,
                             "tiny": _cmd_tiny, "audit": _cmd_audit, "probe": _cmd_probe,
                             "sensitivity": _cmd_sensitivity, "zoo": _cmd_zoo,
                             "demo": _cmd_demo, "report": _cmd_report,
                             "stability": _cmd_stability, "deconstruct": _cmd_deconstruct,
                             "study": _cmd_study}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tl-spec``; returns the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
