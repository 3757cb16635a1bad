"""The `jtl` command's entry point: glibc's malloc on huge pages, then jtl.cli.

XLA:CPU allocates each step's activations afresh, and glibc hands big buffers (over its mmap
threshold, at most 32 MiB) and its arenas' free tops straight back to the kernel, so each
step faults its memory in again, 4 KiB at a time. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
malloc asks for transparent huge pages (where /sys/kernel/mm/transparent_hugepage/enabled is
`madvise` or `always`). Measured on a 2-core AMD EPYC Zen 5 (experiments/bench.py's shapes,
medians of 3 fresh processes): kernel time per train step 92 -> 22 ms (small shape) and
528 -> 140 ms (ResNet-18, 224 px); the step 158 -> 113 ms and 1677 -> 1492 ms. glibc reads the setting only when a process starts, so `jtl` starts itself again
with it; launch.sh exports it for everything it runs. A `glibc.malloc.hugetlb` already in
GLIBC_TUNABLES (0 turns it off) is left as it is.
"""

import os
import platform
import sys

SETTING = "glibc.malloc.hugetlb=1"


def with_huge_pages(environ=None) -> dict | None:
  """The environment (default: this process's) to start again with, or None when this
  process has what it needs (or is not on glibc)."""
  environ = os.environ if environ is None else environ
  if platform.libc_ver()[0] != "glibc" or "glibc.malloc.hugetlb" in environ.get(
      "GLIBC_TUNABLES", ""):
    return None
  tunables = environ.get("GLIBC_TUNABLES")
  return {**environ, "GLIBC_TUNABLES": f"{tunables}:{SETTING}" if tunables else SETTING}


def main() -> int:
  if (env := with_huge_pages()) is not None:
    try:
      os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:   # Not fatal: the same run, with more page faults.
      pass
  from jtl import cli
  return cli.main()


if __name__ == "__main__":
  sys.exit(main())
