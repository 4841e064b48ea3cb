"""Collecting a study: a tidy table (a row per cell), per-family summaries, CSV, Parquet, a report.

Every cell of the study gets a row, stored or not: a cell without a result (failed, or not run
yet) is ``status = "missing"`` with the reason in ``error``, so a partial study still collects.
Summaries follow the paper: ΔSI per family, base vs instruct (its Table 4); noise sensitivity per
model and MHA vs GQA (its Table 7); the probe per model (its Table 2); SI per model.

>>> c = collect(load_study("zoo.toml"))        # doctest: +SKIP
>>> c.table[["kind", "model", "seed", "value"]]  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tl_spec.errors import TLSpecError
from tl_spec.study.plan import Cell, plan
from tl_spec.study.spec import Study

__all__ = ["COLUMNS", "Collected", "StudySummary", "collect", "csv_safe", "summaries",
           "tidy_table"]

COLUMNS = ("experiment", "kind", "model", "base", "tuned", "family", "role", "attention",
           "prompts", "seed", "key", "status", "error", "metric", "value", "ci_low", "ci_high",
           "pvalue", "si_base", "si_tuned", "si_clean", "verdict", "log_slope")


def _nanmean(x: Any) -> float:
    a = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(a)) if a.size and np.isfinite(a).any() else float("nan")


def _metrics(result: Any) -> dict[str, Any]:
    """The headline numbers of one result, by kind."""
    kind = result.kind
    if kind == "specialization_index":
        return {"metric": f"si_{result.method}", "value": result.value}
    if kind == "delta_si":
        return {"metric": "delta_si_pct", "value": result.delta_pct, "ci_low": result.interval.low,
                "ci_high": result.interval.high, "pvalue": result.pvalue,
                "si_base": result.base.value, "si_tuned": result.tuned.value}
    if kind == "perturbation_probe":
        return {"metric": "response_pct", "value": result.response_pct,
                "ci_low": result.interval.low, "ci_high": result.interval.high,
                "si_clean": result.si_clean, "verdict": result.verdict}
    if kind == "probe_sweep":
        top = int(np.argmax(result.sigmas))
        return {"metric": f"change_pct_sigma_{result.sigmas[top]:g}",
                "value": _nanmean(result.change_pct[:, top, :]), "si_clean": result.si_clean}
    if kind == "noise_sensitivity":
        return {"metric": "ppl_slope", "value": result.slope, "log_slope": result.log_slope}
    if kind == "head_stability":
        return {"metric": f"stability_{result.measure}", "value": _nanmean(result.stability)}
    if kind == "deconstruct":  # per-condition rows: summary "deconstruct_by_model"
        return {"metric": "clean_loss", "value": result.clean_loss}
    return {"metric": kind, "value": None}


def _condition_rows(results: list[Any]) -> dict[str, Any]:
    """Per-condition summaries of results that hold a grid (sweeps, deconstruct), over seeds."""
    import pandas as pd

    sweep, dec = [], []
    for r in results:
        cell = (getattr(r, "provenance", None) or {}).get("study_cell") or {}
        who = {"model": "+".join(cell.get("models", [])), "prompts": cell.get("prompts"),
               "seed": cell.get("seed")}
        if r.kind == "probe_sweep":
            frame = r.to_frame()
            rows = frame.drop(columns=["seed", "model"], errors="ignore").to_dict("records")
            sweep += [{**who, **row} for row in rows]
        elif r.kind == "deconstruct":
            dec += [{**who, "variant": row["variant"], "placement": row["placement"],
                     "delta_loss": row["delta_loss"], "ci_low": row["interval"].low,
                     "ci_high": row["interval"].high, "ppl_ratio": row["ppl_ratio"],
                     "delta_si_kept": row.get("delta_si_kept")} for row in r.rows]
    out = {}
    if sweep:
        out["sweep_by_model"] = (
            pd.DataFrame(sweep).groupby(["model", "prompts", "region", "sigma"], sort=True)
            .agg(n_seeds=("seed", "count"), si=("si", "mean"), change_pct=("change_pct", "mean"))
            .reset_index())
    if dec:
        out["deconstruct_by_model"] = (
            pd.DataFrame(dec).groupby(["model", "prompts", "variant", "placement"], sort=True)
            .agg(n_seeds=("seed", "count"), delta_loss=("delta_loss", "mean"),
                 ci_low=("ci_low", "median"), ci_high=("ci_high", "median"),
                 ppl_ratio=("ppl_ratio", "mean"), delta_si_kept=("delta_si_kept", "mean"))
            .reset_index())
    return out


def _attention(result: Any) -> str | None:
    for r in (result, getattr(result, "base", None)):
        arch = (getattr(r, "provenance", None) or {}).get("architecture") or {}
        if arch.get("attention"):
            return str(arch["attention"])
    return None


# a spreadsheet reads a cell starting with one of these as a formula (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: Any) -> Any:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas.

    A string cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (a
    model label such as ``=HYPERLINK(...)``) gets a leading single quote, the OWASP advice
    against CSV injection; numbers (negative ones included), missing values and every other
    string are untouched. Only CSV output is neutralised: the table in Python, Parquet and JSON
    keep the labels verbatim.

    >>> import pandas as pd
    >>> safe = csv_safe(pd.DataFrame({"model": ["=1+1", "-x", "gpt2"], "value": [-1.5, 2.0, 0]}))
    >>> safe["model"].tolist(), safe["value"].tolist()
    (["'=1+1", "'-x", 'gpt2'], [-1.5, 2.0, 0.0])
    """
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or str(out[col].dtype) in ("string", "str"):
            out[col] = out[col].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v,
                na_action="ignore")
    return out


