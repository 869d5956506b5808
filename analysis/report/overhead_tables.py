"""The cost-per-step tables as written: overhead's numbers as strings beside their targets, and their files.

One table per kind of `safbench overhead` CSV (step ratios, the paper's shares, extra state, the loop, the
SAF store's size, exchange and dtype error), each with notes saying how it was measured and judged.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.targets import DTYPE_ERROR_TARGET, LOOP_TARGET, NODE_STORE_TARGET_BYTES, STEP_TARGETS
from optimizers.saf import DEFAULT_STORE_DTYPE

from .format import MISSING, TableFile, fmt_bytes, fmt_ratio, is_missing, write_table
from .overhead import (
    BASE,
    device_label,
    loop_table,
    memory_table,
    method_rank,
    methods_in,
    share_table,
    step_table,
    store_tables,
)


def format_step_table(table: pd.DataFrame) -> pd.DataFrame:
    cols: dict[str, list[str]] = {
        "Device": [device_label(d) for d in table["device_name"]], "Shape": list(table["shape"]),
        "Model": list(table["model"]),
        "Batch": [str(int(b)) for b in table["batch_size"]], "Precision": list(table["precision"]),
        "SGD img/s": [MISSING if is_missing(x) else f"{x:.0f}" for x in table["base_images_per_s"]]}
    for m in [m for m in methods_in(table) if m != BASE]:
        cols[f"{m} ×"] = [fmt_ratio(*(r.get(f"{m}_{s}") for s in ("ratio", "q1", "q3")))
                          for r in table.to_dict("records")]
    cols["Missed targets"] = [x or "none" for x in table["missed"]]
    cols["File"] = list(table["file"])
    return pd.DataFrame(cols)


def _range(low: object, high: object, n: object) -> str:
    if not n:
        return MISSING
    text = f"{low:.3f}" if abs(high - low) < 5e-4 else f"{low:.3f}–{high:.3f}"
    return f"{text} ({int(n)})"


def format_share_table(shares: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Method": list(shares["method"]),
        "Paper share of SGD img/s (rows)": [_range(*r) for r in
                                            shares[["paper_min", "paper_max", "paper_n"]].itertuples(False)],
        "Ours, GPU (measurements)": [_range(*r) for r in
                                     shares[["cuda_min", "cuda_max", "cuda_n"]].itertuples(False)],
        "Ours, CPU (measurements)": [_range(*r) for r in
                                     shares[["cpu_min", "cpu_max", "cpu_n"]].itertuples(False)]})


def format_memory_table(table: pd.DataFrame) -> pd.DataFrame:
    recs = table.to_dict("records")

    def store(m: str) -> list[str]:
        return [MISSING if is_missing(r.get(f"{m}_store_bytes")) else
                f"{fmt_bytes(r[f'{m}_store_bytes'])} ({r[f'{m}_store_location']})" for r in recs]

    cols = {"Device": [device_label(d) for d in table["device_name"]], "Shape": list(table["shape"]),
            "Model": list(table["model"]),
            "Samples (N)": [f"{int(n):,}" for n in table["num_samples"]],
            "SAF store": store("saf"), "Official SAF store": store("saf_official"),
            "MESA EMA": [fmt_bytes(r.get("mesa_ema_bytes")) for r in recs]}
    peaks = [c for c in table.columns if c.endswith("_peak_bytes")]
    if table[peaks].notna().any().any():  # peak memory is measured on CUDA only
        for c in sorted(peaks, key=lambda c: method_rank(c.removesuffix("_peak_bytes"))):
            cols[f"{c.removesuffix('_peak_bytes')} peak"] = [fmt_bytes(x) for x in table[c]]
    cols["File"] = list(table["file"])
    return pd.DataFrame(cols)


def format_loop_table(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Device": [device_label(d) for d in table["device_name"]], "Shape": list(table["shape"]),
        "Model": list(table["model"]),
        "Method": list(table["method"]), "Batch": [str(int(b)) for b in table["batch_size"]],
        "Step-only img/s": [f"{x:.0f}" for x in table["step_images_per_s_median"]],
        "Loop img/s": [f"{x:.0f}" for x in table["loop_images_per_s_median"]],
        "Loop / step": [fmt_ratio(*r) for r in
                        table[["loop_ratio_median", "loop_ratio_q1", "loop_ratio_q3"]].itertuples(False)],
        f"≥ {LOOP_TARGET:g}": ["yes" if m else "no" for m in table["met"]],
        "File": list(table["file"])})


def _verdict(x: object) -> str:
    return "" if is_missing(x) else ("yes" if x else "no")


def format_store_size(size: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Design": list(size["design"]), "Dtype": list(size["dtype"]),
        "N": [f"{int(n):,}" for n in size["num_samples"]], "C": [str(int(c)) for c in size["num_classes"]],
        "Ranks": [str(int(w)) for w in size["world_size"]],
        "Per rank": [fmt_bytes(b) for b in size["bytes_per_rank"]],
        "Per node": [fmt_bytes(b) for b in size["bytes_per_node"]],
        "Where": list(size["location"]),
        f"Node ≤ {NODE_STORE_TARGET_BYTES / 1e9:g} GB": [_verdict(x) for x in size["node_target_met"]],
        "File": list(size["file"])})


def format_store_exchange(exchange: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Device": [device_label(d) for d in exchange["device_name"]], "Design": list(exchange["design"]),
        "Dtype": list(exchange["dtype"]), "Where": list(exchange["location"]),
        "Batch": [str(int(b)) for b in exchange["batch_size"]],
        "Read + write per step (ms)": [fmt_ratio(*r) for r in exchange[
            ["exchange_ms_median", "exchange_ms_q1", "exchange_ms_q3"]].itertuples(False)],
        "Bytes moved per step": [fmt_bytes(b) for b in exchange["bytes_moved_per_step"]],
        "File": list(exchange["file"])})


def format_store_error(error: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Logits": list(error["logits_case"]), "Store dtype": list(error["dtype"]),
        "Trajectory loss (fp32 store)": [f"{x:.4g}" for x in error["trajectory_loss_fp32_store"]],
        "Relative change": [f"{x:.2e}" for x in error["rel_loss_error"]],
        f"< {DTYPE_ERROR_TARGET:g}": [_verdict(x) for x in error["met"]], "File": list(error["file"])})


def build_overhead_tables(found: dict[str, pd.DataFrame], reference: pd.DataFrame,
                          out: Path) -> tuple[list[TableFile], pd.DataFrame | None]:
    """Write every overhead table that the CSVs allow; returns them and the step table (for the figure)."""
    written: list[TableFile] = []
    steps = None
    targets = "; ".join(t.text() for t in STEP_TARGETS)
    if "steps" in found:
        steps = step_table(found["steps"])
        written.append(write_table(
            out, "overhead_steps", "Step time of every method (× SGD's, interleaved in one process)", steps,
            format_step_table(steps), notes=[
                "Median [quartiles] over rounds of the per-round ratio step time / SGD's step time; every "
                "round times each method once in shuffled order, warm-up excluded (CUDA events on a GPU).",
                f"Targets: {targets}. A row that misses one lists it under Missed targets.",
                "saf_official is the official store design (logits copied to host numpy every step, fp32, "
                "one full copy per rank), measured beside ours."]))
        shares = share_table(steps, reference)
        written.append(write_table(
            out, "overhead_share", "Share of SGD's throughput: the paper against our step measurements",
            shares, format_share_table(shares), notes=[
                "Paper: min–max of `throughput_vs_base` over its Table 1 / Table 3 rows in the reference "
                "CSV (whole training runs on 8×V100 / one GPU). Ours: min–max of the median per-round "
                "images/s / SGD's over the step measurements above; the count is in brackets.",
                "CPU shares say whether the code adds work per step; whether the paper's GPU shares hold "
                "needs GPU measurements (safbench overhead --device cuda)."]))
        memory = memory_table(found["steps"])
        written.append(write_table(out, "overhead_memory", "Extra state of SAF and MESA", memory,
                                   format_memory_table(memory), notes=[
                                       "State kept between steps: the SAF logit store (sized for N samples, "
                                       "on the device when it fits) and the MESA EMA copy of the weights."]))
    if "loop" in found:
        loop = loop_table(found["loop"])
        written.append(write_table(
            out, "overhead_loop", "The real training loop against the step alone", loop,
            format_loop_table(loop), notes=[
                f"Target: the loop (data, store, bookkeeping; evaluation excluded) reaches at least "
                f"{LOOP_TARGET:g} of the step-only images/s."]))
    if "store" in found:
        parts = store_tables(found["store"])
        made = (("size", "SAF store for ImageNet-1k: size", format_store_size,
                 f"Target: ours in fp16 at most {NODE_STORE_TARGET_BYTES / 1e9:g} GB for a whole node."),
                ("exchange", "SAF store: per-step read and write", format_store_exchange,
                 "The store's reads and writes for one batch, timed alone."),
                ("dtype_error", "SAF store: what 16-bit storage changes in the loss", format_store_error,
                 f"Target: relative change of the trajectory loss below {DTYPE_ERROR_TARGET:g}. SAF's "
                 f"default store dtype is {DEFAULT_STORE_DTYPE}."))
        for section, title, fmt, note in made:
            if len(parts[section]):
                written.append(write_table(out, f"overhead_store_{section}", title, parts[section],
                                           fmt(parts[section]), notes=[note]))
    return written, steps
