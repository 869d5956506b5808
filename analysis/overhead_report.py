"""The report's cost section, built only from the CSVs `safbench overhead` writes (results/overhead/).

Three kinds of file, one per measurement: `steps-*` (every method's step time on one model, as a ratio
to SGD's within each round), `loop-*` (the real training loop against the step alone) and `store-*`
(the SAF store's size, per-step exchange cost and storage-dtype error). Each becomes a table beside
the targets it is judged by and, for the step ratios, beside the paper's own throughput shares from
the reference CSV. The targets below are plain data: the suite's goals, not results; a row that
misses one says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import UsageError
from bench.records import overhead_glob
from bench.targets import DTYPE_ERROR_TARGET, LOOP_TARGET, NODE_STORE_TARGET_BYTES, STEP_TARGETS, Target
from optimizers.saf import DEFAULT_STORE_DTYPE

from . import report as rp
from .report import MISSING, PAPER_SOURCE, TableFile, is_missing, write_table

# The columns each kind's tables read (written by the row dataclasses of bench.measure.rows).
REQUIRED = {
    "steps": ("model", "shape", "method", "batch_size", "precision", "channels_last", "num_samples",
              "images_per_s_median", "time_ratio_median", "time_ratio_q1", "time_ratio_q3",
              "throughput_ratio_median", "state_bytes", "peak_mem_bytes", "saf_store_bytes",
              "saf_store_location", "mesa_ema_bytes", "device_name"),
    "loop": ("model", "shape", "method", "batch_size", "step_images_per_s_median", "loop_images_per_s_median",
             "loop_ratio_median", "loop_ratio_q1", "loop_ratio_q3", "device_name"),
    "store": ("section", "design", "dtype", "num_samples", "num_classes", "world_size", "bytes_per_rank",
              "bytes_per_node", "location", "batch_size", "exchange_ms_median", "exchange_ms_q1",
              "exchange_ms_q3", "bytes_moved_per_step", "logits_case", "trajectory_loss_fp32_store",
              "rel_loss_error", "device_name"),
}
KINDS = tuple(REQUIRED)
BASE = rp.BASE_METHOD
# The report's order with the official SAF store design beside ours.
_SAF = rp.METHOD_ORDER.index("saf") + 1
METHOD_ORDER = (*rp.METHOD_ORDER[:_SAF], "saf_official", *rp.METHOD_ORDER[_SAF:])


# ---- loading ---------------------------------------------------------------------------------------
def load_overhead(folder: str | Path) -> dict[str, pd.DataFrame]:
    """Every `<kind>-<device>-<stamp>.csv` under `folder`, concatenated per kind, with its file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"overhead folder {folder} does not exist (it holds the CSVs of safbench overhead)")
    found: dict[str, pd.DataFrame] = {}
    for kind in KINDS:
        frames = []
        for path in sorted(folder.glob(overhead_glob(kind))):
            try:
                frame = pd.read_csv(path)
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
                raise UsageError(f"{path} is not a safbench overhead CSV ({type(exc).__name__})") from None
            missing = [c for c in REQUIRED[kind] if c not in frame.columns]
            if missing:
                raise UsageError(f"{path} is not a safbench overhead {kind} CSV: it lacks "
                                 f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
            frames.append(with_device(frame.assign(file=path.name)))
        if frames:
            found[kind] = pd.concat(frames, ignore_index=True)
    return found


def device_kind(device_name: str) -> str:
    """"cpu" or "cuda" from the provenance device name (CPUs are recorded as "cpu: <model> ...")."""
    return "cpu" if str(device_name).startswith("cpu") else "cuda"


def with_device(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a `device` column ("cpu"/"cuda"), which picks the targets that apply to a row."""
    return frame.assign(device=[device_kind(d) for d in frame["device_name"]])


def device_label(device_name: str) -> str:
    """Short and telling: "cpu, 2 threads" (the thread count moves CPU ratios) or the GPU's name."""
    name = str(device_name)
    if device_kind(name) == "cuda":
        return name
    threads = re.search(r"(\d+) threads?\)", name)
    if not threads:
        return "cpu"
    return f"cpu, {threads.group(1)} thread{'' if threads.group(1) == '1' else 's'}"


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


# ---- step ratios ---------------------------------------------------------------------------------
MEASUREMENT = ("file", "device", "device_name", "shape", "model", "batch_size", "precision", "channels_last")
ORDER = ["device", "shape", "model", "file"]  # how every table lists its rows


def _measurements(steps: pd.DataFrame) -> Iterator[tuple[dict[str, object], pd.DataFrame]]:
    """(the measurement's key columns, its rows: one per method) for each file × model."""
    for key, g in steps.groupby(list(MEASUREMENT), sort=False, dropna=False):
        yield dict(zip(MEASUREMENT, key, strict=True)), g


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values(ORDER, kind="stable", ignore_index=True)


def step_table(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per measurement (file × model): the base's images/s and every method's time ratio.

    Columns `<method>_ratio`, `_q1`, `_q3` (step time / SGD's, median and quartiles over rounds),
    `<method>_share` (images/s / SGD's) and `missed` (the targets this row fails, "" when none).
    """
    out = []
    for row, g in _measurements(steps):
        base = g[g["method"] == BASE]
        row["base_images_per_s"] = base["images_per_s_median"].iloc[0] if len(base) else math.nan
        missed = []
        for _, m in sorted(g.iterrows(), key=lambda r: _method_rank(r[1]["method"])):
            name = m["method"]
            row[f"{name}_ratio"] = m["time_ratio_median"]
            row[f"{name}_q1"], row[f"{name}_q3"] = m["time_ratio_q1"], m["time_ratio_q3"]
            row[f"{name}_share"] = m["throughput_ratio_median"]
            missed += [f"{name} {m['time_ratio_median']:.2f}×, target {t.text()}" for t in STEP_TARGETS
                       if t.applies(name, row["device"]) and not t.met(m["time_ratio_median"])]
        row["methods"] = sorted(g["method"], key=_method_rank)
        row["missed"] = "; ".join(missed)
        out.append(row)
    return _ordered(pd.DataFrame(out))


def _methods(table: pd.DataFrame) -> list[str]:
    return sorted({m for ms in table["methods"] for m in ms}, key=_method_rank)


def fmt_ratio(median: object, q1: object = math.nan, q3: object = math.nan) -> str:
    if is_missing(median):
        return MISSING
    return f"{median:.2f}" if is_missing(q1) or is_missing(q3) else f"{median:.2f} [{q1:.2f}–{q3:.2f}]"


def format_step_table(table: pd.DataFrame) -> pd.DataFrame:
    cols: dict[str, list[str]] = {
        "Device": [device_label(d) for d in table["device_name"]], "Shape": list(table["shape"]),
        "Model": list(table["model"]),
        "Batch": [str(int(b)) for b in table["batch_size"]], "Precision": list(table["precision"]),
        "SGD img/s": [MISSING if is_missing(x) else f"{x:.0f}" for x in table["base_images_per_s"]]}
    for m in [m for m in _methods(table) if m != BASE]:
        cols[f"{m} ×"] = [fmt_ratio(*(r.get(f"{m}_{s}") for s in ("ratio", "q1", "q3")))
                          for r in table.to_dict("records")]
    cols["Missed targets"] = [x or "none" for x in table["missed"]]
    cols["File"] = list(table["file"])
    return pd.DataFrame(cols)


def share_table(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per method: the paper's share of SGD's images/s (range over its tables) against ours per device."""
    paper = reference[reference["source"].astype(str).str.startswith(PAPER_SOURCE)]
    rows = []
    for m in [m for m in _methods(table) if m != BASE]:
        spans = {"paper": pd.to_numeric(paper.loc[paper["method"] == m, "throughput_vs_base"], errors="coerce")}
        spans |= {device: table.loc[table["device"] == device, f"{m}_share"] for device in ("cuda", "cpu")}
        row: dict[str, object] = {"method": m}
        for who, values in spans.items():
            values = values.dropna()
            row[f"{who}_min"], row[f"{who}_max"] = (values.min(), values.max()) if len(values) else (math.nan,) * 2
            row[f"{who}_n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


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


def memory_table(steps: pd.DataFrame) -> pd.DataFrame:
    """The extra state of SAF (store) and MESA (EMA) and every method's peak memory, per measurement."""
    rows = []
    for row, g in _measurements(steps):
        by = g.set_index("method")
        for m in ("saf", "saf_official"):
            if m in by.index:
                row[f"{m}_store_bytes"] = by.at[m, "saf_store_bytes"]
                row[f"{m}_store_location"] = by.at[m, "saf_store_location"]
        if "mesa" in by.index:
            row["mesa_ema_bytes"] = by.at["mesa", "mesa_ema_bytes"]
        for m in by.index:
            row[f"{m}_peak_bytes"] = by.at[m, "peak_mem_bytes"]
            row[f"{m}_state_bytes"] = by.at[m, "state_bytes"]
        row["num_samples"] = g["num_samples"].iloc[0]
        rows.append(row)
    return _ordered(pd.DataFrame(rows))


def fmt_bytes(n: object) -> str:
    if is_missing(n):
        return MISSING
    n = float(n)
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


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
        for c in sorted(peaks, key=lambda c: _method_rank(c.removesuffix("_peak_bytes"))):
            cols[f"{c.removesuffix('_peak_bytes')} peak"] = [fmt_bytes(x) for x in table[c]]
    cols["File"] = list(table["file"])
    return pd.DataFrame(cols)


# ---- the loop and the store ------------------------------------------------------------------------
def loop_table(loop: pd.DataFrame) -> pd.DataFrame:
    return _ordered(loop.assign(met=loop["loop_ratio_median"] >= LOOP_TARGET))


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


def store_tables(store: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The store CSV's three sections, each with its verdict column where a target applies."""
    size = store[store["section"] == "size"].copy()
    size["node_target_met"] = [b <= NODE_STORE_TARGET_BYTES if (d == "saf" and t == "float16") else None
                               for d, t, b in zip(size["design"], size["dtype"], size["bytes_per_node"],
                                                  strict=True)]
    exchange = store[store["section"] == "exchange"].copy()
    error = store[store["section"] == "dtype_error"].copy()
    error["met"] = error["rel_loss_error"] < DTYPE_ERROR_TARGET
    return {"size": size, "exchange": exchange, "dtype_error": error}


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


# ---- writing ---------------------------------------------------------------------------------------
def commands(found: dict[str, pd.DataFrame]) -> list[str]:
    """The commands that made the CSVs, deduplicated, oldest first."""
    frames = [f for f in found.values() if "command" in f.columns]
    if not frames:
        return []
    rows = pd.concat(frames, ignore_index=True)
    if "measured_at" in rows.columns:
        rows = rows.sort_values("measured_at", kind="stable")
    return list(dict.fromkeys(str(c) for c in rows["command"].dropna()))


def provenance_lines(found: dict[str, pd.DataFrame]) -> list[str]:
    files = pd.concat([f.drop_duplicates("file") for f in found.values()], ignore_index=True)
    lines = []
    for col in ("git_commit", "device_name", "torch_version"):
        if col in files.columns:
            counts = files[col].fillna("unknown").astype(str).value_counts(sort=False)
            lines.append(f"- {col}: " + "; ".join(f"`{v}` ({n} file{'' if n == 1 else 's'})"
                                                 for v, n in counts.items()))
    return lines


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


@dataclass
class StepPanel:
    """One measurement as the overhead figure draws it."""

    title: str
    bars: dict[str, tuple[float, float, float]]  # method -> (median, q1, q3) of step time / SGD's
    targets: Sequence[Target]


def step_panels(steps: pd.DataFrame) -> list[StepPanel]:
    panels = []
    for r in steps.to_dict("records"):
        stamp = Path(r["file"]).stem.rsplit("-", 1)[-1]  # steps-<device>-<stamp>.csv: tells reruns apart
        title = (f"{r['model']} · {r['shape']} · {device_label(r['device_name'])}\n"
                 f"batch {int(r['batch_size'])}, {r['precision']}, {stamp}")
        bars = {m: (r[f"{m}_ratio"], r[f"{m}_q1"], r[f"{m}_q3"]) for m in r["methods"]}
        panels.append(StepPanel(title, bars, [t for t in STEP_TARGETS if t.device in (None, r["device"])]))
    return panels
