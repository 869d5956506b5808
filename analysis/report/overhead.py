"""The cost per step as `safbench overhead` measured it: its CSVs (results/overhead/) read and judged, as numbers.

Three kinds of file, one per measurement: `steps-*` (every method's step time on one model, as a ratio
to SGD's within each round), `loop-*` (the real training loop against the step alone) and `store-*`
(the SAF store's size, per-step exchange cost and storage-dtype error). Each becomes a numbers frame
beside the targets it is judged by (bench.targets: the suite's goals, not results) and, for the step
ratios, beside the paper's own throughput shares from the reference CSV. Their strings and files are
analysis.report.overhead_tables's.
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

from .aggregate import BASE_METHOD, method_order
from .load import PAPER_SOURCE

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
BASE = BASE_METHOD
OFFICIAL_SAF = "saf_official"  # the official SAF store design, measured beside ours (bench.measure.official_saf)


def overhead_order() -> tuple[str, ...]:
    """The report's method order with the official SAF store design right after ours."""
    return tuple(x for m in method_order() for x in ((m, OFFICIAL_SAF) if m == OFFICIAL_SAF.removesuffix("_official")
                                                     else (m,)))


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


def method_rank(method: str) -> int:
    order = overhead_order()
    return order.index(method) if method in order else len(order)


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
        for _, m in sorted(g.iterrows(), key=lambda r: method_rank(r[1]["method"])):
            name = m["method"]
            row[f"{name}_ratio"] = m["time_ratio_median"]
            row[f"{name}_q1"], row[f"{name}_q3"] = m["time_ratio_q1"], m["time_ratio_q3"]
            row[f"{name}_share"] = m["throughput_ratio_median"]
            missed += [f"{name} {m['time_ratio_median']:.2f}×, target {t.text()}" for t in STEP_TARGETS
                       if t.applies(name, row["device"]) and not t.met(m["time_ratio_median"])]
        row["methods"] = sorted(g["method"], key=method_rank)
        row["missed"] = "; ".join(missed)
        out.append(row)
    return _ordered(pd.DataFrame(out))


def methods_in(table: pd.DataFrame) -> list[str]:
    return sorted({m for ms in table["methods"] for m in ms}, key=method_rank)


def share_table(table: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Per method: the paper's share of SGD's images/s (range over its tables) against ours per device."""
    paper = reference[reference["source"].astype(str).str.startswith(PAPER_SOURCE)]
    rows = []
    for m in [m for m in methods_in(table) if m != BASE]:
        spans = {"paper": pd.to_numeric(paper.loc[paper["method"] == m, "throughput_vs_base"], errors="coerce")}
        spans |= {device: table.loc[table["device"] == device, f"{m}_share"] for device in ("cuda", "cpu")}
        row: dict[str, object] = {"method": m}
        for who, values in spans.items():
            values = values.dropna()
            row[f"{who}_min"], row[f"{who}_max"] = (values.min(), values.max()) if len(values) else (math.nan,) * 2
            row[f"{who}_n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


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


# ---- the loop and the store ------------------------------------------------------------------------
def loop_table(loop: pd.DataFrame) -> pd.DataFrame:
    return _ordered(loop.assign(met=loop["loop_ratio_median"] >= LOOP_TARGET))


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


# ---- provenance and the figure's panels ------------------------------------------------------------
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
