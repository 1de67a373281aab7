"""`make flake-check`: the whole test suite N times in a row; every test that failed even once.

Each run is `pytest -n auto` with a fresh random order (pytest-randomly picks a new seed per
run, printed here so that a failure can be replayed with `pytest --randomly-seed=S`).
A flaky test is fixed at its cause (a race in the code, or a test waiting on time), never
retried. Exit status 1 if any test failed in any run.

    python tests/reliability/_flake_check.py [--runs 20] [-- extra pytest arguments]
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def failures(report: Path) -> list[str]:
    """Test ids that failed or errored in one junit report."""
    failed: list[str] = []
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname')}::{case.get('name')}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    failed: Counter[str] = Counter()
    seeds: dict[str, list[int]] = {}
    durations: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(1, args.runs + 1):
            seed = random.randrange(1, 2**31)
            report = Path(tmp) / f"run-{run}.xml"
            command = [sys.executable, "-m", "pytest", "-n", "auto", "-q", "-p", "no:cacheprovider"]
            command += [f"--randomly-seed={seed}", f"--junitxml={report}", *args.pytest_args]
            started = time.monotonic()
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
            durations.append(time.monotonic() - started)
            this_run = failures(report) if report.exists() else ["<no report: pytest crashed>"]
            if done.returncode not in (0, 1) and not this_run:
                this_run = [f"<pytest exited {done.returncode}>"]
            for test in this_run:
                failed[test] += 1
                seeds.setdefault(test, []).append(seed)
            status = "ok" if not this_run else f"{len(this_run)} failed"
            print(f"run {run:2}/{args.runs}: seed {seed:>10}  {durations[-1]:6.1f}s  {status}")
            sys.stdout.flush()
    print(
        f"\n{args.runs} runs, {min(durations):.0f}-{max(durations):.0f}s each; "
        f"tests that failed at least once: {len(failed)}"
    )
    for test, count in failed.most_common():
        print(f"  {count:2}x  {test}  (seeds {', '.join(map(str, seeds[test]))})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
