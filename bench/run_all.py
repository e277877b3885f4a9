"""`make bench`: run every bench/bench_*.py, each in its own process, and print the tables they write.

Each benchmark writes one Markdown table (with the machine it ran on) to bench/results/<name>.md and measures its
baselines in the same run, so ratios never compare numbers from different machines or days.
Usage: python bench/run_all.py [--only NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=None, help="benchmark names (file stem without bench_)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (passed to each benchmark)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    if not scripts:
        print("no benchmarks selected", file=sys.stderr)
        return 1
    failed = []
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(90 + os.getpid() % 10))
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"\n=== bench {name} ===", flush=True)
        t0 = time.monotonic()
        cmd = [sys.executable, str(script), "--out", str(RESULTS / f"{name}.md")] + (["--quick"] if args.quick else [])
        rc = subprocess.call(cmd, env=env, cwd=HERE.parent)
        print(f"--- {name}: exit {rc} after {time.monotonic() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
            continue
        print((RESULTS / f"{name}.md").read_text())
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
