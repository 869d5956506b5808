"""The clean-label pilots (issue 28, part 3) are ready to run: every pilot grid expands to base vs SAM over
seeds 0-2 on clean Fashion-MNIST, its model builds for 1-channel 28x28 images with 4-pixel patches, and the
script's safbench calls parse with today's CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.grid import load_grid
from bench.models import create_model
from tests.test_scripts import parse_all

PILOTS = sorted((Path(__file__).resolve().parents[2] / "grids" / "clean-pilots").glob("p*.yaml"))


def test_there_are_at_most_eight_pilots() -> None:
    assert 1 <= len(PILOTS) <= 8


@pytest.mark.parametrize("path", PILOTS, ids=lambda p: p.stem)
def test_each_pilot_is_base_against_sam_over_three_seeds_without_label_noise(path: Path) -> None:
    cells = load_grid(path).cells(out="/nonexistent/out")
    assert sorted((c.config.method, c.config.seed) for c in cells) == [(m, s) for m in ("sam", "sgd") for s in range(3)]
    assert len({c.hash for c in cells}) == 6
    for c in cells:
        assert c.config.dataset == "fashionmnist" and c.config.label_noise == 0
        assert c.config.optimizer == "adamw"
    model = create_model(cells[0].config.model, num_classes=10, in_chans=1, img_size=28)
    assert model.patch_embed.grid_size == (7, 7)  # 4-pixel patches: 49 tokens
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_pilot_script_runs_the_pilot_grids_then_their_report() -> None:
    parsed = parse_all("clean_pilots.sh")
    assert [p.command for p in parsed] == ["grid", "report"]
