"""The allocator setting: it must remove the page faults it is there to remove, and change no result."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.runtime import tune_allocator

# Allocate and free a 64 MiB tensor many times in a fresh interpreter; print the minor page faults.
FAULTS = """
import resource, sys, torch
from common.runtime import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
torch.empty(16 * 1024 * 1024).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 * 1024 * 1024).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def minor_faults(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


@pytest.mark.skipif(not tune_allocator(), reason="the C library is not glibc: nothing to tune")
def test_tuned_allocator_reuses_large_buffers_instead_of_faulting_them_in():
    default, tuned = minor_faults("default"), minor_faults("tuned")
    # Default glibc maps each 64 MiB block afresh: 16,384 faults per allocation of 4 KiB pages.
    assert default > 20 * 10_000
    # Tuned, the block stays in the heap; a few faults remain where the kernel reclaims idle pages.
    assert tuned < default / 2


@pytest.mark.skipif(not tune_allocator(), reason="the C library is not glibc: nothing to tune")
def test_every_entry_point_tunes_once_per_process():
    """The CLI, the ServerApp and the ClientApp each call it; mallopt runs only the first time."""
    tune_allocator.cache_clear()
    assert tune_allocator() is True
    assert tune_allocator() is True
    assert tune_allocator.cache_info().hits == 1 and tune_allocator.cache_info().misses == 1
