"""Memory budgets: what the host and the device have free, and the largest store that fits its share."""

from __future__ import annotations

import gc
import os

import torch

# Share of free memory a store may take: the rest stays for models, activations and the other methods.
DEVICE_STORE_SHARE = 0.4
HOST_STORE_SHARE = 0.5


def host_available_bytes() -> int:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def device_free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return host_available_bytes()


def fit_samples(requested: int, *, device_bytes_per_sample: int, host_bytes_per_sample: int,
                device: torch.device) -> int:
    """The largest N <= requested whose stores fit their budgets (device and host shares of free memory)."""
    if device.type != "cuda":  # one memory: both budgets come out of the host's
        device_bytes_per_sample, host_bytes_per_sample = 0, device_bytes_per_sample + host_bytes_per_sample
    limit = requested
    if device_bytes_per_sample:
        limit = min(limit, int(DEVICE_STORE_SHARE * device_free_bytes(device)) // device_bytes_per_sample)
    if host_bytes_per_sample:
        limit = min(limit, int(HOST_STORE_SHARE * host_available_bytes()) // host_bytes_per_sample)
    return max(0, limit)


def release_memory(device: torch.device) -> None:
    """Free what the last benchmark left, so the next one's budget is measured against an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
