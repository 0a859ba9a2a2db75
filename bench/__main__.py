"""`make bench` (python -m bench): run every benchmark listed here, one after the other, printing figures.

Each entry is a module with a `main(argv)`; add yours to BENCHMARKS. Record the figures in BENCHMARKS.md.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("bench.compare_api", "bench.load_submit", "bench.gpu_memory")


def main() -> None:
    only = sys.argv[1:]
    for name in BENCHMARKS:
        if only and name.rsplit(".", 1)[-1] not in only:
            continue
        print(f"== {name}", flush=True)
        importlib.import_module(name).main([])


if __name__ == "__main__":
    main()
