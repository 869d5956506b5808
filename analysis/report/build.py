"""REPORT.md: `build_report` reads a results folder, has every table and figure written, and assembles the text.

Data flow: load (rows, reference) -> aggregate (labels, cells) -> tables / cost / overhead / claims /
figures (files) -> here (REPORT.md). No number in the report is typed in: the paper's values come from
the reference CSV, ours from the stored runs; a cell without results is shown as missing, never filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import io
from bench.damage import DamagedFile
from bench.records import FIGURES_DIR, NOTES, REPORT, TABLES_DIR

from . import claims
from .aggregate import aggregate, method_order, prepare
from .cost import time_to_target_tables
from .figures import FigureFile, make_figures, save_figure, save_overhead_figure, save_sharpness_figure
from .fit_plots import label_fit_table, save_label_fit_figure
from .format import MISSING, TableFile, relative, render_markdown, shown_path, slug, write_table
from .load import OVERHEAD_DIR, REFERENCE_CSV, load_reference, load_rows, read_notes
from .overhead import commands as overhead_commands
from .overhead import load_overhead, step_panels
from .overhead import provenance_lines as overhead_provenance
from .overhead_tables import build_overhead_tables
from .run_files import landscape_commands
from .tables import CELLS_CSV, RUNS_CSV, build_tables, runs_overview, tables_without_ours
from .tuning import find_tuned, plot_tuning, run_settings, tuned_claims_table, tuning_tables

PROVENANCE_COLUMNS = ("git_commit", "torch_version", "python_version", "torchvision_version", "timm_version",
                      "device_name")


@dataclass
class CostSection:
    """The tables made from `safbench overhead` CSVs, with where those came from."""

    folder: str
    tables: list[TableFile]
    commands: list[str]
    provenance: list[str]


@dataclass
class Report:
    """What `build_report` wrote, and the rows it read (the prepared rows frame)."""

    out: Path
    report: Path
    tables: list[TableFile]
    figures: list[FigureFile]
    rows: pd.DataFrame
    damaged: list[DamagedFile] = field(default_factory=list)  # the runs left out


def provenance_lines(rows: pd.DataFrame) -> list[str]:
    """Deduplicated commits, versions and devices behind the rows, with run counts."""
    lines = []
    for col in PROVENANCE_COLUMNS:
        if col not in rows.columns:
            continue
        counts = rows[col].fillna("unknown").astype(str).value_counts(sort=False)
        lines.append(f"- {col}: " + "; ".join(f"`{v}` ({n} runs)" for v, n in counts.items()))
    return lines


def commands(rows: pd.DataFrame, column: str = "command") -> list[str]:
    if column not in rows.columns:
        return []
    return list(dict.fromkeys(str(c) for c in rows[column].dropna() if str(c)))


def _table_markdown(table: TableFile, report_dir: Path) -> str:
    links = " · ".join(f"[{kind}]({relative(p, report_dir)})" for kind, p in table.files.items())
    return table.markdown + f"\nFiles: {links}\n"


def _figure_markdown(f: FigureFile, report_dir: Path) -> str:
    png, pdf = relative(f.png, report_dir), relative(f.pdf, report_dir)
    return (f"### {f.title}\n\n![{f.title}]({png})\n\n"
            f"{f.caption} Files: [PNG]({png}) · [PDF]({pdf})\n" + f.extra)


def report_markdown(report_dir: Path, rows: pd.DataFrame, tables: Sequence[TableFile],
                    figures: Sequence[FigureFile], regenerate: str, reference: str,
                    conclusions: Sequence[tuple[str, str]] = (), cost: CostSection | None = None,
                    skipped: Sequence[str] = (), claim_tables: Sequence[TableFile] = (),
                    damaged: Sequence[DamagedFile] = (), tuning: Sequence[TableFile] = ()) -> str:
    """REPORT.md, top-down: what was measured (the runs, their tables), conclusions, the claims judged, cost,
    flatness, the paper's tables (only rows with a run of ours), then how to regenerate and the provenance."""
    status = rows["status"].value_counts()
    by_kind = {k: [t for t in tables if t.kind == k] for k in ("dataset", "cost", "paper", "fit")}
    other = [t for t in tables if t.kind not in by_kind]
    section = {s: [f for f in figures if f.section == s] for s in ("cost", "tuning", "fit")}
    section["flatness"] = [f for f in figures if f.section not in ("cost", "tuning", "fit")]
    parts = [
        "# safbench report\n",
        f"Generated from {len(rows)} stored runs ({', '.join(f'{n} {s}' for s, n in status.items())}) in "
        + ", ".join(f"`{g}`" for g in sorted(set(rows['grid'].astype(str)))) + ". "
        "Every number comes from the stored rows (mean ± sample std over finished seeds; accuracy is the "
        f"final test accuracy in %); the published numbers come from `{reference}`. A missing cell is shown "
        f"as {MISSING}; diverged and failed runs are counted, not averaged.\n",
        "## What was measured\n",
        render_markdown(runs_overview(rows)),
    ]
    for t in by_kind["dataset"] + other:
        parts.append(_table_markdown(t, report_dir))
    if damaged:
        parts.append("## Damaged runs (left out)\n")
        parts.append("\n".join(f"- `{d.path}`: {d.cause}; {d.action}" for d in damaged) + "\n")
    if conclusions:
        parts.append("## Conclusions\n")
        parts.append(f"Written by hand from the tables of this report (kept in each results folder's `{NOTES}`).\n")
        for folder, text in conclusions:
            parts.append(f"### From `{folder}`\n\n{text}\n")
    if claim_tables:
        parts.append("## Claims\n")
        parts.append(f"Each of the paper's claims beside our measurement in one results folder: per-seed paired "
                     f"differences (same initial weights and data order within a seed) with a 95% Student-t "
                     f"interval, Fieller's 95% interval for ratios; the `interval` column names each one. "
                     f"Verdicts follow `analysis/report/claims.py`: "
                     f"{claims.REPRODUCED} when the interval lies wholly on the claimed side of the rule's threshold, "
                     f"{claims.NOT_REPRODUCED} when wholly on the other, {claims.INCONCLUSIVE} otherwise. "
                     f"{claims.METHOD_NOTE}\n")
        for t in claim_tables:
            parts.append(_table_markdown(t, report_dir))
    if section["fit"] or by_kind["fit"]:
        parts.append("## What each method fits under label noise\n")
        for t in by_kind["fit"]:
            parts.append(_table_markdown(t, report_dir))
        for f in section["fit"]:
            parts.append(_figure_markdown(f, report_dir))
    if tuning:
        parts.append("## Tuning\n")
        parts.append("Every method of a tuned folder got the same number of trials (its defaults as trial 0, then the "
                     "same points of one seeded design), chosen on validation data alone by the rule under each "
                     "table (`bench/tuning.py`), then run at its choice and at its defaults on fresh seeds that took "
                     "no part in the choice (rows `tuned` and `default` above).\n")
        for t in tuning:
            parts.append(_table_markdown(t, report_dir))
        for f in section["tuning"]:
            parts.append(_figure_markdown(f, report_dir))
    if by_kind["cost"] or cost is not None or section["cost"]:
        parts.append("## Cost\n")
        for t in by_kind["cost"]:
            parts.append(_table_markdown(t, report_dir))
        for f in section["cost"]:
            parts.append(_figure_markdown(f, report_dir))
    if cost is not None:
        parts.append("### Cost per step (safbench overhead)\n")
        parts.append(f"From the CSVs in `{cost.folder}`: every method timed in one process on the same model "
                     "and batch, interleaved round by round, so the ratios to SGD hold even on a machine whose "
                     "speed drifts; the absolute images/s are not comparable across files. The runs' own "
                     "images/s in the tables above are taken minutes or hours apart, one run after another, "
                     "and move with the machine's load; where the two disagree, trust these.\n")
        for t in cost.tables:
            parts.append(_table_markdown(t, report_dir))
    if section["flatness"]:
        parts.append("## Flatness\n")
        parts.append("λ_max and the Hessian trace per method are in the tables above; the figures below draw "
                     "the Hessian spectrum and the loss landscapes of the stored runs.\n")
        for f in section["flatness"]:
            parts.append(_figure_markdown(f, report_dir))
    elif not figures:
        parts.append("No figures (nothing to plot, or --no-figures).\n")
    parts.append("## Against the paper's tables\n")
    pointer = (f"Only rows with at least one run of ours are shown (each table's csv keeps every row); the full "
               f"published tables are in `{reference}`.")
    if skipped:
        pointer += f" No run of ours for paper {'; '.join(skipped)}."
    parts.append(pointer + "\n")
    for t in by_kind["paper"]:
        parts.append(_table_markdown(t, report_dir))
    parts.append("## How to regenerate\n")
    parts.append(f"```\n{regenerate}\n```\n")
    parts.append("Re-running the commands listed under Provenance recreates the underlying runs.\n")
    parts.append("## Provenance\n")
    cmds = commands(rows)
    parts.append("Commands that made the runs (deduplicated):\n")
    parts.append("```\n" + ("\n".join(cmds) if cmds else "(no command recorded)") + "\n```\n")
    flat = commands(rows, "hessian_command") + landscape_commands(rows)
    if flat:
        parts.append("Commands that measured flatness (Hessian, landscapes) of the stored runs:\n")
        parts.append("```\n" + "\n".join(flat) + "\n```\n")
    parts.append("\n".join(provenance_lines(rows)) + "\n")
    if cost is not None:
        parts.append("Commands that measured the cost per step:\n")
        parts.append("```\n" + "\n".join(cost.commands or ["(no command recorded)"]) + "\n```\n")
        parts.append("\n".join(cost.provenance) + "\n")
    parts.append(f"Aggregates: [{CELLS_CSV}]({relative(report_dir / TABLES_DIR / CELLS_CSV, report_dir)}) · "
                 f"rows: [{RUNS_CSV}]({relative(report_dir / TABLES_DIR / RUNS_CSV, report_dir)})\n")
    return "\n".join(parts)


