"""`grid --dry-run` streams its cells: a 1000x1000 grid prints its first rows before expanding the rest."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import bench.grid
import bench.grid_cli
from bench.cli import main
from bench.config import RunConfig
from bench.grid import expand, iter_cells, load_grid
from tests.bench.grid_util import write_grid

HUGE = {"seed": list(range(1000)), "lr": [round(0.001 * (i + 1), 6) for i in range(1000)]}


class _Stop(Exception):
    pass


def test_cells_are_expanded_one_at_a_time(tmp_path: Path, monkeypatch) -> None:
    spec = load_grid(write_grid(tmp_path / "g.yaml", grid=HUGE))
    assert spec.num_combinations() == 1_000_000
    made = []
    real = RunConfig.from_dict
    monkeypatch.setattr(bench.grid.RunConfig, "from_dict",
                        staticmethod(lambda *a, **k: made.append(1) or real(*a, **k)))
    cells = iter_cells(spec, out=str(tmp_path / "out"))
    assert inspect.isgenerator(cells) and made == []  # nothing expanded before it is asked for
    first = [next(cells) for _ in range(3)]
    assert len(made) == 3 and [c.config.lr for c in first] == HUGE["lr"][:3]
    # Same cells, same order as the list `grid` runs.
    small = load_grid(write_grid(tmp_path / "s.yaml", grid={"seed": [0, 1], "method": ["sgd", "sam", "sgd"]}))
    assert [c.hash for c in iter_cells(small)] == [c.hash for c in expand(small)]
    assert len(expand(small)) == 4  # the repeated sgd merged


def test_dry_run_prints_each_cell_before_the_next_is_expanded(tmp_path: Path, monkeypatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's dry run over the 1000x1000 grid, stopped at its 6th cell: 5 rows are out already."""
    path = write_grid(tmp_path / "g.yaml", grid=HUGE)
    real_state, states = bench.grid_cli.cell_state, []

    def state_then_stop(run_dir):
        if len(states) == 5:
            raise _Stop
        states.append(run_dir)
        return real_state(run_dir)

    monkeypatch.setattr(bench.grid_cli, "cell_state", state_then_stop)
    made = []
    real = RunConfig.from_dict
    monkeypatch.setattr(bench.grid.RunConfig, "from_dict",
                        staticmethod(lambda *a, **k: made.append(1) or real(*a, **k)))
    with pytest.raises(_Stop):
        bench.grid_cli.print_cells(str(path), str(tmp_path / "out"),
                                   load_grid(path).iter_cells(out=str(tmp_path / "out")))
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and len(made) == 6  # printed as expanded; 999,994 cells never made


def test_cli_dry_run_streams(tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`safbench grid --dry-run` hands print_cells the generator, not a list."""
    seen = []
    monkeypatch.setattr(bench.grid_cli, "print_cells", lambda file, out, cells: seen.append(cells))
    path = write_grid(tmp_path / "g.yaml", grid=HUGE)
    assert main(["grid", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert inspect.isgenerator(seen[0])
    monkeypatch.undo()
    small = write_grid(tmp_path / "s.yaml", grid={"seed": [0, 1, 2]})
    assert main(["grid", str(small), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "states: 3 pending (3 cells)"