def _row(study: Study, cell: Cell) -> dict[str, Any]:
    twin = cell.kind == "delta"
    first = study.models[cell.models[0]]
    return {
        "experiment": cell.experiment, "kind": cell.kind,
        "model": ("->" if twin else "+").join(cell.models),
        "base": cell.models[0] if twin else None, "tuned": cell.models[1] if twin else None,
        "family": cell.family, "role": None if twin else first.role,
        "prompts": cell.prompts, "seed": cell.seed, "key": cell.key,
    }


def tidy_table(study: Study) -> tuple[Any, list[Any]]:
    """The table (pandas, one row per cell, :data:`COLUMNS`) and the loaded results.

    Each result file is verified first (its recorded key and content hash): a damaged one is a
    ``missing`` row with the reason; a file that records another cell's key (renamed, or copied
    over another cell's file) is refused with a :class:`TLSpecError` naming both keys, since
    its numbers would be reported under the wrong cell.
    """
    import pandas as pd

    from tl_spec.results import load_result

    p = plan(study)
    swapped = {k: d for k, d in p.damaged.items() if d["state"] == "swapped"}
    if swapped:
        key, damage = next(iter(swapped.items()))
        raise TLSpecError(
            f"store {study.store}: {damage['reason']}; the file was renamed or copied over "
            f"another cell's, so its numbers would be reported under the wrong cell "
            f"({len(swapped)} such file(s)). Delete {key}.json (tl-spec study run recomputes "
            "it) or put the file back under the name of the key it records.")
    rows, results = [], []
    for cell in p.cells:
        row = {k: None for k in COLUMNS} | _row(study, cell)
        path = Path(study.store) / f"{cell.key}.json"
        if p.status[cell.key] == "damaged":
            row.update(status="missing", error=f"damaged result: {p.damaged[cell.key]['reason']}; "
                                               "tl-spec study run recomputes it")
        elif p.status[cell.key] == "done":
            try:
                result = load_result(path)
            except TLSpecError as exc:
                row.update(status="missing", error=f"unreadable result: {exc}")
            else:
                results.append(result)
                row.update(status="done", attention=_attention(result), **_metrics(result))
        else:
            failure = p.failures.get(cell.key)
            reason = "not run yet"
            if failure is not None:
                reason = (f"failed after {failure.get('attempts', '?')} attempts: "
                          f"{failure.get('error')}")
            row.update(status="missing", error=reason)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("value", "ci_low", "ci_high", "pvalue", "si_base", "si_tuned", "si_clean",
                "log_slope"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    frame["seed"] = frame["seed"].astype("Int64")
    return frame, results


def _verdict(response: float, stable: float = 5.0, suppressed: float = 20.0) -> str:
    from tl_spec.experiments.probe import verdict

    return verdict(response, stable=stable, suppressed=suppressed) if np.isfinite(response) else ""


def summaries(table: Any, results: list[Any] | None = None) -> dict[str, Any]:
    """Per-family and per-model summaries of a tidy table (empty ones left out).

    ``table4_delta_by_family``: per twin pair (family, base, tuned): SI of each, ΔSI %, the
    interval (median over seeds) and the largest p. ``table7_sensitivity_by_model``: PPL slope
    per model (mean and SD over seeds), log-PPL slope, attention class.
    ``table7_mha_vs_gqa``: slope ratio GQA / MHA over shared seeds (ratio of means, median and
    mean of ratios). ``table2_probe_by_model``: response per model and its verdict.
    ``si_by_model``: SI per model, method and prompt set. ``stability_by_group``: mean head
    stability per group of models. With ``results``: ``sweep_by_model``
    (SI per region and sigma) and ``deconstruct_by_model`` (loss change per variant and
    placement), averaged over seeds.
    """
    import pandas as pd

    from tl_spec.stats import seed_aggregates

    done = table[table["status"] == "done"]
    out: dict[str, Any] = {}
    d = done[done["kind"] == "delta"]
    if len(d):
        out["table4_delta_by_family"] = (
            d.groupby(["family", "base", "tuned", "prompts"], sort=True, dropna=False)
            .agg(n_seeds=("seed", "count"), si_base=("si_base", "mean"),
                 si_tuned=("si_tuned", "mean"), delta_si_pct=("value", "mean"),
                 ci_low=("ci_low", "median"), ci_high=("ci_high", "median"),
                 pvalue_max=("pvalue", "max"), attention=("attention", "first"))
            .reset_index())
    s = done[done["kind"] == "sensitivity"]
    if len(s):
        per_model = (s.groupby(["model", "prompts"], sort=True)
                     .agg(attention=("attention", "first"), n_seeds=("seed", "count"),
                          ppl_slope=("value", "mean"), ppl_slope_sd=("value", "std"),
                          log_ppl_slope=("log_slope", "mean"))
                     .reset_index())
        out["table7_sensitivity_by_model"] = per_model
        rows = []
        for (prompts, a_name), a in s[s["attention"] == "MHA"].groupby(["prompts", "model"]):
            gqa = s[(s["attention"] == "GQA") & (s["prompts"] == prompts)]
            for b_name, b in gqa.groupby("model"):
                shared = sorted(set(a["seed"]) & set(b["seed"]))
                if not shared:
                    continue
                va = a.set_index("seed").loc[shared, "value"].to_numpy(dtype=float)
                vb = b.set_index("seed").loc[shared, "value"].to_numpy(dtype=float)
                row = {"prompts": prompts, "mha": a_name, "gqa": b_name, "n_seeds": len(shared),
                       "slope_mha": va.mean(), "slope_gqa": vb.mean()}
                if len(shared) >= 2:
                    agg = seed_aggregates(va, vb)
                    row.update(ratio_of_means=agg["ratio_of_means"],
                               median_of_ratios=agg["median_of_ratios"],
                               mean_of_ratios=agg["mean_of_ratios"])
                else:
                    row.update(ratio_of_means=vb.mean() / va.mean(), median_of_ratios=None,
                               mean_of_ratios=None)
                rows.append(row)
        if rows:
            out["table7_mha_vs_gqa"] = pd.DataFrame(rows)
    pr = done[done["kind"] == "probe"]
    if len(pr):
        g = (pr.groupby(["model", "prompts"], sort=True)
             .agg(attention=("attention", "first"), n_seeds=("seed", "count"),
                  si_clean=("si_clean", "mean"), response_pct=("value", "mean"),
                  response_min=("value", "min"), response_max=("value", "max"))
             .reset_index())
        g["verdict"] = [_verdict(x) for x in g["response_pct"]]
        out["table2_probe_by_model"] = g
    si = done[done["kind"] == "si"]
    if len(si):
        out["si_by_model"] = (si.groupby(["model", "metric", "prompts"], sort=True)
                              .agg(attention=("attention", "first"), si=("value", "mean"))
                              .reset_index())
    st = done[done["kind"] == "stability"]
    if len(st):
        out["stability_by_group"] = (st.groupby(["model", "metric", "prompts"], sort=True)
                                     .agg(n_seeds=("seed", "count"), stability=("value", "mean"))
                                     .reset_index())
    out.update(_condition_rows(results or []))
    status = table.assign(n=1).pivot_table(index="experiment", columns="status", values="n",
                                           aggfunc="sum", fill_value=0)
    out["cells_by_status"] = status.reset_index().rename_axis(columns=None)
    return out


@dataclass
class StudySummary:
    """The study's summary tables as one report section (kind ``study_summary``)."""

    name: str
    tables: dict[str, Any]
    missing: Any
    kind: str = "study_summary"
    notes: list[str] = field(default_factory=list)


def _register_section() -> None:
    from tl_spec.viz.html import esc
    from tl_spec.viz.sections import SECTION_RENDERERS, Section, register_section

    if "study_summary" in SECTION_RENDERERS:
        return

    @register_section("study_summary")
    def _render(summary: StudySummary, ctx: Any) -> Section:
        del ctx
        parts = [f'<p class="tlspec-note">{esc(n)}</p>' for n in summary.notes]
        for name, frame in summary.tables.items():
            parts.append(f"<h3>{esc(name)}</h3>")
            parts.append(frame.to_html(index=False, classes="r-table", na_rep="–",
                                       float_format=lambda x: f"{x:.4g}", border=0))
        if len(summary.missing):
            parts.append("<h3>missing cells</h3>")
            parts.append(summary.missing.to_html(index=False, classes="r-table", border=0))
        return Section(f"Study {summary.name}", "".join(parts),
                       subtitle=f"{sum(len(t) for t in summary.tables.values())} summary rows")


@dataclass
class Collected:
    """What :func:`collect` produced: the table, the summaries, and the files written."""

    table: Any
    summaries: dict[str, Any]
    files: dict[str, Path]
    results: list[Any] = field(repr=False, default_factory=list)

    def text(self) -> str:
        """The summaries and the missing cells, for the terminal."""
        import pandas as pd

        lines = []
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            for name, frame in self.summaries.items():
                lines += [f"== {name}", frame.to_string(index=False, float_format="{:.4g}".format)]
        missing = self.table[self.table["status"] != "done"]
        for _, row in missing.iterrows():
            lines.append(f"missing {row['key'][:12]} {row['experiment']} {row['model']} "
                         f"seed={row['seed']}: {row['error']}")
        lines += [f"wrote {p}" for p in self.files.values()]
        return "\n".join(lines)


def collect(study: Study, *, out: str | os.PathLike[str] | None = None, report: bool = True,
            report_cells: int = 50) -> Collected:
    """Merge the stored results of ``study`` into one table, summaries and (optionally) a report.

    Writes ``study_table.csv``, ``study_table.parquet`` (when pyarrow or fastparquet is
    installed), ``summary_<name>.csv`` per summary and ``report.html`` into ``out`` (default
    ``<store>/collected``). ``report_cells``: at most that many per-cell result sections follow
    the summary in the report.

    In the CSV files, text cells beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
    return (hostile or unlucky model labels, error messages) get a leading ``'`` so a
    spreadsheet shows them as text instead of running them as formulas (see :func:`csv_safe`);
    numbers are untouched, and the returned table and the Parquet file keep the text verbatim.
    A stored file that records another cell's key is refused (see :func:`tidy_table`).
    """
    from tl_spec.fileio import atomic_write_bytes, atomic_write_text

    if not isinstance(report_cells, int) or report_cells < 0:
        raise TLSpecError(f"report_cells must be an integer >= 0, got {report_cells!r}")
    out_dir = Path(out) if out is not None else Path(study.store) / "collected"
    if out_dir.exists() and not out_dir.is_dir():
        raise TLSpecError(f"--out {out_dir} is a file; give a directory for the collected tables")
    table, results = tidy_table(study)
    sums = summaries(table, results)
    files: dict[str, Path] = {}
    files["csv"] = atomic_write_text(out_dir / "study_table.csv",
                                      csv_safe(table).to_csv(index=False))
    try:
        import io

        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        files["parquet"] = atomic_write_bytes(out_dir / "study_table.parquet", buf.getvalue())
    except ImportError:
        warnings.warn("no Parquet engine installed, so only CSV was written; pip install pyarrow "
                      "(or tl_spec[study]) for study_table.parquet", stacklevel=2)
    for name, frame in sums.items():
        files[name] = atomic_write_text(out_dir / f"summary_{name}.csv",
                                        csv_safe(frame).to_csv(index=False))
    if report:
        from tl_spec.viz.report import write_report

        _register_section()
        missing = table[table["status"] != "done"][["experiment", "model", "seed", "key", "error"]]
        notes = [f"{int((table['status'] == 'done').sum())} of {len(table)} cells stored."]
        if len(results) > report_cells:
            notes.append(f"The first {report_cells} of {len(results)} results have their own "
                         "section below (collect --report-cells N for more).")
        summary = StudySummary(study.name, sums, missing, notes=notes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files["report"] = write_report([summary] + results[:report_cells], out_dir,
                                           title=f"tl_spec study {study.name}")
    return Collected(table, sums, files, results)
