"""The committed results/ regenerate exactly: every table file byte for byte, and REPORT.md apart from its figures.

results/REPORT.md, tables/ and figures/ are made from the root of a checkout by
`safbench report --results results`; after a change that moves any of them on purpose, run that command and
commit what it writes. Figures (PNG/PDF) are not compared: this test builds without them, and drops the
figure blocks from the committed REPORT.md before comparing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from analysis.report import build_report
from bench.records import REPORT, TABLES_DIR

REPO = Path(__file__).resolve().parents[2]
COMMAND = "safbench report --results results --out results"  # the committed report's regenerate line
NO_FIGURES = "No figures (nothing to plot, or --no-figures).\n\n"


def _without_figures(text: str) -> str:
    """REPORT.md without its figure blocks (a heading whose block shows an image), the Flatness intro, and a
    section heading left with nothing under it (a section of figures only, which --no-figures leaves out)."""
    blocks = [b for b in re.split(r"(?m)^(?=##+ )", text) if "![" not in b and not b.startswith("## Flatness\n")]
    kept = [b for i, b in enumerate(blocks)
            if not (b.startswith("## ") and not b.split("\n", 1)[1].strip()
                    and (i + 1 == len(blocks) or blocks[i + 1].startswith("## ")))]
    return "".join(kept)


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)  # as committed: run from the root, so the paths it shows are relative ("results/...")
        build_report("results", out, figures=False, regenerate=COMMAND)
    return out


def test_every_committed_table_regenerates_byte_for_byte(regenerated: Path) -> None:
    committed = sorted(p.name for p in (REPO / "results" / TABLES_DIR).iterdir())
    assert sorted(p.name for p in (regenerated / TABLES_DIR).iterdir()) == committed
    differ = [name for name in committed
              if (regenerated / TABLES_DIR / name).read_bytes() != (REPO / "results" / TABLES_DIR / name).read_bytes()]
    assert not differ, f"regenerate results/ with `{COMMAND.rsplit(' --out', 1)[0]}` from the root: {differ}"


def test_committed_report_regenerates_apart_from_its_figures(regenerated: Path) -> None:
    text = (regenerated / REPORT).read_text()
    assert NO_FIGURES in text
    committed = (REPO / "results" / REPORT).read_text()
    assert "![" in committed and "![" not in text
    assert text.replace(NO_FIGURES, "") == _without_figures(committed)
