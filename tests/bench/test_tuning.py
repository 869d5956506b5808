"""Equal-budget tuning (bench.tuning, bench.tune_cli) and the validation split (bench.data.split): selection reads
validation numbers only, the split is disjoint and shared, the design is one for every method, a kill re-runs
nothing finished, a bad tune: section is one line with nothing written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import optimizers
from bench.cells import read_attempts
from bench.data import create_data
from bench.data.resident import symmetric_label_noise
from bench.data.split import validation_split
from bench.errors import UsageError
from bench.faultpoints import CRASH_ENV, CRASH_EXIT
from bench.grid import load_grid, parse_grid
from bench.records import SELECTED, TRIALS_DIR, TUNING
from bench.tune_cli import default_cells, select, trial_cells, tuning_rows
from bench.tuning import MAX_DIMS, choose, parse_tune, trial_settings, unit_design, val_readout
from tests.bench.grid_util import REPO, TINY, bench_cmd, cli_env
from tests.cli_util import run_main

TUNE = {"trials": 3, "seeds": [100, 101], "final_seeds": [0, 1, 2, 3, 4]}
BASE = {**TINY, "val_size": 64, "train_subset": 64, "label_noise": 0.25}


def tune_file(path: Path, tune: dict | None = None, methods: tuple[str, ...] = ("sgd", "saf"), **base) -> Path:
    data = {"base": {**BASE, **base}, "grid": {"method": list(methods)},
            "per_method": {"saf": {"e_tilde": 1, "e_start": 1}}, "tune": {**TUNE, **(tune or {})}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---- the split -------------------------------------------------------------------------------------
def test_the_split_is_disjoint_from_training_and_the_same_for_every_seed() -> None:
    train, held = validation_split(1000, 200, 100, seed=0)
    assert list(train) == list(range(200)) and len(held) == 100  # room beyond the subset: training unchanged
    assert held.min() >= 200 and len(set(held)) == 100
    train, held = validation_split(300, None, 100, seed=0)  # the whole set trains: drawn from all of it
    assert not set(train) & set(held) and len(held) == 100 and len(train) == 200
    assert list(validation_split(300, None, 100, seed=0)[1]) == list(held)
    assert list(validation_split(300, None, 100, seed=1)[1]) != list(held)  # the split seed is the split's own
    with pytest.raises(UsageError, match="needs 350 training images"):
        validation_split(300, 250, 100, seed=0)


def test_validation_images_are_the_same_for_every_seed_and_labelled_like_training() -> None:
    kw = {"batch_size": 16, "device": "cpu", "num_workers": 0, "train_subset": 300, "val_size": 100,
          "label_noise": 0.3, "num_train": 512}
    a, b = create_data("synthetic", seed=0, **kw), create_data("synthetic", seed=7, **kw)
    assert torch_equal(a.val_images, b.val_images) and torch_equal(a.val_targets, b.val_targets)
    assert torch_equal(a.train_images, b.train_images)
    clean = create_data("synthetic", seed=0, **{**kw, "label_noise": 0.0})
    assert torch_equal(clean.train_images[:300], a.train_images)  # the training set is the first 300 images
    # validation labels carry the noise drawn for their own indices, as training labels do
    held = validation_split(512, 300, 100, seed=0)[1]
    noisy = symmetric_label_noise(np.arange(512) % 10, 10, 0.3)  # the draw depends on the index only
    flipped = noisy != np.arange(512) % 10
    assert ((a.val_targets.numpy() != clean.val_targets.numpy()) == flipped[held]).all()
    assert flipped[held].any()
    # every validation image is one of the dataset's training images that training does not use
    full = create_data("synthetic", seed=0, **{**kw, "train_subset": None, "val_size": 0, "label_noise": 0.0})
    rows = {full.train_images[i].numpy().tobytes(): i for i in range(512)}
    assert sorted(rows[x.numpy().tobytes()] for x in a.val_images) == list(held)


def torch_equal(x, y) -> bool:
    return x.shape == y.shape and bool((x == y).all())


@pytest.mark.parametrize("values, message", [({"val_size": -1}, "val_size=-1 is invalid"),
                                             ({"val_size": 500, "train_subset": None}, "fewer than batch_size"),
                                             ({"val_size": 512, "train_subset": None}, "leaves no training images"),
                                             ({"val_size": 460}, "needs 524 training images")])
def test_a_bad_val_size_is_one_line_and_exit_2(tmp_path: Path, values: dict, message: str) -> None:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **values}.items() if k != "progress" and v is not None]
    result = run_main("run", "--method", "sgd", *flags, "--no-progress", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "o").glob("*/summary.json"))


# ---- selection reads validation numbers only -------------------------------------------------------
def test_the_epoch_read_out_follows_validation_not_test() -> None:
    rows = [{"epoch": 0, "val_acc": 0.5, "test_acc": 0.9}, {"epoch": 1, "val_acc": 0.7, "test_acc": 0.6},
            {"epoch": 2, "val_acc": 0.7, "test_acc": 0.8}, {"epoch": 3, "val_acc": 0.6, "test_acc": 0.95}]
    out = val_readout(rows)
    assert out == {"final_val_acc": 0.6, "best_val_acc": 0.7, "val_best_epoch": 1, "test_acc_at_val_best": 0.6}


def test_the_setting_choice_follows_validation_not_test() -> None:
    # Trial 1 wins on validation (mean 0.80); trial 2 would win on test; trial 0 ties trial 1 on one seed only.
    def row(trial, seed, val, test, time=1.0, status="finished"):
        return {"trial": trial, "setting": {"lr": trial}, "seed": seed, "status": status, "final_val_acc": val,
                "best_val_acc": val, "train_time_s": time, "final_test_acc": test}
    rows = [row(0, 0, 0.80, 0.5), row(0, 1, 0.70, 0.5), row(1, 0, 0.80, 0.6), row(1, 1, 0.80, 0.6),
            row(2, 0, 0.75, 0.99), row(2, 1, 0.76, 0.99)]
    assert choose(rows, "final")["trial"] == 1
    # a diverged seed counts as 0, however good its last numbers were
    assert choose([*rows[:4], row(3, 0, 0.99, 0.9), row(3, 1, 0.99, 0.9, status="diverged")], "final")["trial"] == 1
    # ties go to the lower training time
    assert choose([row(0, 0, 0.8, 0.1, time=2.0), row(1, 0, 0.8, 0.1, time=1.0)], "final")["trial"] == 1
    # when every trial scores 0, a failed trial (no training time) never wins the tie: the earliest finished does
    failed = {**row(1, 0, None, None), "status": "failed", "train_time_s": None}
    assert choose([row(0, 0, 0.0, 0.1, time=2.0, status="diverged"), failed], "final")["trial"] == 0
    assert choose([failed, {**row(2, 0, 0.0, 0.1, time=float("nan")), "status": "failed"}], "final")["trial"] == 1
    # mean over seeds, recomputed by pandas, is what the choice maximises
    frame = pd.DataFrame(rows)
    assert frame.groupby("trial")["final_val_acc"].mean().idxmax() == choose(rows, "final")["trial"]


@pytest.mark.slow
def test_tampering_with_test_numbers_changes_no_choice(tmp_path: Path) -> None:
    """A real tiny tune; then every trial's test numbers are reversed in its summary: the choice is unchanged.
    Reversing the validation numbers instead changes it."""
    path = tune_file(tmp_path / "t.yaml", methods=("saf",))
    assert run_main("tune", str(path), "--out", str(tmp_path / "out")).returncode == 0
    spec = load_grid(path)
    tspec = parse_tune(spec.tune, ["saf"], spec.base, where="t")
    trials = trial_cells(tspec, default_cells(spec), tmp_path / "out" / TRIALS_DIR)
    before = select(tuning_rows(trials), tspec)
    assert before == json.loads((tmp_path / "out" / SELECTED).read_text())

    def rewrite(keys: tuple[str, ...]) -> None:
        for cell, trial, _ in trials:
            p = cell.run_dir / "summary.json"
            s = json.loads(p.read_text())
            s.update({k: 1.0 - 0.1 * trial if "test" in k else 0.1 * trial if s.get(k) is not None else None
                      for k in keys})
            p.write_text(json.dumps(s))

    rewrite(("final_test_acc", "best_test_acc", "test_acc_at_val_best"))
    assert select(tuning_rows(trials), tspec) == before
    rewrite(("final_val_acc",))  # trial 2 now wins on validation
    assert {m: c["trial"] for m, c in select(tuning_rows(trials), tspec).items()} == {"saf": 2}


# ---- the design ------------------------------------------------------------------------------------
def test_every_method_gets_the_same_design_and_its_defaults_as_trial_0() -> None:
    methods = list(optimizers.methods())
    spec = parse_tune({"trials": 6, "seeds": [9]}, methods, {"val_size": 10, "lr": 0.1}, where="t")
    units = unit_design(spec)
    assert units.shape == (5, MAX_DIMS) and (units >= 0).all() and (units < 1).all()
    run_trials = None
    for method in methods:
        defaults = {"lr": 0.1, "weight_decay": 5e-4, **optimizers.method_spec(method).defaults}
        trials = trial_settings(spec, method, defaults)
        assert len(trials) == 6 and trials[0] == {k: defaults[k] for k in trials[0]}
        mine = [{k: t[k] for k in ("lr", "weight_decay")} for t in trials]
        assert run_trials in (None, mine)  # the lr and weight-decay trials are the same for every method
        run_trials = mine
        for i, trial in enumerate(trials[1:]):  # coordinate j of point i is the j-th tuned key, in order
            for j, dim in enumerate(spec.space[method].values()):
                assert trial[dim.name] == dim.search.value(units[i, j], dim.kind)
                assert dim.search.low <= trial[dim.name] <= dim.search.high
    assert {d for d in spec.space["saf"]} == {"lr", "weight_decay", "lam", "e_tilde", "e_start"}


@pytest.mark.parametrize("tune, message", [
    ({"trials": 0}, "tune.trials=0 is invalid"),
    ({"space": {"saf": {"gamma": [0.1, 0.5]}}}, "'gamma' is not a hyperparameter of saf"),
    ({"space": {"saf": {"lam": [-1.0, 0.5]}}}, "lam=-1.0 is invalid"),
    ({"space": {"saf": {"e_tilde": [0, 3]}}}, "e_tilde=0 is invalid"),
    ({"space": {"all": {"momentum": [0.5, 0.9]}}}, "cannot be tuned for every method"),
    ({"final_seeds": [0, 1, 2, 3, 100]}, "seed 100 is also a tuning seed"),
    ({"design": "grid-search"}, "tune.design='grid-search' is invalid"),
    ({"select": "test"}, "tune.select='test' is invalid"),
])
def test_a_bad_tune_section_is_one_line_exit_2_and_nothing_written(tmp_path: Path, tune: dict, message: str) -> None:
    path = tune_file(tmp_path / "t.yaml", tune)
    result = run_main("tune", str(path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_tuning_needs_a_validation_split_and_grid_points_to_tune(tmp_path: Path) -> None:
    result = run_main("tune", str(tune_file(tmp_path / "t.yaml", val_size=0)), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "needs a validation split" in result.stderr
    path = tune_file(tmp_path / "t.yaml")  # one method on another split would be validated on other images
    data = yaml.safe_load(path.read_text())
    data["per_method"]["saf"]["val_split_seed"] = 3
    path.write_text(yaml.safe_dump(data))
    result = run_main("tune", str(path), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "needs the same split" in result.stderr
    result = run_main("tune", str(tune_file(tmp_path / "t.yaml", lr="fast")), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = run_main("grid", str(tune_file(tmp_path / "t.yaml")), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "run it with safbench tune" in result.stderr
    assert not (tmp_path / "o").exists()


# ---- runs ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_kill_in_the_middle_of_tuning_reruns_nothing_that_finished(tmp_path: Path) -> None:
    """Killed in the first trial, then after the last trial (before the choice), then in the first fresh-seed
    run; each time the next process resumes the cut run and starts no finished one again. The kills land by
    crash hooks, never by timing."""
    path, out = tune_file(tmp_path / "t.yaml", {"trials": 2}, methods=("sgd",)), tmp_path / "out"
    spec = load_grid(path)
    tspec = parse_tune(spec.tune, ["sgd"], spec.base, where="t")
    trials = [c for c, _, _ in trial_cells(tspec, default_cells(spec), out / TRIALS_DIR)]
    for point in ("epoch-1", "tune-trials-done", "epoch-1"):
        killed = subprocess.run(bench_cmd("tune", str(path), "--out", str(out)), cwd=REPO,
                                env={**cli_env(), CRASH_ENV: point}, capture_output=True, text=True, timeout=600)
        assert killed.returncode == CRASH_EXIT, (point, killed.stdout[-2000:], killed.stderr[-2000:])
        if point == "tune-trials-done":
            assert not (out / TUNING).exists()
            finished = {c.run_dir: (c.run_dir / "summary.json").stat().st_mtime_ns for c in trials}
    assert run_main("tune", str(path), "--out", str(out)).returncode == 0
    starts = {c.run_dir: len([a for a in read_attempts(c.run_dir) if a["event"] == "start"]) for c in trials}
    assert starts == {c.run_dir: 2 if i == 0 else 1 for i, c in enumerate(trials)}  # only the cut one twice
    assert {d: (d / "summary.json").stat().st_mtime_ns for d in finished} == finished
    final = sorted(p.parent for p in out.glob("*/summary.json"))
    assert len(final) in (5, 10)  # the defaults and (unless they won) the choice, on the fresh seeds
    restarted = [d for d in final if len([a for a in read_attempts(d) if a["event"] == "start"]) > 1]
    assert len(restarted) == 1  # the fresh-seed run cut by the last kill, resumed once
    rows = pd.read_csv(out / TUNING)
    assert len(rows) == 2 * 2 and set(rows["status"]) == {"finished"}
    assert "final_test_acc" not in rows.columns and not any("test" in c for c in rows.columns)


@pytest.mark.slow
def test_a_changed_design_leaves_the_old_trials_out(tmp_path: Path) -> None:
    path, out = tune_file(tmp_path / "t.yaml", {"trials": 2}, methods=("sgd",)), tmp_path / "out"
    assert run_main("tune", str(path), "--out", str(out)).returncode == 0
    first = set(pd.read_csv(out / TUNING)["run_dir"])
    tune_file(path, {"trials": 2, "design_seed": 5}, methods=("sgd",))
    result = run_main("tune", str(path), "--out", str(out))
    assert result.returncode == 0 and "the design differs" in result.stdout
    second = pd.read_csv(out / TUNING)
    old_points = first - set(second["run_dir"])
    assert len(old_points) == 2 and all((out / TRIALS_DIR / d).exists() for d in old_points)  # trial 1 x 2 seeds
    assert len(second) == 4 and set(second[second["trial"] == 0]["run_dir"]) <= first  # the defaults still belong


def test_the_committed_choices_are_the_highest_mean_validation_accuracy() -> None:
    """Recomputed from the committed tuning.csv with pandas, a computation apart from bench.tuning.choose."""
    folders = [p.parent for p in (REPO / "results").glob(f"*/{SELECTED}")]
    if not folders:
        pytest.skip("no tuned results committed")
    for folder in folders:
        rows = pd.read_csv(folder / TUNING)
        selected = json.loads((folder / SELECTED).read_text())
        for method, choice in selected.items():
            mine = rows[rows["method"] == method].copy()
            column = "final_val_acc" if choice["readout"] == "final" else "best_val_acc"
            mine["score"] = np.where(mine["status"] == "finished", mine[column].fillna(0.0), 0.0)
            means = mine.groupby("trial")["score"].mean()
            assert choice["trial"] in set(means[means == means.max()].index), (folder, method)
            assert choice["setting"] == json.loads(mine[mine["trial"] == choice["trial"]]["setting"].iloc[0])


def test_parse_grid_keeps_the_tune_section() -> None:
    spec = parse_grid({"base": BASE, "grid": {"method": ["sgd"]}, "tune": TUNE}, where="g")
    assert spec.tune == TUNE and len(spec.cells()) == 1


def test_the_lambda_course_grid_trains_the_tuned_folders_choices() -> None:
    """grids/fashionmnist-regime-lambda.yaml copies selected.json's settings by hand: every cell trains what the
    tuned folder's fresh-seed run of its method and seed trains (same keys as that grid's base, the choice's
    values), adding only measurements."""
    selected = json.loads((REPO / "results" / "fashionmnist-tuned" / SELECTED).read_text())
    tuned = load_grid(REPO / "grids" / "fashionmnist-tuned.yaml")
    course = load_grid(REPO / "grids" / "fashionmnist-regime-lambda.yaml")
    measured = {"sharpness", "sharpness_samples", "hessian_samples", "hessian_epochs"}
    tuned_cells = {c.config.method: c for c in tuned.cells()}
    cells = course.cells()
    assert sorted({c.config.method for c in cells}) == sorted(selected) and len(cells) == 3 * len(selected)
    for cell in cells:
        mine = {**cell.config.to_dict(), **cell.config.hparams()}
        reference = tuned_cells[cell.config.method]
        expected = {**reference.config.to_dict(), **reference.config.hparams(),
                    **selected[cell.config.method]["setting"]}
        differ = {k for k in set(mine) | set(expected) if k not in {"seed", "out", "method_seed"} | measured
                  and mine.get(k) != expected.get(k)}
        assert not differ, (cell.config.method, {k: (mine.get(k), expected.get(k)) for k in differ})
        assert cell.config.hessian_epochs == [0, 4, 9, 14, 19] and cell.config.seed in (0, 1, 2)
