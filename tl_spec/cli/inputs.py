"""What the ``tl-spec`` commands check before anything is loaded: model names, paths, files, flags.

A model argument is resolved in this order: a local checkpoint directory, a zoo model (its name
or ``zoo:NAME``), a Hugging Face hub name that is cached or answers within seconds. Anything else
is a :class:`~tl_spec.errors.TLSpecError` (exit status 2) before the first model loads.

>>> resolve_model("zoo:base-gqa")  # doctest: +SKIP
('zoo', 'base-gqa')
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_spec.checkpoints import check_hub_name
from tl_spec.errors import TLSpecError

__all__ = ["add_json_arg", "add_loading_args", "add_model_args", "add_prompt_args",
           "add_quiet_arg", "check_creatable", "check_loading", "check_models", "check_output",
           "check_text_file", "load_resolved", "progress", "resolve_model"]


def progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and never with ``--quiet``."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def check_output(path: str | None, flag: str = "--json") -> None:
    """Refuse an output path that cannot be written, before anything is loaded or measured.

    >>> check_output("-"), check_output("results/new/si.json")
    (None, None)
    >>> check_output(".")
    Traceback (most recent call last):
    tl_spec.errors.TLSpecError: --json .: is a directory; give a file path, e.g. result.json
    """
    if path is None or path == "-":
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise TLSpecError(f"{flag} {path}: is a directory; give a file path, e.g. "
                          f"{p / 'result.json'}")
    if p.exists() and not os.access(p, os.W_OK):
        raise TLSpecError(f"{flag} {path}: the file exists and is not writable; choose another "
                          "path or fix its permissions")
    check_creatable(p, f"{flag} {path}")


def check_creatable(p: Path, label: str) -> None:
    """Raise unless the nearest existing ancestor of ``p`` is a writable directory."""
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TLSpecError(f"{label}: {ancestor} is a file, so no directory can be made there; "
                          "choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise TLSpecError(f"{label}: directory {ancestor} is not writable; choose another path")


def check_text_file(path: str, flag: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file; a clear error for anything else."""
    p = Path(path).expanduser()
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "does not exist"
        raise TLSpecError(f"{flag} {path}: {why}; give a UTF-8 text file, one text per line")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TLSpecError(f"{flag} {path}: not UTF-8 text (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r}); save the file as UTF-8"
                          ) from None
    except OSError as exc:
        raise TLSpecError(f"{flag} {path}: cannot be read ({exc.strerror})") from None
    lines = [t for t in text.splitlines() if t.strip() and not t.lstrip().startswith("#")]
    if not lines:
        raise TLSpecError(f"{flag} {path}: the file has no text (only blank or '#' comment "
                          "lines); put one text per line")
    return lines


def check_loading(args: argparse.Namespace) -> None:
    """Refuse a bad --device or --dtype before any model is loaded."""
    device = getattr(args, "device", None)
    if device is not None:
        import torch

        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError, TypeError):
            raise TLSpecError(f"--device {device!r}: not a device; use cpu, cuda, cuda:1, mps, "
                              "...") from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise TLSpecError(f"--device {device}: no CUDA device is available here; use cpu")
        if (parsed.type == "cuda" and parsed.index is not None
                and parsed.index >= torch.cuda.device_count()):
            raise TLSpecError(f"--device {device}: only {torch.cuda.device_count()} CUDA "
                              "device(s) here")
        if parsed.type == "mps" and not torch.backends.mps.is_available():
            raise TLSpecError(f"--device {device}: MPS is not available here; use cpu")
    if getattr(args, "dtype", None) is not None:
        from tl_spec.models import resolve_dtype

        resolve_dtype(args.dtype)


def zoo_names() -> list[str]:
    from tl_spec.zoo.registry import SETS

    return [m.name for models in SETS.values() for m in models]


def resolve_model(name: str) -> tuple[str, str]:
    """``(kind, target)`` for a model argument: a local directory, a zoo model, a hub name.

    >>> resolve_model("zoo:base-gqa"), resolve_model("base-gqa")  # doctest: +SKIP
    (('zoo', 'base-gqa'), ('zoo', 'base-gqa'))

    Checked in that order, without loading anything; a name that is none of them (or a hub name
    that is neither cached nor reachable within seconds) is a :class:`TLSpecError`.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return "dir", str(path)
    zoo_name = name.removeprefix("zoo:")
    names = zoo_names()
    if zoo_name in names:
        from tl_spec.zoo.registry import model_dir

        model_dir(zoo_name, verify=False)  # not built: a clear error naming the build command
        return "zoo", zoo_name
    if name.startswith("zoo:"):
        raise TLSpecError(f"{name!r}: no zoo model {zoo_name!r}; `tl-spec zoo list` shows them "
                          f"({', '.join(names[:6])}, ...)")
    if path.exists():
        raise TLSpecError(f"{name!r} is a file; a model is a checkpoint directory, a zoo model "
                          "name or a hub name")
    check_hub_name([name])  # cached, or the hub reachable; else a TLSpecError (exit 2)
    return "hub", name


def load_resolved(resolved: tuple[str, str], args: argparse.Namespace) -> Any:
    kind, target = resolved
    kwargs = {"backend": getattr(args, "backend", "auto"), "dtype": getattr(args, "dtype", None),
              "device": getattr(args, "device", None)}
    if kind == "zoo":
        from tl_spec.zoo import load

        return load(target, **kwargs)
    from tl_spec.models import load_model

    return load_model(target, **kwargs)


def check_models(args: argparse.Namespace, names: Sequence[str]) -> list[tuple[str, str]]:
    """The loading flags and every model name, checked before the first model is loaded."""
    check_loading(args)
    return [resolve_model(name) for name in names]


# The flags several sub-commands share (defined once; tl_spec.cli and its command modules use them).

def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    """`--quiet`."""
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (they are also off when stderr is not a terminal)")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The positional MODEL and the loading flags."""
    p.add_argument("model", help="local Hugging Face checkpoint directory, zoo model name "
                   "(`tl-spec zoo list`, also as zoo:NAME) or hub name (online or cached)")
    add_loading_args(p)


def add_loading_args(p: argparse.ArgumentParser) -> None:
    """`--backend`, `--dtype`, `--device`."""
    p.add_argument("--backend", default="auto", choices=("auto", "bridge", "hooked"),
                   help="TransformerLens backend (default: auto)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16, float16, float64")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")


def add_json_arg(p: argparse.ArgumentParser) -> None:
    """`--json PATH|-`."""
    p.add_argument("--json", default=None, metavar="PATH|-",
                   help="write the result as JSON (atomically) to PATH, or to stdout with - "
                        "(default: not written)")


def add_prompt_args(p: argparse.ArgumentParser, default: str = "Standard-10") -> None:
    """`--prompts`, `--prompts-md5`, `--prompts-sha256`."""
    p.add_argument("--prompts", default=None,
                   help=f"prompt file (numbered 'N. text' or one per line) (default: {default})")
    p.add_argument("--prompts-md5", default=None,
                   help="expected MD5 of '|||'.join(prompts) (default: not checked)")
    p.add_argument("--prompts-sha256", default=None,
                   help="expected SHA-256 of the file (default: not checked)")
