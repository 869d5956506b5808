"""The report's figures drawn from hand-made stored arrays: what a reader compares must share its scale."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.contour import ContourSet

from analysis.report import landscape_plots as plots


def _surface(scale: float, lowest: float) -> dict:
    xs = ys = np.linspace(-1.0, 1.0, 9)
    gx, gy = np.meshgrid(xs, ys)
    return {"xs": xs, "ys": ys, "loss": lowest + scale * (gx**2 + 2 * gy**2),
            "accuracy": np.full((9, 9), 0.9)}


def _curve(scale: float, lowest: float) -> dict:
    alphas = np.linspace(-1.0, 1.0, 11)
    return {"alphas": alphas, "loss": lowest + scale * alphas**2, "accuracy": np.full(11, 0.9)}


def test_levels_are_log_spaced_from_the_lowest_loss_to_the_cap() -> None:
    a, b = _surface(1.0, 0.2), _surface(300.0, 0.5)
    levels = plots.landscape_levels([a["loss"], b["loss"]])
    assert levels[0] == pytest.approx(0.2)  # the lowest loss of any map
    assert levels[-1] == pytest.approx(0.2 * plots.LANDSCAPE_CAP_RATIO)  # capped below b's 900
    ratios = levels[1:] / levels[:-1]
    assert np.allclose(ratios, ratios[0])  # equal steps on a log scale
    # A cap above the highest loss is not invented: the scale stops at the data.
    flat = plots.landscape_levels([_surface(0.1, 1.0)["loss"]])
    assert flat[-1] == pytest.approx(1.0 + 0.1 * 3)
    assert plots.landscape_levels([a["loss"]], cap=5.0)[-1] == pytest.approx(5.0)


def test_levels_without_a_positive_loss_fall_back_to_linear() -> None:
    levels = plots.landscape_levels([np.array([[-1.0, 0.0], [0.0, -2.0]])])
    assert levels[0] == -2.0 and levels[-1] == 0.0 and np.allclose(np.diff(levels), np.diff(levels)[0])


def test_every_2d_map_of_a_figure_uses_the_same_levels() -> None:
    entries = [("sgd", "sgd", _surface(1.0, 0.2)), ("saf", "saf", _surface(50.0, 0.3)),
               ("odd", "unknown", _surface(0.01, 2.0))]
    fig = plots.plot_landscape_2d(entries, "t")
    filled = [c for ax in fig.axes for c in ax.collections if isinstance(c, ContourSet) and c.filled]
    assert len(filled) == 3
    expected = plots.landscape_levels([e[2]["loss"] for e in entries])
    for c in filled:
        assert np.allclose(c.levels, expected)
        assert c.norm.vmin == pytest.approx(expected[0]) and c.norm.vmax == pytest.approx(expected[-1])


def test_1d_curves_share_one_axis_and_the_line_shares_its_loss_scale() -> None:
    curves = [("sgd", "sgd", _curve(5.0, 0.2)), ("sam", "sam", _curve(1.0, 0.3))]
    line = {"alphas": np.linspace(-0.25, 1.25, 7), "loss": np.full(7, 0.25), "accuracy": np.full(7, 0.9)}
    fig = plots.plot_landscape_1d(curves, [("sgd → saf", line)], "t")
    left, right = fig.axes[0], fig.axes[1]
    assert len(left.get_lines()) == 3  # two methods and the α = 0 marker
    colours = {ln.get_label(): ln.get_color() for ln in left.get_lines()}
    assert colours["sgd"] != colours["sam"]
    assert left.get_yscale() == "log" and left.get_xlim() == (-1.0, 1.0)
    assert right.get_ylim() == left.get_ylim()  # one loss axis
    assert plots.plot_landscape_1d(curves, [], "t", log_y=False).axes[0].get_yscale() == "linear"


def test_3d_surfaces_share_one_z_range() -> None:
    entries = [("sgd", "sgd", _surface(1.0, 0.2)), ("saf", "saf", _surface(50.0, 0.3))]
    fig = plots.plot_landscape_3d(entries, "t")
    assert len(fig.axes) == 2
    assert fig.axes[0].get_zlim() == pytest.approx(fig.axes[1].get_zlim())


def test_the_label_fit_figure_draws_every_cell_and_esams_share_beside_the_flipped_fraction() -> None:
    import pandas as pd

    from analysis.report.fit_plots import plot_label_fit

    rows = []
    for cell in ("sgd", "sam", "esam"):
        for seed in (0, 1):
            for epoch in range(3):
                rows.append({"cell": cell, "seed": seed, "epoch": epoch, "train_acc_clean": 0.5 + 0.1 * epoch,
                             "train_acc_flipped_noisy": 0.1 * epoch, "train_acc_flipped_true": 0.3,
                             "esam_selected_flipped_share": 0.4 if cell == "esam" else float("nan"),
                             "flipped_fraction": 0.25})
    fig = plot_label_fit(pd.DataFrame(rows), "results/x", ["sgd", "sam", "esam"])
    clean, noisy, true, share = fig.axes[:4]
    assert [ln.get_label() for ln in clean.get_lines()] == ["sgd (2 seeds)", "sam (2 seeds)", "esam (2 seeds)"]
    assert list(noisy.get_lines()[0].get_ydata()) == pytest.approx([0.0, 10.0, 20.0])  # in %, per epoch
    assert [ln.get_label() for ln in share.get_lines()][0] == "esam (2 seeds)"
    assert share.get_lines()[-1].get_ydata()[0] == pytest.approx(25.0)  # the flipped fraction, dotted


def test_a_variant_in_the_label_fit_figure_has_its_methods_colour_and_its_own_line_style() -> None:
    import pandas as pd

    from analysis.report.fit_plots import plot_label_fit

    cells = ("esam", "esam[beta=1.0, gamma=0.5]", "esam[beta=0.5, gamma=1.0]", "sgd", "sgd_half")
    rows = [{"cell": c, "seed": 0, "epoch": e, "train_acc_clean": 0.5, "train_acc_flipped_noisy": 0.1,
             "train_acc_flipped_true": 0.3, "flipped_fraction": 0.25} for c in cells for e in range(2)]
    lines = {ln.get_label().split(" (")[0]: ln for ln in plot_label_fit(pd.DataFrame(rows), "x", ["sgd", "esam"])
             .axes[0].get_lines()}
    esam, data_only, weight_only = (lines[c] for c in cells[:3])
    assert esam.get_color() == data_only.get_color() == weight_only.get_color() != lines["sgd"].get_color()
    assert esam.get_linestyle() == "-" and len({esam.get_linestyle(), data_only.get_linestyle(),
                                                weight_only.get_linestyle()}) == 3
    assert lines["sgd_half"].get_color() == lines["sgd"].get_color() and lines["sgd_half"].get_linestyle() != "-"


def test_the_label_fit_table_holds_each_cells_last_epoch_over_its_seeds(tmp_path) -> None:
    """Two seeds of SGD and of an ESAM variant: the last epoch's fits, ESAM's share averaged over all epochs, and
    the final test accuracy of the same runs, worked by hand; a seed without the fit columns is not counted."""
    import pandas as pd

    from analysis.report.fit_plots import label_fit_frame

    rows = []
    for cell, method, seed, clean, share, acc in (("sgd", "sgd", 0, (0.5, 0.9), None, 0.70),
                                                  ("sgd", "sgd", 1, (0.6, 1.0), None, 0.72),
                                                  ("esam[beta=1]", "esam", 0, (0.4, 0.8), (0.2, 0.4), 0.80),
                                                  ("esam[beta=1]", "esam", 1, (0.4, 0.6), (0.3, 0.5), 0.84),
                                                  ("sam", "sam", 0, None, None, 0.75)):
        run = tmp_path / f"{cell}-{seed}"
        run.mkdir()
        if clean is not None:
            frame = pd.DataFrame({"epoch": [0, 1], "train_acc_clean": clean, "train_acc_flipped_noisy": [0.1, 0.2],
                                  "train_acc_flipped_true": [0.5, 0.4]})
            if share is not None:
                frame["esam_selected_flipped_share"] = share
            frame.to_csv(run / "metrics.csv", index=False)
        rows.append({"cell": cell, "method": method, "seed": seed, "run_path": str(run), "final_test_acc": acc,
                     "label_noise_flipped": 25, "num_samples": 100})
    frame = label_fit_frame(pd.DataFrame(rows), ["sgd", "sam", "esam"]).set_index("cell")
    assert list(frame.index) == ["sgd", "esam[beta=1]"] and frame["seeds"].tolist() == [2, 2]
    assert frame.loc["sgd", "train_acc_clean_mean"] == pytest.approx(0.95)
    assert frame.loc["esam[beta=1]", "train_acc_clean_mean"] == pytest.approx(0.7)
    assert frame.loc["esam[beta=1]", "train_acc_clean_std"] == pytest.approx(0.1414, abs=1e-4)
    assert frame.loc["esam[beta=1]", "esam_selected_flipped_share_mean"] == pytest.approx(0.35)
    assert frame.loc["esam[beta=1]", "final_test_acc_mean"] == pytest.approx(0.82)
    assert frame.loc["sgd", "train_acc_flipped_true_mean"] == pytest.approx(0.4)


def test_the_sharpness_figure_keeps_each_methods_colour_and_marks_when_saf_switches_on() -> None:
    import pandas as pd

    from analysis.report.plots import colour, plot_sharpness

    cells = ("sgd", "saf", "saf_half", "saf[lam=0.1]")
    curves = pd.DataFrame([{"cell": c, "seed": 0, "epoch": e, "sharpness": 0.1 + 0.01 * e}
                           for c in cells for e in range(8)])
    rows = pd.DataFrame([{"cell": "saf", "hp_lam": 0.3, "hp_tau": 5.0, "hp_e_tilde": 3, "hp_e_start": 5,
                          "hp_store_dtype": "float32"}])
    fig = plot_sharpness(rows, curves, "results/x", ["sgd", "sam", "saf"])
    ax = fig.axes[0]
    lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines()}
    assert lines["saf"].get_color() == lines["saf_half"].get_color() == lines["saf[lam=0.1]"].get_color() \
        == colour("saf") != lines["sgd"].get_color()
    assert len({lines[c].get_linestyle() for c in cells[1:]}) == 3
    assert any(t.get_text() == "SAF on" for t in ax.texts)
    assert len(fig.legends[0].get_texts()) == len(cells)  # the legend lies inside the figure, below the axes


def test_the_cost_figure_draws_a_methods_second_setting_in_its_colour_with_another_style() -> None:
    import pandas as pd

    from analysis.report.plots import plot_cost

    curves = pd.DataFrame([{"model_key": "m", "method_label": "sam", "setting": s, "seed": 0, "epoch": e,
                            "train_time_cum": float(e + 1), "test_acc": 0.5} for s in ("default", "tuned")
                           for e in range(3)])
    left = plot_cost(curves, pd.DataFrame(), "t").axes[0]
    lines = {ln.get_label(): ln for ln in left.get_lines()}
    assert lines["sam [default]"].get_color() == lines["sam [tuned]"].get_color()
    assert lines["sam [default]"].get_linestyle() != lines["sam [tuned]"].get_linestyle()
