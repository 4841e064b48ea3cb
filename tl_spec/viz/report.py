"""One self-contained, offline HTML report from result files: provenance, tables, head grids.

Each result becomes a section through the renderer registered for its ``kind``
(:mod:`tl_spec.viz.sections`). With a model (``model=``, or the local directory recorded in a
result's provenance) every grid gets drill-down attention patterns on ``prompt`` (default: the
first Standard-10 prompt); otherwise the grid says why it has none. The same inputs give the
same bytes, so reports can be diffed.

>>> path = write_report(["si.json", "delta.json"], "report_dir")   # doctest: +SKIP
>>> path.name                                                       # doctest: +SKIP
'report.html'

``tl-spec report si.json delta.json --out report_dir [--model PATH] [--prompt TEXT]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tl_spec.errors import TLSpecError
from tl_spec.fileio import atomic_write_text
from tl_spec.records import versions
from tl_spec.results import load_result
from tl_spec.viz.html import data_script, esc, page
from tl_spec.viz.patterns import check_decimals
from tl_spec.viz.sections import ReportContext, Section, references_html, render_section

__all__ = ["REPORT_CSS", "REPORT_FILE", "add_report_parser", "render_report", "run_report",
           "write_report"]

REPORT_FILE = "report.html"

REPORT_CSS = r"""
body.tlspec{margin:0;background:#f6f8fa}
.r-wrap{max-width:1400px;margin:0 auto;padding:28px 28px 20px}
.r-head h1{font-size:24px;font-weight:650;letter-spacing:-.01em;margin:0 0 4px}
.r-meta{color:var(--muted);font-size:13px;margin:0}
.r-toc{display:flex;flex-wrap:wrap;gap:6px 8px;margin:14px 0 0;padding:0;list-style:none}
.r-toc a{display:inline-block;font-size:13px;color:var(--ink);text-decoration:none;background:#fff;
 border:1px solid var(--line);border-radius:999px;padding:3px 12px}
.r-toc a:hover{border-color:var(--ink)}
.r-section{background:#fff;border:1px solid var(--line);border-radius:12px;padding:20px 24px;
 margin:18px 0;box-shadow:0 1px 2px rgba(31,35,40,.04)}
.r-section h2{font-size:18px;font-weight:650;margin:0}
.r-sub{color:var(--muted);font-size:12.5px;margin:2px 0 0;font-family:var(--mono);word-break:break-all}
.r-section h3{font-size:14px;font-weight:600;margin:20px 0 8px}
.r-stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(180px,1fr));gap:10px;margin:16px 0 4px}
.r-stat{background:var(--soft);border:1px solid #eaeef2;border-radius:8px;padding:10px 14px}
.r-stat-k{font-size:12px;color:var(--muted)}
.r-stat-v{font-size:22px;font-weight:600;line-height:1.3}
.r-stat-n{font-size:12px;color:var(--muted)}
.r-table{border-collapse:collapse;font-size:13px}
.r-table th{font-weight:500;color:var(--muted);text-align:left;border-bottom:1px solid var(--line);
 padding:5px 12px 5px 0;white-space:nowrap}
.r-table td{border-bottom:1px solid #eaeef2;padding:4px 12px 4px 0;white-space:nowrap}
.r-table td:first-child{font-family:var(--mono);color:var(--muted)}
.r-hl td{background:#fdf3ef}
.r-bar{display:inline-block;width:140px;height:8px;background:#edf0f3;border-radius:4px;
 overflow:hidden;vertical-align:middle}
.r-bar span{display:block;height:100%;background:#2d7e97;border-radius:4px}
.r-forest{position:relative;display:inline-block;width:220px;height:14px;vertical-align:middle}
.r-zero{position:absolute;left:50%;top:0;bottom:0;width:1px;background:#8c959f}
.r-ci{position:absolute;top:6px;height:2px;background:#59636e;border-radius:1px}
.r-dot{position:absolute;top:3px;width:8px;height:8px;margin-left:-4px;border-radius:50%;background:#59636e}
.r-changed .r-ci,.r-changed .r-dot{background:#b85844}
.r-axis{font-weight:400;font-size:11px;height:16px}
.r-axis span{position:absolute;top:0}
.r-prov summary{cursor:pointer;color:var(--muted);font-size:13px;margin-top:16px}
.r-kv{border-collapse:collapse;font-size:12px;margin-top:6px}
.r-kv th{font:400 12px var(--mono);color:var(--muted);text-align:left;padding:2px 16px 2px 0;
 vertical-align:top;white-space:nowrap}
.r-kv td{font-family:var(--mono);padding:2px 0;word-break:break-all}
.r-foot{color:var(--muted);font-size:12px;margin:26px 0 0}
.r-section .tlspec-grid{background:#fff}
.r-chart{margin:8px 0 12px;max-width:100%}
.r-chart svg{display:block;max-width:100%;height:auto}
.r-chart svg *{stroke-linejoin:round;stroke-linecap:butt}
.r-cite{color:inherit;text-decoration:underline dotted}
.r-refs{margin:18px 0 0;font-size:12.5px;color:var(--muted)}
.r-refs h2{font-size:14px;font-weight:600;margin:0 0 4px;color:var(--ink)}
.r-refs ol{margin:0;padding-left:20px}
"""


def _check_inputs(results: Sequence[Any], out_dir: Any, model: Any, tuned_model: Any,
                  prompt: Any) -> list[Any]:
    if isinstance(results, (str, os.PathLike)) or not results:
        raise TLSpecError("results must be a non-empty list of result files (or result objects); "
                          "wrap a single file in a list")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        out = Path(out_dir)
        raise TLSpecError(f"--out {out} is a file; give a directory for the report")
    for flag, ref in (("--model", model), ("--tuned-model", tuned_model)):
        if isinstance(ref, (str, os.PathLike)) and not Path(ref).is_dir():
            raise TLSpecError(f"{flag} {ref}: no such checkpoint directory (give the local "
                              "Hugging Face directory the results were measured on)")
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise TLSpecError(f"--prompt must be a non-empty text, got {prompt!r}")
    loaded = []
    for item in results:
        loaded.append(load_result(item) if isinstance(item, (str, os.PathLike)) else item)
        if not hasattr(loaded[-1], "kind"):
            raise TLSpecError(f"{item!r} is not a tl_spec result (no 'kind'); give result files")
    return loaded


def _section_html(i: int, s: Section) -> str:
    sub = f'<p class="r-sub">{esc(s.subtitle)}</p>' if s.subtitle else ""
    return f'<section class="r-section" id="s{i}"><h2>{esc(s.title)}</h2>{sub}{s.html}</section>'


def render_report(
    results: Sequence[Any],
    *,
    model: Any = None,
    tuned_model: Any = None,
    prompt: str | None = None,
    title: str | None = None,
    decimals: int = 3,
) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    check_decimals(decimals)
    loaded = _check_inputs(results, None, model, tuned_model, prompt)
    return _render(results, loaded, ReportContext(model=model, tuned_model=tuned_model,
                                                  prompt=prompt, decimals=decimals), title)


def _render(results: Sequence[Any], loaded: list[Any], ctx: ReportContext, title: str | None) -> str:
    import circuitsvis  # a large wheel, needed only when a report is rendered

    sections = [render_section(r, ctx) for r in loaded]
    sets = {ps.key: ps for s in sections for g in s.grids for ps in g.pattern_sets}
    names = [Path(r).name if isinstance(r, (str, os.PathLike)) else getattr(r, "kind", "result")
             for r in results]
    heading = title or "tl_spec report"
    toc = "".join(f'<li><a href="#s{i}">{esc(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    drill = (f"drill-down prompt “{esc(ctx.the_prompt())}”" if sets
             else "no attention patterns (grid only)")
    content = "".join(_section_html(i, s) for i, s in enumerate(sections, 1))
    tool = (f" with CircuitsVis {esc(circuitsvis.__version__)} (inlined from the installed wheel)"
            if sets else "")
    body = (
        '<div class="r-wrap"><header class="r-head">'
        f"<h1>{esc(heading)}</h1>"
        f'<p class="r-meta">{len(sections)} result{"s" * (len(sections) != 1)}: '
        f'{esc(", ".join(names))} · {drill}</p>'
        f'<ul class="r-toc">{toc}</ul></header>'
        + content + references_html(content)
        + "".join(data_script(ps.to_json(), "tlspec-patterns", key=k) for k, ps in sets.items())
        + f'<p class="r-foot">Written by tl_spec {esc(versions()["tl_spec"])}{tool}; works '
        f"offline. Attention values are rounded to {10 ** -ctx.decimals:g}.</p></div>"
    )
    return page(heading, body, extra_css=REPORT_CSS, bundle=bool(sets))


def write_report(
    results: Sequence[Any],
    out_dir: str | os.PathLike[str],
    *,
    model: Any = None,
    prompt: str | None = None,
    tuned_model: Any = None,
    title: str | None = None,
    decimals: int = 3,
) -> Path:
    """Write ``out_dir/report.html`` from result files (or objects); returns its path.

    ``model``: a checkpoint directory or loaded model for single-model results and the base of
    ΔSI results (default: the local directory recorded in each result, when it exists);
    ``tuned_model``: the tuned twin. Inputs are checked before any model runs or file is written.

    >>> write_report(["si.json"], "out", model="ckpt_dir")   # doctest: +SKIP
    PosixPath('out/report.html')
    """
    check_decimals(decimals)
    loaded = _check_inputs(results, out_dir, model, tuned_model, prompt)
    html = _render(results, loaded, ReportContext(model=model, tuned_model=tuned_model,
                                                  prompt=prompt, decimals=decimals), title)
    return atomic_write_text(Path(out_dir) / REPORT_FILE, html)


def add_report_parser(subparsers: Any) -> None:
    """Register ``tl-spec report RESULT.json ... --out DIR`` on an argparse subparsers."""
    p = subparsers.add_parser("report", help="a self-contained offline HTML report of result files")
    p.add_argument("results", nargs="+", metavar="RESULT.json")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for report.html")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="checkpoint to draw attention patterns with (single-model results and "
                        "the base of ΔSI); default: the local directory recorded in each result")
    p.add_argument("--tuned-model", default=None, metavar="PATH", help="the tuned twin of ΔSI")
    p.add_argument("--prompt", default=None,
                   help="prompt for the drill-down patterns; default the first Standard-10 prompt")
    p.add_argument("--title", default=None)
    p.add_argument("--decimals", type=int, default=3, help="attention precision (1-4; default 3)")
    p.set_defaults(func=run_report)


MAX_DRAWABLE = 1e150  # larger magnitudes overflow when squared or scaled for colours
MAX_DEPTH = 64  # result files nest a few levels; deeper JSON is no result


def _check_result_file(path: str) -> None:
    """Refuse a result file that cannot be drawn: not UTF-8 JSON, absurdly nested, huge numbers."""
    p = Path(path)
    if not p.is_file():
        return  # write_report names missing files itself
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise TLSpecError(f"{path}: not UTF-8 text; give a result JSON written by tl_spec"
                          ) from None
    except RecursionError:
        raise TLSpecError(f"{path}: JSON nested too deeply to be a tl_spec result") from None
    except ValueError as exc:
        raise TLSpecError(f"{path}: not valid JSON ({exc}); give a result file written by "
                          "tl_spec (result.to_json)") from None
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TLSpecError(f"{path}: JSON nested more than {MAX_DEPTH} levels (at {where}); "
                              "not a tl_spec result")
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        elif (isinstance(value, float) and math.isfinite(value)
              and abs(value) > MAX_DRAWABLE):
            raise TLSpecError(f"{path}: value {value:g} at {where.lstrip('.')} is beyond "
                              f"±{MAX_DRAWABLE:g} and cannot be drawn; is the file corrupted?")


def run_report(args: argparse.Namespace) -> int:
    """Run the ``report`` sub-command; 2 for bad input (nothing written)."""
    try:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise TLSpecError(f"--out {args.out}: is a file; give a directory for report.html")
        for result in args.results:
            _check_result_file(result)
        path = write_report(args.results, args.out, model=args.model, prompt=args.prompt,
                            tuned_model=args.tuned_model, title=args.title, decimals=args.decimals)
    except TLSpecError as exc:
        print(f"tl-spec report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
