"""results/overhead/GATE.md from the stored comparisons of scripts/gate_campaign.py (no timing here).

    .venv/bin/python scripts/gate_evidence.py

Reads results/overhead/gate/<condition>-<rep>.csv (one row per method: the verdict the command printed, its
exit status and times) and rounds/<condition>-<rep>.csv (every round pair's step times), re-applies the
rule (bench.measure.verdict.paired) to the rounds at several minimum changes, and writes summary.csv,
rules.csv and GATE.md beside them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import io  # noqa: E402
from bench.measure import verdict  # noqa: E402

GATE = ROOT / "results" / "overhead" / "gate"
MIN_CHANGES = (0.0, 0.02, 0.03, 0.05, 0.08)


def comparisons() -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in sorted(GATE.glob("*-*.csv")) if not p.name.startswith("load")]
    return pd.concat(frames, ignore_index=True)


def flagged(changes: pd.DataFrame, kind: str) -> bool:
    """What the comparison was run to find: SAF slower (saf kind, identical), or any method slower (all)."""
    slower = set(changes.loc[changes["verdict"] == "slower", "method"])
    return ("saf" in slower) if kind == "saf" else bool(slower)


def rule_table(found: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (cond, rep), _ in found.groupby(["condition", "rep"], sort=False):
        rounds = pd.read_csv(GATE / "rounds" / f"{cond}-{rep:02d}.csv")
        times = {side: {m: g.sort_values("pair")["step_s"].tolist()
                        for m, g in rounds[rounds["side"] == side].groupby("method")} for side in ("base", "head")}
        for min_change in MIN_CHANGES:
            changes = pd.DataFrame([c.__dict__ for c in verdict.paired(times["base"], times["head"],
                                                                       min_change=min_change)])
            kind = cond.split("-")[0]  # saf, all, identical, samepath
            rows.append({"condition": cond, "rep": rep, "min_change": min_change,
                         "alarm": bool((changes["verdict"] == "slower").any()),
                         "faster": bool((changes["verdict"] == "faster").any()),
                         "sgd_slower": bool(((changes["method"] == "sgd") & (changes["verdict"] == "slower")).any()),
                         "saf_by_ratio": bool(((changes["method"] == "saf")
                                               & (changes["p_sgd_ratio_slower"] < verdict.ALPHA)
                                               & (changes["sgd_ratio_change"] >= 1 + min_change)).any()),
                         "detected": flagged(changes, "all" if kind == "all" else "saf")})
    return pd.DataFrame(rows)


def rate(k: int, n: int) -> str:
    if n == 0:
        return "—"
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return f"{k}/{n} ({100 * k / n:.0f}%, 95% CI {100 * ci.low:.0f}–{100 * ci.high:.0f}%)"


def size_key(cond: str) -> tuple[str, int]:
    kind, size = cond.split("-")[:2]
    return kind, int(size)


def smallest(now: pd.DataFrame, suffix: str, label: str, by_ratio: bool = False) -> list[str]:
    """The smallest nominal size caught at least 4 times in 5 (at least 5 comparisons), per kind; BY_RATIO:
    SAF alone, counted by its ratio to SGD only."""
    lines = []
    if by_ratio:
        now = now.assign(detected=now["saf_by_ratio"])
    for kind, who in ((("saf", "SAF alone, by its ratio to SGD alone"),) if by_ratio else
                      (("saf", "SAF alone"), ("all", "every method"))):
        caught = []
        conds = {c for c in now["condition"] if c.startswith(kind + "-")
                 and (c.endswith("-B") if suffix else not c.endswith("-B"))}
        for cond in sorted(conds, key=size_key):
            hits = now[now["condition"] == cond]["detected"]
            if len(hits) >= 5 and hits.mean() >= 0.8:
                caught.append(f"{size_key(cond)[1]}% nominal ({int(hits.sum())}/{len(hits)})")
        lines.append(f"- Smallest slowdown caught at least 4 times in 5, {who}, {label}: "
                     + (caught[0] if caught else "none with 5 or more comparisons caught 4 in 5") + ".")
    return lines


def power_load() -> list[str]:
    """Campaign B's power comparisons: load-B.csv (sampled while they ran) and each one's load at start/end."""
    path = GATE / "load-B.csv"
    if not path.exists():
        return []
    load = pd.read_csv(path)
    runs = comparisons()
    runs = runs[runs["condition"].str.endswith("-B")].drop_duplicates(["condition", "rep"])
    return [
        f"Campaign B's power comparisons ({load['utc'].iloc[0][11:16]}–{load['utc'].iloc[-1][11:16]} UTC, "
        "`gate/load-B.csv`, every 30 s): 1-minute load average median "
        f"{load['load1'].median():.1f} (range {load['load1'].min():.1f}–{load['load1'].max():.1f}); "
        f"at each comparison's start median {runs['load1_start'].median():.1f} "
        f"(range {runs['load1_start'].min():.1f}–{runs['load1_start'].max():.1f}), "
        "columns `load1_start`, `load1_end` of its CSV.",
    ]


def main() -> None:
    found = comparisons()
    per = found.groupby(["condition", "rep"], sort=False)
    summary = per.apply(lambda g: pd.Series({
        "exit_status": int(g["exit_status"].iloc[0]), "pairs": int(g["pairs"].iloc[0]),
        "setup_s": g["setup_s"].iloc[0], "rounds_s": g["rounds_s"].iloc[0], "wall_s": g["wall_s"].iloc[0],
        "saf_head_over_base": float(g.loc[g["method"] == "saf", "ratio"].iloc[0]),
        "sgd_head_over_base": float(g.loc[g["method"] == "sgd", "ratio"].iloc[0]),
        "saf_sgd_ratio_change": float(g.loc[g["method"] == "saf", "sgd_ratio_change"].iloc[0]),
        "slower": " ".join(g.loc[g["verdict"] == "slower", "method"]),
        "faster": " ".join(g.loc[g["verdict"] == "faster", "method"]),
        "measured_at": g["measured_at"].iloc[0], "device_name": g["device_name"].iloc[0],
        "head_commit": g["head_commit"].iloc[0], "base_commit": g["base_commit"].iloc[0],
        "command": g["command"].iloc[0],
        "load1_start": g["load1_start"].iloc[0] if "load1_start" in g else float("nan")}),
        include_groups=False).reset_index()
    io.write_csv(GATE / "summary.csv", summary)
    rules = rule_table(found)
    io.write_csv(GATE / "rules.csv", rules)
    io.write_text(ROOT / "results" / "overhead" / "GATE.md", gate_md(found, summary, rules))


def gate_md(found: pd.DataFrame, summary: pd.DataFrame, rules: pd.DataFrame) -> str:
    load = pd.read_csv(GATE / "load.csv")
    now = rules[rules["min_change"] == verdict.MIN_CHANGE]
    first = found.iloc[0]
    before = summary[summary["condition"] == "identical"]
    after = summary[summary["condition"] == "samepath"]
    control = summary[summary["condition"] == "control-B"]

    def alarms(cond: str) -> tuple[int, int]:
        g = now[now["condition"] == cond]
        return int(g["alarm"].sum()), len(g)

    def faster(cond: str) -> int:
        g = now[now["condition"] == cond]
        return int(g["faster"].sum())

    lines = [
        "# The overhead gate's false-alarm rate and power, measured",
        "",
        "Made by `.venv/bin/python scripts/gate_campaign.py calibrate`, `... run` (campaign A), `... samepath 20`",
        "and `... power HH:MM` (campaign B), then `.venv/bin/python scripts/gate_evidence.py` (this file,",
        "`gate/summary.csv`, `gate/rules.csv`). Every number below is read from `results/overhead/gate/`:",
        "one CSV per comparison (`<condition>-<rep>.csv`, the rows `safbench overhead --against --out` wrote,",
        "with command, commit, versions and hardware) and its round pairs (`rounds/`). The verdicts are today's rule",
        f"(`bench/measure/verdict.py`: signed-rank p < {verdict.ALPHA:g} and a change of at least "
        f"{100 * verdict.MIN_CHANGE:g}%, in step time or in the ratio to SGD) applied to the stored rounds.",
        "",
        f"Each comparison: `{first['command'].split(' --against ')[0]} --against REF`: cnn_small, batch 32,",
        f"SGD and SAF, 30 s of rounds; `{first['device_name']}`, torch {first['torch_version']}; one thread per",
        "worker, both pinned to one core, CPU time per step, rounds alternating ABBA.",
        "",
        "Load: the ordinary load of this project's development work (two background training processes, other",
        "helpers' tests, grids and Hessian jobs; `gate/load-processes.txt` is one snapshot). `gate/load.csv`",
        "samples /proc/loadavg every 30 s from 14:20 UTC on: 1-minute load average median "
        f"{load['load1'].median():.1f} (range {load['load1'].min():.1f}–{load['load1'].max():.1f}) on 2 cores.",
        *power_load(),
        "",
        "## False alarms (identical code: REF = HEAD, or the control: REF = BASE at BASE)",
        "",
        "| campaign | code | flagged slower | called faster | SGD head/base, median (range) | "
        "SAF x SGD change, median (range) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for cond, label, g in (("identical", "A: base in a temporary worktree, head in a working tree, paths of "
                            "different lengths", before),
                           ("samepath", "B: both behind links of one length (today's code)", after),
                           ("control-B", "B, control for the power runs: the power campaign's scratch worktree "
                            "at BASE against BASE", control)):
        if len(g):
            k, n = alarms(cond)
            lines.append(f"| {label} | `{g['head_commit'].iloc[0][:12]}` | {rate(k, n)} | {faster(cond)}/{n} | "
                         f"{g['sgd_head_over_base'].median():.3f} ({g['sgd_head_over_base'].min():.3f}–"
                         f"{g['sgd_head_over_base'].max():.3f}) | {g['saf_sgd_ratio_change'].median():.3f} "
                         f"({g['saf_sgd_ratio_change'].min():.3f}–{g['saf_sgd_ratio_change'].max():.3f}) |")
    lines += [
        "",
        "What campaign A found (`gate/summary.csv`, by `measured_at`): the two processes of identical code were",
        "a few percent apart at first, then from 14:21 UTC the base worker ran 15–20% slower than the head for",
        "every comparison, while the ratio to SGD stayed near 1. The workers start with address randomisation",
        "off, so every address follows from what the kernel copies onto the new stack; the base's root was",
        "`/tmp/safbench-base-<pid>-<random>`, and the pids had just wrapped from five digits to four. Campaign B",
        "runs today's code, where both roots are links of one length: its identical comparisons are the",
        "false-alarm rate of the gate as shipped. Its SGD head/base column is what remains of the offset between",
        "two processes of identical code: a slowdown common to every method has to exceed it to be told apart.",
        "",
        "## Power (injected slowdowns in scratch commits)",
        "",
        "Injected: a product of the flattened batch with a fixed [3072, 256] matrix, repeated n times, in SAF's step",
        "(`saf-*`) or in the step every method shares (`all-*`: SGD and SAF), n from `gate/calibration.csv`",
        "(nominal sizes 3, 5, 10% of SAF's step; in the step the product costs more than alone, see the realised",
        "ratio to SGD). Scratch commits: `gate/commits.json` (campaign A, branches `gate-scratch-*`) and",
        "`gate/commits-B.json` (campaign B, branches `power-scratch-*`: the same products on the shipped code),",
        "never merged. Detected: SAF called slower (`saf-*`), any method called slower (`all-*`).",
        "",
    ]
    injected = summary[~summary["condition"].isin(("identical", "samepath", "control-B"))]
    shipped = injected[injected["condition"].str.endswith("-B")]
    if len(shipped):
        lines += [
            "### Campaign B: the shipped design (both roots behind links of one length)",
            "",
            f"Base: `{shipped['base_commit'].iloc[0][:12]}` (this branch's code); each comparison runs "
            "`safbench overhead ... --against BASE` in a scratch worktree at the scratch commit. "
            "Conditions `<kind>-<size>-B`.",
            "",
            "| condition | comparisons | detected | SAF x SGD change, median (range) | SAF head/base, median | "
            "SGD head/base, median (range) | SAF slower by its ratio to SGD alone | SGD called slower | "
            "wall s, median |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for cond, g in sorted(shipped.groupby("condition", sort=False), key=lambda cg: size_key(cg[0])):
            hits = now[now["condition"] == cond]["detected"]
            lines.append(f"| {cond.removesuffix('-B')}% nominal | {len(g)} | {rate(int(hits.sum()), len(hits))} | "
                         f"{g['saf_sgd_ratio_change'].median():.3f} ({g['saf_sgd_ratio_change'].min():.3f}–"
                         f"{g['saf_sgd_ratio_change'].max():.3f}) | {g['saf_head_over_base'].median():.3f} | "
                         f"{g['sgd_head_over_base'].median():.3f} ({g['sgd_head_over_base'].min():.3f}–"
                         f"{g['sgd_head_over_base'].max():.3f}) | "
                         f"{int(now[now['condition'] == cond]['saf_by_ratio'].sum())}/{len(hits)} | "
                         f"{int(now[now['condition'] == cond]['sgd_slower'].sum())}/{len(hits)} | "
                         f"{g['wall_s'].median():.0f} |")
        lines += [
            "",
            "SAF slower by its ratio to SGD alone: the half of the rule that any offset between two processes",
            "cancels (signed-rank p < alpha and SAF x SGD change at least the minimum change). SGD called slower:",
            "in `saf-*` SGD's code is unchanged, yet its step ran 9-13% slower in the head worker in every one;",
            "the control (identical code run the same way, `control-B`, table above) shows no such offset, so it",
            "comes with the injected code: SGD's step is timed in the same worker right after SAF's, and SAF's",
            "extra products (a 3 MB matrix) plausibly leave it a colder cache (not isolated). The nominal sizes",
            "are therefore not what the worker sees: in `saf-*` SAF's step time grew 15-20% at every size, and the",
            "realised change is the SAF x SGD column. In `all-*` SGD is slowed by design.",
            "",
        ]
        lines += smallest(now, "-B", "the shipped design, the full rule")
        lines += smallest(now, "-B", "the shipped design (the half of the rule no process offset reaches)",
                          by_ratio=True)
        lines += [""]
    lines += [
        "### Campaign A: the earlier design (paths of different lengths)",
        "",
        "| condition | detected | SAF x SGD change (median) | SAF head/base | SGD head/base |",
        "| --- | --- | --- | --- | --- |",
    ]
    for cond, g in injected[~injected["condition"].str.endswith("-B")].groupby("condition", sort=False):
        hits = now[now["condition"] == cond]["detected"]
        lines.append(f"| {cond}% nominal | {rate(int(hits.sum()), len(hits))} | "
                     f"{g['saf_sgd_ratio_change'].median():.3f} "
                     f"| {g['saf_head_over_base'].median():.3f} | {g['sgd_head_over_base'].median():.3f} |")
    lines += ["",
              "SAF alone is seen through its ratio to SGD, which the processes' offset cancels. A slowdown common to",
              "every method is seen only in absolute step time, which campaign A's offset (up to 20%) swamped: its",
              "`all-*` detections and misses say little; campaign B's are the shipped design's.",
              ""]
    lines += smallest(now, "", "campaign A")
    conds = sorted(set(rules["condition"]))
    lines += ["", "## The rule at other minimum changes (re-applied to the stored rounds)", "",
              "Identical conditions: share flagged slower; injected: share detected.", "",
              "| min change | " + " | ".join(conds) + " |", "| --- |" + " --- |" * len(conds)]
    for mc, g in rules.groupby("min_change"):
        cells = []
        for cond in conds:
            h = g[g["condition"] == cond]
            col = "alarm" if cond in ("identical", "samepath", "control-B") else "detected"
            cells.append(f"{int(h[col].sum())}/{len(h)}")
        lines.append(f"| {mc:g} | " + " | ".join(cells) + " |")
    k, n = alarms("samepath")
    enforce = n >= 20 and k / n <= 1 / 20
    lines += ["", "## This repository's CI", "",
              f"`.ci/run` enforces the gate only when at least 20 identical comparisons of the shipped design flagged "
              f"at most 1 in 20. Campaign B has {k} of {n}, so it runs "
              + ("**enforcing**." if enforce else
                 "**report-only** (it prints the exit status, the CI does not fail on it)."),
              "", "## Time per comparison", "",
              f"Wall time (driver start to exit): median {summary['wall_s'].median():.0f} s (range "
              f"{summary['wall_s'].min():.0f}–{summary['wall_s'].max():.0f} s); of it the two workers' start and "
              "warm-up, "
              f"median {summary['setup_s'].median():.0f} s, and the timed rounds {summary['rounds_s'].median():.0f} s "
              f"({summary['pairs'].median():.0f} round pairs, median); the rest is the driver's own start (imports "
              "under load) and the worktree."]
    power_b = summary[summary["condition"].str.endswith("-B") & (summary["condition"] != "control-B")]
    if len(power_b):
        lines += ["", f"Campaign B's power comparisons alone ({len(power_b)}): median "
                  f"{power_b['wall_s'].median():.0f} s "
                  f"(range {power_b['wall_s'].min():.0f}–{power_b['wall_s'].max():.0f} s), of it warm-up "
                  f"{power_b['setup_s'].median():.0f} s and rounds {power_b['rounds_s'].median():.0f} s "
                  f"({power_b['pairs'].median():.0f} round pairs, median)."]
    lines += [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
