"""How the report writes things down: the missing mark, number formats, markdown and LaTeX tables, table files.

Everything here is a pure function of values or string frames (plus `write_table`, which writes one
table's md/tex/csv files); no module of the report formats a number or a table any other way.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import io
from bench.records import TABLES_DIR

MISSING = "—"
# "Best acc" means one thing in every table: the best epoch's test accuracy of each seed, averaged over seeds.
BEST_ACC = "Best-epoch acc (%), mean of per-seed bests"
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet",
                 "fashionmnist": "Fashion-MNIST", "synthetic": "Synthetic"}


# ---- values ------------------------------------------------------------------------------------
def is_missing(x: Any) -> bool:
    """None or NaN: a cell without a value (shown as MISSING)."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def value_text(value: Any) -> str:
    """A config value as a setting label shows it: "none" for a missing one, 10 for 10.0."""
    if is_missing(value):
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ---- numbers -----------------------------------------------------------------------------------
def fmt_pm(mean: Any, std: Any, digits: int = 2) -> str:
    """"mean ± std", just "mean" without a std (one seed), the missing mark without a mean."""
    if is_missing(mean):
        return MISSING
    if is_missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_speed(mean: Any, std: Any = math.nan) -> str:
    digits = 0 if not is_missing(mean) and abs(mean) >= 100 else 1
    return fmt_pm(mean, std, digits)


def fmt_sig(mean: Any, std: Any = math.nan) -> str:
    """Hessian quantities span orders of magnitude: 4 significant digits, std to 2."""
    if is_missing(mean):
        return MISSING
    return f"{mean:.4g}" if is_missing(std) else f"{mean:.4g} ± {std:.2g}"


def fmt_time(mean: Any, std: Any = math.nan) -> str:
    """Seconds: one decimal from 10 s up, more below so that tiny runs do not all read 0.0."""
    digits = 1 if is_missing(mean) or abs(mean) >= 10 else 2 if abs(mean) >= 1 else 3
    return fmt_pm(mean, std, digits)


def fmt_diff(x: Any) -> str:
    return MISSING if is_missing(x) else f"{x:+.2f}"


def fmt_share(x: Any) -> str:
    return MISSING if is_missing(x) else f"{x:.3f}"


def fmt_seeds(n: Any, n_diverged: Any = 0, n_failed: Any = 0) -> str:
    text = str(int(n)) if not is_missing(n) else "0"
    extra = [f"{int(v)} {what}" for v, what in ((n_diverged, "diverged"), (n_failed, "failed"))
             if not is_missing(v) and v]
    return f"{text} (+{', '.join(extra)})" if extra else text


def fmt_ratio(median: Any, q1: Any = math.nan, q3: Any = math.nan) -> str:
    """A median with its quartiles: "1.23 [1.20–1.30]"."""
    if is_missing(median):
        return MISSING
    return f"{median:.2f}" if is_missing(q1) or is_missing(q3) else f"{median:.2f} [{q1:.2f}–{q3:.2f}]"


def fmt_bytes(n: Any) -> str:
    if is_missing(n):
        return MISSING
    n = float(n)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def pairs(fmt: Callable[[Any, Any], str], means: Iterable[Any], stds: Iterable[Any]) -> list[str]:
    """`fmt(mean, std)` down two columns."""
    return [fmt(m, s) for m, s in zip(means, stds, strict=True)]


# ---- tables as text ----------------------------------------------------------------------------
def render_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured pipe table (no tabulate dependency); '|' inside cells is escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "—": "---", "Δ": r"$\Delta$", "λ": r"$\lambda$", "×": r"$\times$"}


def latex_escape(text: Any) -> str:
    # λ_max is a symbol with a subscript, not an escaped underscore.
    parts = ["".join(_LATEX_SPECIAL.get(ch, ch) for ch in piece) for piece in str(text).split("λ_max")]
    out = r"$\lambda_{\max}$".join(parts)
    for symbol, command in _LATEX_SYMBOLS.items():
        out = out.replace(symbol, command)
    return out


def render_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table environment; numbers right-aligned, names left-aligned."""
    align = "".join("l" if c in ("Model", "Method", "Setting", "Source", "Table", "Notes") else "r"
                    for c in table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(x) for x in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---- table files -------------------------------------------------------------------------------
@dataclass
class TableFile:
    """One table as written: its title, the markdown shown in REPORT.md and the files."""

    title: str
    markdown: str
    files: dict[str, Path]  # "md", "tex", "csv"
    notes: list[str] = field(default_factory=list)
    kind: str = ""  # "paper", "dataset" or "cost": the report section it belongs to


def write_table(out: Path, stem: str, title: str, numbers: pd.DataFrame, shown: pd.DataFrame,
                extra_md: str = "", notes: Sequence[str] = (), kind: str = "") -> TableFile:
    """`<out>/tables/<stem>.md` and `.tex` of the strings `shown`, and `.csv` of the `numbers` behind them."""
    folder = out / TABLES_DIR
    md = f"### {title}\n\n{render_markdown(shown)}"
    if notes:
        md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    md += extra_md
    files = {"md": folder / f"{stem}.md", "tex": folder / f"{stem}.tex", "csv": folder / f"{stem}.csv"}
    io.write_text(files["md"], md)
    io.write_text(files["tex"], render_latex(shown, title, f"tab:{stem}"))
    io.write_csv(files["csv"], numbers)
    return TableFile(title, md, files, list(notes), kind)


# ---- paths as shown ----------------------------------------------------------------------------
def relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def shown_path(path: Path) -> str:
    """Relative to the working directory when inside it: stable text in the committed report."""
    return relative(path, Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)
