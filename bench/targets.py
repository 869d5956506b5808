"""The suite's performance targets, in one place: the report, `safbench overhead` and the CI gate read them here.

Two kinds. *Goals* (`STEP_TARGETS`, ...) are what the paper and the issues promise; the report shows each
measurement against them, met or not. *CI limits* (`CI_LIMITS`, `ci_failures`) are looser regression bounds
for the CPU benchmark in tests/benchmarks: a change that breaks one fails CI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A bound on a method's step time / SGD's on one kind of device (None: any device)."""

    method: str
    device: str | None
    low: float | None = None
    high: float | None = None

    def applies(self, method: str, device: str) -> bool:
        return self.method == method and self.device in (None, device)

    def met(self, ratio: float) -> bool:
        return (self.low is None or ratio >= self.low) and (self.high is None or ratio <= self.high)

    def text(self) -> str:
        where = f" ({self.device})" if self.device else ""
        if self.low is not None and self.high is not None:
            return f"{self.method} in [{self.low:g}, {self.high:g}]{where}"
        return f"{self.method} {'≤' if self.high is not None else '≥'} {self.high or self.low:g}{where}"


# Goals for step time / SGD's (issue 6): SAF free, MESA cheap, ESAM cheaper than SAM.
STEP_TARGETS = (Target("saf", "cuda", high=1.01), Target("saf", "cpu", high=1.05),
                Target("mesa", "cuda", high=1.20), Target("esam", "cuda", high=1.45),
                Target("sam", None, low=1.6, high=2.4))
LOOP_TARGET = 0.95  # the real loop's images/s at least this share of the step alone
NODE_STORE_TARGET_BYTES = 7.7e9  # ImageNet-1k SAF store for a whole node, fp16
DTYPE_ERROR_TARGET = 1e-3  # relative change of the trajectory loss from a 16-bit store

# CI regression limits on the CPU step benchmark's median time ratios (one thread, cnn_small, channels_last).
CI_LIMITS = (Target("saf", "cpu", high=1.10), Target("mesa", "cpu", high=1.6),
             Target("sam", "cpu", low=1.6, high=2.4), Target("gsam", "cpu", low=1.6, high=2.4),
             Target("looksam", "cpu", high=1.6))
GSAM_OVER_SAM_MAX = 1.15  # GSAM's extra work over SAM is a few vector operations


def ci_failures(ratio: Mapping[str, float]) -> list[str]:
    """The CI limits broken by these median time ratios (method -> step time / SGD's); empty when all hold."""
    failures = [f"{t.method.upper()}/SGD = {ratio[t.method]:.3f}, limit {t.text()}"
                for t in CI_LIMITS if t.method in ratio and not t.met(ratio[t.method])]
    sam = ratio.get("sam")
    if sam is not None:
        if ratio.get("esam", 0.0) >= sam:
            failures.append(f"ESAM/SGD = {ratio['esam']:.3f} >= SAM/SGD = {sam:.3f}")
        if ratio.get("gsam", 0.0) > GSAM_OVER_SAM_MAX * sam:
            failures.append(f"GSAM/SGD = {ratio['gsam']:.3f} > {GSAM_OVER_SAM_MAX:g} SAM/SGD")
        if ratio.get("looksam", 0.0) >= sam:
            failures.append(f"LookSAM/SGD = {ratio['looksam']:.3f} >= SAM/SGD = {sam:.3f}")
    return failures
