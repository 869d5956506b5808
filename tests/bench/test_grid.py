"""Grid files: loading, validation, pure expansion, the CLI's bad-input path and --dry-run.

Running grids (locks, resume, kills, launchers) is in test_grid_run.py and test_grid_launchers.py.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from bench.cells import State, cell_state, lock_path
from bench.cli import main
from bench.config import RunConfig
from bench.errors import UsageError
from bench.grid import expand, load_grid, parse_grid
from tests.bench.grid_util import REPO, TINY, run_cli, snapshot, write_grid

GRIDS = sorted((REPO / "grids").glob("*.yaml"))


def _expected_hash(**values) -> str:
    """The hash of a config assembled by hand, not through the grid code."""
    return RunConfig.from_dict({**TINY, **values}).config_hash()


# ---- expansion ------------------------------------------------------------------------------------
def test_cells_are_the_product_in_file_order_with_per_method_only_where_meant(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd", "sam", "esam"], "seed": [0, 1]},
                      per_method={"sam": {"rho": 0.1}})
    cells = load_grid(path).cells()
    assert [(c.config.method, c.config.seed) for c in cells] == [
        ("sgd", 0), ("sgd", 1), ("sam", 0), ("sam", 1), ("esam", 0), ("esam", 1)]
    rho = {c.config.method: c.config.resolved().rho for c in cells}
    assert rho == {"sgd": None, "sam": 0.1, "esam": 0.05}  # esam keeps its own default
    expected = [_expected_hash(method="sgd", seed=0), _expected_hash(method="sgd", seed=1),
                _expected_hash(method="sam", seed=0, rho=0.1), _expected_hash(method="sam", seed=1, rho=0.1),
                _expected_hash(method="esam", seed=0), _expected_hash(method="esam", seed=1)]
    assert [c.hash for c in cells] == expected
    assert cells[2].settings == {"method": "sam", "seed": 0, "rho": 0.1}


def test_expansion_is_pure_and_deterministic(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["saf", "mesa"], "seed": [2, 1], "lr": [0.1, 0.05]},
                      per_method={"saf": {"e_tilde": 1, "e_start": 1}})
    before = snapshot(tmp_path)
    first = [(c.hash, str(c.run_dir), c.config.to_dict()) for c in load_grid(path).cells()]
    second = [(c.hash, str(c.run_dir), c.config.to_dict()) for c in load_grid(path).cells()]
    assert first == second and len(first) == 8 and len({h for h, _, _ in first}) == 8
    assert snapshot(tmp_path) == before  # loading and expanding wrote nothing


def test_out_defaults_to_runs_stem_and_never_changes_hashes(tmp_path: Path) -> None:
    path = tmp_path / "mygrid.yaml"
    data = {"base": TINY, "grid": {"method": ["sgd", "sam"]}}
    spec = parse_grid(data, where=str(path))
    default = expand(spec)
    assert all(c.run_dir.parent == Path("runs/mygrid") for c in default)
    spec_with_out = parse_grid({**data, "base": {**data["base"], "out": "elsewhere"}}, where=str(path))
    assert all(c.run_dir.parent == Path("elsewhere") for c in expand(spec_with_out))
    overridden = expand(spec_with_out, out=str(tmp_path / "o"))
    assert all(c.run_dir.parent == tmp_path / "o" for c in overridden)
    assert [c.hash for c in default] == [c.hash for c in overridden]


def test_subgrids_concatenate_and_duplicates_merge(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "g.yaml", grid=[{"method": ["sgd"], "lr": [0.1, 0.05]},
                                                 {"method": ["sam", "sgd"], "lr": [0.05]}])
    cells = load_grid(path).cells()
    assert [(c.config.method, c.config.lr) for c in cells] == [("sgd", 0.1), ("sgd", 0.05), ("sam", 0.05)]
    assert load_grid(path).num_combinations() == 4


def test_an_axis_overrides_per_method_for_its_own_cells_only(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "g.yaml", grid=[{"dataset": ["synthetic"], "method": ["sam"]},
                                                 {"lr": [0.05], "method": ["sam"], "rho": [0.1]}],
                      per_method={"sam": {"rho": 0.05, "adaptive": True}})
    first, second = load_grid(path).cells()
    assert (first.config.rho, first.config.adaptive, first.config.lr) == (0.05, True, 0.1)
    assert (second.config.rho, second.config.adaptive, second.config.lr) == (0.1, True, 0.05)
    assert second.hash == _expected_hash(method="sam", rho=0.1, adaptive=True, lr=0.05)


def test_float_written_without_a_dot_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("base: {dataset: synthetic, model: mlp_tiny, lr: 1e-3}\ngrid: {weight_decay: [5e-4, 0]}\n")
    cells = load_grid(path).cells(out=str(tmp_path))
    assert [(c.config.lr, c.config.weight_decay) for c in cells] == [(1e-3, 5e-4), (1e-3, 0.0)]


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_shipped_grids_are_valid(path: Path) -> None:
    cells = load_grid(path).cells(out="/nonexistent/out")
    assert cells and len({c.hash for c in cells}) == len(cells)


def test_shipped_grids_have_the_documented_shape() -> None:
    quick = load_grid(REPO / "grids" / "quick.yaml").cells()
    assert sorted(c.config.method for c in quick) == sorted(["sgd", "sam", "esam", "saf", "mesa"])
    assert {c.config.dataset for c in quick} == {"fashionmnist"}
    fm = load_grid(REPO / "grids" / "fashionmnist.yaml").cells()
    assert len(fm) == 15 and {c.config.seed for c in fm} == {0, 1, 2}
    saf = next(c.config.resolved() for c in fm if c.config.method == "saf")
    assert (saf.lam, saf.tau, saf.e_tilde, saf.e_start) == (0.3, 5.0, 3, 5)
    cifar = load_grid(REPO / "grids" / "paper-cifar.yaml").cells()
    assert len(cifar) == 3 * 2 * 7 * 3 and {c.config.epochs for c in cifar} == {200}
    gsam100 = {c.config.resolved().rho_min for c in cifar
               if c.config.method == "gsam" and c.config.dataset == "cifar100"}
    assert gsam100 == {0.05}
    imagenet = load_grid(REPO / "grids" / "paper-imagenet.yaml").cells()
    assert {c.config.model for c in imagenet} == {"timm:resnet50", "timm:resnet101", "timm:vit_small_patch32_224"}
    vit = [c.config for c in imagenet if "vit" in c.config.model]
    assert {(c.optimizer, c.epochs) for c in vit} == {("adamw", 300)}
    # The paper's ResNet recipe (global batch 4096 = 512 x 8 GPUs, lr 1.4) and each paper's GSAM values.
    resnets = [c.config.resolved() for c in imagenet if "resnet" in c.config.model]
    assert {(c.batch_size, c.lr, c.label_smoothing) for c in resnets} == {(512, 1.4, 0.1)}
    gsam = {c.model: (c.rho, c.rho_min, c.alpha) for c in (x.config.resolved() for x in imagenet)
            if c.method == "gsam"}
    assert gsam == {"timm:resnet50": (0.04, 0.02, 0.01), "timm:resnet101": (0.04, 0.02, 0.01),
                    "timm:vit_small_patch32_224": (0.6, 0.0, 0.4)}
    assert {c.config.method for c in imagenet if c.config.method == "looksam"} == {"looksam"}


# ---- bad grid files -----------------------------------------------------------------------------------
BAD = {
    "unknown top-level key": ({"base": TINY, "grid": {"seed": [0]}, "grids": {}}, "grids"),
    "unknown run key in base": ({"base": {**TINY, "learning_rate": 0.1}}, "learning_rate"),
    "unknown run key in grid": ({"base": TINY, "grid": {"sed": [0, 1]}}, "sed"),
    "unknown run key in per_method": ({"base": TINY, "per_method": {"sam": {"radius": 1}}}, "radius"),
    "empty axis": ({"base": TINY, "grid": {"seed": []}}, "seed"),
    "non-list axis": ({"base": TINY, "grid": {"seed": 3}}, "seed"),
    "invalid value on an axis": ({"base": TINY, "grid": {"lr": [0.1, -1]}}, "lr"),
    "invalid method on an axis": ({"base": TINY, "grid": {"method": ["sgd", "adam"]}}, "method"),
    "invalid value in base": ({"base": {**TINY, "batch_size": 0}}, "batch_size"),
    "per_method for an unknown method": ({"base": TINY, "per_method": {"adam": {"lr": 0.1}}}, "adam"),
    "method hparam given to every method": ({"base": {**TINY, "rho": 0.1}, "grid": {"method": ["sam", "sgd"]}},
                                            "rho"),
    "axis over a non-identity key": ({"base": TINY, "grid": {"num_workers": [0, 2]}}, "num_workers"),
    "empty list of sub-grids": ({"base": TINY, "grid": []}, "grid"),
    "not a mapping": (["seed"], "mapping"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_grid_files_exit_2_with_one_line_naming_the_key(case: str, tmp_path: Path, capsys) -> None:
    data, key = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    assert main(["grid", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("safbench: error: ") and key in err, err
    assert not out.exists()  # rejected before anything ran or was written


def test_bad_grid_file_through_the_real_command(tmp_path: Path) -> None:
    path = write_grid(tmp_path / "bad.yaml", grid={"method": ["sgd", "sam"]}, per_method={"sam": {"rho": -1.0}})
    proc = run_cli("grid", str(path), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "rho" in proc.stderr and "method=sam" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_every_cell_is_validated_before_any_runs(tmp_path: Path, capsys) -> None:
    # The last cell is invalid: not even the first may run.
    path = write_grid(tmp_path / "g.yaml", grid={"lr": [0.1, 0.05, 0.0]})
    assert main(["grid", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "lr=0.0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unreadable_grid_file(tmp_path: Path, capsys) -> None:
    assert main(["grid", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read grid file" in capsys.readouterr().err
    with pytest.raises(UsageError, match="grid.seed must be a list"):
        parse_grid({"grid": {"seed": "0"}})


# ---- --dry-run ---------------------------------------------------------------------------------------
def _summary(run_dir: Path, status: str) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"status": status, "run_dir": run_dir.name}))


def test_dry_run_lists_every_state_and_writes_nothing(tmp_path: Path, capsys) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"seed": [0, 1, 2, 3, 4, 5]})
    out = tmp_path / "out"
    cells = load_grid(path).cells(out=str(out))
    # Lay out one cell per state by hand, the way runs leave them.
    _summary(cells[1].run_dir, "finished")
    _summary(cells[2].run_dir, "diverged")
    _summary(cells[3].run_dir, "failed")
    cells[4].run_dir.mkdir()
    torch.save({"epoch": 1}, cells[4].run_dir / "checkpoint.pt")  # interrupted: checkpoint, no summary
    lock = lock_path(cells[5].run_dir)
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live holder: running
        os.write(fd, b"otherhost 4242 now\n")
        before = snapshot(tmp_path)
        assert main(["grid", str(path), "--out", str(out), "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert snapshot(tmp_path) == before
    finally:
        os.close(fd)
    rows = {line.split()[2]: line.split()[1] for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert rows == {cells[0].hash: "pending", cells[1].hash: "finished", cells[2].hash: "diverged",
                    cells[3].hash: "failed", cells[4].hash: "interrupted", cells[5].hash: "running"}
    assert "otherhost 4242" in text and cells[0].name in text and "seed=0" in text
    assert "1 pending, 1 running, 1 interrupted, 1 finished, 1 diverged, 1 failed" in text
    assert cell_state(cells[5].run_dir) is State.PENDING  # the holder is gone (it never made the run dir)


def test_dry_run_on_a_fresh_folder_creates_nothing(tmp_path: Path, capsys) -> None:
    path = write_grid(tmp_path / "g.yaml", grid={"method": ["sgd", "mesa"]})
    out = tmp_path / "never"
    assert main(["grid", str(path), "--out", str(out), "--dry-run"]) == 0
    assert not out.exists()
    assert capsys.readouterr().out.count("pending") == 3  # two rows and the totals line
