"""Fuzz reliability suite (issue 7), full size: `python tests/reliability/fuzz.py [--seed N]`.

Hypothesis generates at least 1,000 malformed plan documents and a few hundred bad
configurations (tests/reliability/_fuzzkit.py says what and how). Every case must exit with code 2
and a message naming its source: no traceback, no hang, nothing executed or written. Prints the
seed, the number of cases per kind, the failures (must be 0) and the time; exits 1 on a failure.
A failure is reproduced with the seed it printed: `fuzz.py --seed N`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: clitools, reliability

from reliability._fuzzkit import new_seed, run_suite

MIN_PLAN_CASES = 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: a new one)")
    parser.add_argument("--plans", type=int, default=1200, help="malformed plan documents")
    parser.add_argument("--configs", type=int, default=400, help="bad configurations")
    parser.add_argument("--children", type=int, default=40, help="cases also run as processes")
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds a case may take")
    parser.add_argument("--no-extremes", action="store_true", help="skip the large plan files")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else new_seed()
    print(f"fuzz: seed {seed}", flush=True)
    report = run_suite(
        plans=args.plans,
        configs=args.configs,
        children=args.children,
        seed=seed,
        extremes=not args.no_extremes,
        deadline=args.deadline,
        progress=lambda line: print(f"  {line}", flush=True),
    )
    for line in report.lines():
        print(line)
    if report.count("plan/") < min(MIN_PLAN_CASES, args.plans):
        print(f"too few plan documents: {report.count('plan/')}, expected {MIN_PLAN_CASES}")
        return 1
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
