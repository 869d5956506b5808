"""bench.records and the results row built from it: a summary carries its run-level config, and a run
directory written before it did still yields the same row (its config from config.yaml, keys added since
from the default every older run used)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import yaml

import optimizers
from bench import records
from bench.cells import write_failed_summary
from bench.config import RunConfig
from bench.results import result_row
from bench.run import run

TINY = {"method": "sgd", "dataset": "synthetic", "model": "mlp_tiny", "epochs": 1, "batch_size": 32,
        "train_subset": 64, "device": "cpu", "num_workers": 0, "progress": False}


# RunConfig keys the first committed runs predate
ADDED_LATER = {"label_noise": 0.0, "augment": True, "label_noise_seed": "fixed"}


def test_summary_config_keys_are_run_config_fields() -> None:
    assert set(records.SUMMARY_CONFIG_KEYS) <= {f.name for f in fields(RunConfig)}


def test_a_new_summary_carries_its_config_and_an_old_one_gets_it_from_config_yaml(tmp_path: Path) -> None:
    config = RunConfig.from_dict({**TINY, "out": str(tmp_path / "new"), "momentum": 0.5, "lr_milestones": [3, 5],
                                  "label_noise": 0.1})
    summary = run(config)
    assert {k: summary[k] for k in records.SUMMARY_CONFIG_KEYS} == {
        k: getattr(config, k) for k in records.SUMMARY_CONFIG_KEYS}
    run_dir = tmp_path / "new" / summary["run_dir"]
    new_row = result_row(run_dir)

    # The same run as an older safbench left it: no config keys in the summary, no keys added since in its
    # config.yaml.
    old_dir = tmp_path / "old" / run_dir.name
    old_dir.mkdir(parents=True)
    old_summary = {k: v for k, v in summary.items() if k not in records.SUMMARY_CONFIG_KEYS}
    (old_dir / records.SUMMARY).write_text(json.dumps(old_summary))
    old_config = {k: v for k, v in yaml.safe_load((run_dir / records.CONFIG).read_text()).items()
                  if k not in ADDED_LATER}
    (old_dir / records.CONFIG).write_text(yaml.safe_dump(old_config))
    old_row = result_row(old_dir)

    legacy = {**{k: new_row[k] for k in records.SUMMARY_CONFIG_KEYS}, **ADDED_LATER}
    assert {k: old_row[k] for k in records.SUMMARY_CONFIG_KEYS} == legacy
    assert old_row["momentum"] == 0.5 and old_row["lr_milestones"] == "[3, 5]" == new_row["lr_milestones"]
    assert {k: v for k, v in old_row.items() if k not in records.SUMMARY_CONFIG_KEYS} == \
        {k: v for k, v in new_row.items() if k not in records.SUMMARY_CONFIG_KEYS}


@pytest.mark.parametrize("method", optimizers.methods())
def test_every_key_a_run_writes_is_in_its_record_schema(method: str, tmp_path: Path) -> None:
    """summary.json and metrics.csv hold only what bench.records declares; the method's own per-epoch numbers
    are the summary's extras."""
    summary = run(RunConfig.from_dict({**TINY, "method": method, "out": str(tmp_path), "epochs": 2,
                                       "sharpness": True, "sharpness_samples": 32}))
    run_dir = tmp_path / summary["run_dir"]
    assert set(json.loads((run_dir / records.SUMMARY).read_text())) <= records.fields_of(records.Summary)
    columns = set(pd.read_csv(run_dir / records.METRICS).columns)
    method_numbers = columns - records.fields_of(records.MetricsRow)
    assert set(summary["extras"]) == method_numbers
    assert all(name.startswith(f"{method}_") for name in method_numbers)  # a method's numbers carry its name


def test_a_failed_cell_summary_follows_the_schema_and_carries_the_config(tmp_path: Path) -> None:
    config = RunConfig.from_dict({**TINY, "out": str(tmp_path)})
    run_dir = tmp_path / config.run_name()
    write_failed_summary(run_dir, config, "OSError: boom", "safbench grid g.yaml")
    summary = json.loads((run_dir / records.SUMMARY).read_text())
    assert set(summary) <= records.fields_of(records.Summary)
    assert summary["status"] == "failed" and summary["epochs_completed"] == 0
    assert {k: summary[k] for k in records.SUMMARY_CONFIG_KEYS} == {
        k: getattr(config, k) for k in records.SUMMARY_CONFIG_KEYS}


def test_every_committed_run_keeps_its_name() -> None:
    """A key added to RunConfig or to a method (HParam.added_later) since a committed run was made must not
    change that run's config hash: its directory name, and what `--resume` and `grid` look for."""
    repo = Path(__file__).resolve().parents[2]
    checked = 0
    for summary_path in sorted((repo / "results").rglob(records.SUMMARY)):
        summary = json.loads(summary_path.read_text())
        values = yaml.safe_load((summary_path.parent / records.CONFIG).read_text())
        assert RunConfig.from_record(values).config_hash() == summary["config_hash"], summary_path.parent.name
        checked += 1
    assert checked >= 60  # the committed Fashion-MNIST runs


def test_a_key_added_later_names_a_run_only_when_set() -> None:
    esam = RunConfig.from_dict({"method": "esam"})
    assert "selection" not in esam.identity()
    official = RunConfig.from_dict({"method": "esam", "selection": "official"})
    assert official.identity()["selection"] == "official" and official.config_hash() != esam.config_hash()


def test_a_run_made_before_a_key_was_added_has_its_default_in_the_row(tmp_path: Path) -> None:
    summary = run(RunConfig.from_dict({**TINY, "method": "esam", "out": str(tmp_path)}))
    run_dir = tmp_path / summary["run_dir"]
    assert result_row(run_dir)["hp_selection"] == "paper"
    stored = json.loads((run_dir / records.SUMMARY).read_text())
    del stored["hparams"]["selection"]  # as an ESAM run made before `selection` existed
    (run_dir / records.SUMMARY).write_text(json.dumps(stored))
    assert result_row(run_dir)["hp_selection"] == "paper"
