"""``cli.common.keep_freed_memory``: a training step's freed memory stays with the process.

Counted in page faults, not seconds: a second allocation of the same large array must find its
pages already there.  Each case runs in a fresh interpreter, since the setting lasts for a process.
"""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ,
                           reason="glibc's own malloc settings (Linux with glibc, no preloaded allocator)")

# 64 MB arrays: above glibc's largest mmap threshold (32 MB), so by default each one gets a mapping of
# its own, unmapped on free; and a freed top of 64 MB is far above the default trim threshold (128 KB)
FAULTS_OF_SECOND_ALLOCATION = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from minisdit.cli.common import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        array = np.ones(8 * 1024 * 1024)  # touches every page
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del array
    print(faults)
""")


def faults_of_second_allocation(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", FAULTS_OF_SECOND_ALLOCATION, mode],
                            capture_output=True, text=True, check=True)
    return int(result.stdout)


@glibc
def test_a_freed_large_array_is_reused_without_page_faults():
    # 16,384 pages of 4 KB (or 32 huge pages) would be faulted in again if it had been given back
    assert faults_of_second_allocation("keep") < 16


@glibc
def test_without_the_setting_the_same_allocation_faults_again():
    """The measurement above can see the difference: glibc's defaults give the array back on free."""
    assert faults_of_second_allocation("default") > 16  # the setting's case above stays below 16
