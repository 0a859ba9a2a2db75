"""`make bench` (python -m bench): every benchmark listed here, one after the other, then a summary of every
target: the measured figure, the target, their ratio and pass/miss (also written to BENCHMARKS.md).

Each entry is a module with `main(argv) -> list[bench.report.Figure] | None` and the argv `make bench` gives it
(`--write`: it replaces its own section of BENCHMARKS.md). Add yours to BENCHMARKS.

    python -m bench                  # everything in BENCHMARKS (under 15 minutes on the 2-core machine)
    python -m bench ingest launch    # some of them, by module name (also: compare_api, load_submit)
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback

from bench.report import Figure, machine, summary_table, write_section

#: (module, argv), in the order they run.
BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("bench.train_vs_recipe", ["--write"]),  # issue 8 §1: training throughput vs the course's recipe (~6 min)
    ("bench.ingest", ["--write"]),  # issue 8 §2: metric ingestion, SQLite and PostgreSQL (~1 min)
    ("bench.dashboard", ["--write"]),  # §3: runs list, comparison, live page at 10,000 runs (~1.5 min)
    ("bench.launch", ["--write"]),  # §4: launch latency, Redis and the embedded broker (~3 min)
    ("bench.gpu_memory", ["--write", "BENCHMARKS.md"]),  # memory estimate vs measured: needs a GPU, else skipped
)
#: Run only when named (they take long, or their figures are covered above).
EXTRA: tuple[tuple[str, list[str]], ...] = (
    ("bench.compare_api", []),  # the comparison alone (bench.dashboard measures it at 10,000 runs)
    ("bench.load_submit", []),  # 200 submissions at once (8-10 minutes)
    ("bench.gpu_train", []),  # make bench-gpu: one GPU, real shapes, about 5 minutes (exit 2 without a GPU)
)


def main() -> int:
    only = sys.argv[1:]
    chosen = [(m, a) for m, a in (*BENCHMARKS, *EXTRA) if m.rsplit(".", 1)[-1] in only] if only else BENCHMARKS
    if only and len(chosen) != len(only):
        known = ", ".join(m.rsplit(".", 1)[-1] for m, _ in (*BENCHMARKS, *EXTRA))
        print(f"unknown benchmark in {only}; choose from {known}", file=sys.stderr)
        return 2
    figures: list[Figure] = []
    timings: list[tuple[str, float, str]] = []
    started = time.perf_counter()
    for name, argv in chosen:
        print(f"== {name} {' '.join(argv)}", flush=True)
        began = time.perf_counter()
        outcome = "ok"
        try:
            result = importlib.import_module(name).main(list(argv))
        except Exception:
            traceback.print_exc()
            outcome = "FAILED"
            figures.append(Figure(f"{name}: failed (see its output)", None, None, ""))
        else:
            if isinstance(result, list):
                figures.extend(result)
            elif result:  # an exit status: the module could not measure here (e.g. no GPU)
                outcome = f"skipped (exit {result})"
                figures.append(Figure(f"{name}: could not measure on this machine", None, None, "", note=outcome))
        timings.append((name, time.perf_counter() - began, outcome))
        print(f"== {name}: {outcome} in {time.perf_counter() - began:.0f} s", flush=True)
    total = time.perf_counter() - started

    table = summary_table(figures)
    durations = ", ".join(
        f"{name.rsplit('.', 1)[-1]} {seconds:.0f} s ({outcome})" for name, seconds, outcome in timings
    )
    print("\n== summary: measured figures against the targets")
    print(table)
    print(f"\n{durations}; {total / 60:.1f} minutes in all. {machine()}")
    if not only:
        write_section(
            "summary",
            "## Summary of the last `make bench`\n\n"
            f"{machine()}. {total / 60:.1f} minutes in all: {durations}.\n\n"
            "The ratio is measured / target: at most 1 passes a latency target, at least 1 a throughput target.\n\n"
            + table,
        )
    return 1 if any(outcome == "FAILED" for _, _, outcome in timings) else 0


if __name__ == "__main__":
    sys.exit(main())