def build_report(results: str | Path = "results", out: str | Path | None = None,
                 reference: str | Path | None = None, *, figures: bool = True,
                 regenerate: str | None = None, overhead: str | Path | None = None) -> Report:
    """Read every stored run under `results`, write tables, figures and REPORT.md into `out`.

    The cost section comes from `overhead` (default: `results`/overhead when it exists).
    """
    results = Path(results)
    out = Path(out) if out is not None else results
    ref_path = Path(reference) if reference is not None else REFERENCE_CSV
    reference_frame = load_reference(ref_path)
    damaged: list[DamagedFile] = []
    rows = prepare(load_rows(results, damaged), reference_frame)
    tuned = find_tuned(results, lambda folder: (Path(results.name) / folder.relative_to(results)).as_posix())
    named = run_settings(rows, tuned)  # a tuned folder's fresh-seed runs: tuned, default, or both
    rows.loc[named.notna(), "setting"] = named[named.notna()]
    cost_folder = Path(overhead) if overhead is not None else results / OVERHEAD_DIR
    found = load_overhead(cost_folder) if overhead is not None or cost_folder.is_dir() else {}
    io.check_writable(out)
    (out / TABLES_DIR).mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows)
    tables = build_tables(rows, agg, reference_frame, out)
    tables += time_to_target_tables(rows, out, found.get("steps"))
    cost, steps = None, None
    if found:
        cost_tables, steps = build_overhead_tables(found, reference_frame, out)
        cost = CostSection(shown_path(cost_folder), cost_tables, overhead_commands(found), overhead_provenance(found))
    claim_tables, claim_folders = [], claims.folders_with_claims(rows)
    for t in tuned:  # runs at two settings: judged side by side (analysis.report.tuning), not as one folder
        claim_folders.pop(t.shown, None)
        table = tuned_claims_table(t, rows, out, found.get("steps"))
        if table is not None:
            claim_tables.append(table)
    for grid, labelled in claim_folders.items():
        frame = claims.claims_frame(claims.claims_table(labelled, steps=found.get("steps")))
        claim_tables.append(write_table(out, f"claims_{slug(grid)}", f"Claims judged on `{grid}`", frame,
                                        claims.format_claims(frame)))
    tables += [t for grid, labelled in claim_folders.items()
               if (t := label_fit_table(labelled, grid, out, method_order())) is not None]
    tuning_files = [table for t in tuned for table in tuning_tables(t, out)]
    made: list[FigureFile] = []
    if figures:
        made = make_figures(rows, agg, out / FIGURES_DIR)
        for t in tuned:
            png, pdf = save_figure(plot_tuning(t), out / FIGURES_DIR / f"tuning_{slug(t.shown)}")
            made.append(FigureFile(f"Validation accuracy against each tuned hyperparameter ({t.shown})",
                                   "Each trial's validation accuracy at the final epoch: dots per tuning seed, "
                                   "circles their mean; the star marks the defaults (trial 0), the ring the choice. "
                                   "The panels of SAF's lam and e_tilde are the paper's own ablations, on this "
                                   "workload.", png, pdf, section="tuning"))
        for grid, labelled in claim_folders.items():
            for save in (save_sharpness_figure, save_label_fit_figure):
                figure = save(labelled, grid, out / FIGURES_DIR, method_order())
                if figure is not None:
                    made.append(figure)
        if steps is not None and len(steps):
            made.append(save_overhead_figure(step_panels(steps), out / FIGURES_DIR))
    # Rebuilt from the arguments rather than sys.argv: the same line whoever called us.
    regenerate = regenerate or f"safbench report --results {results} --out {out}" + (
        f" --reference {reference}" if reference is not None else "") + (
        f" --overhead {overhead}" if overhead is not None else "") + ("" if figures else " --no-figures")
    path = out / REPORT
    io.write_text(path, report_markdown(out, rows, tables, made, regenerate, shown_path(ref_path),
                                        read_notes(results), cost, tables_without_ours(agg, reference_frame),
                                        claim_tables, damaged, tuning_files))
    return Report(out, path, tables + claim_tables + tuning_files + (cost.tables if cost else []), made, rows,
                  damaged)
