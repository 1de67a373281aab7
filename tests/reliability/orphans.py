"""Orphans (issue 7): 100 randomized runs of plans with nested groups of long-running `run` steps,
each ended by fail-fast, a subplan timeout, a plan timeout, SIGINT, SIGTERM or `jobs cancel`;
after each, no process of the run's process groups may be alive.

    .venv/bin/python tests/reliability/orphans.py [--runs N] [--seed S] [--ending E]
                                                  [--parallel P] [--keep]

Prints the runs by ending, the orphans found (must be 0) and the time; exits 1 if any orphan
survived, a run hung or exited with the wrong code. A failed run prints its ending and seed:
`--seed SEED --ending ENDING --runs 1` generates the same plan again (timing may differ). First,
a control run checks that the search finds processes that left their group. The scenarios are in
`_orphankit.py`; `tests/test_reliability_orphans.py` runs one of each ending in `make test`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, run as a script

from reliability._orphankit import ENDINGS, Outcome, control, run_case, run_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", default=None, help="the first run's seed (default: random)")
    parser.add_argument("--ending", choices=ENDINGS, help="only this ending (default: all)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders")
    args = parser.parse_args()
    base = args.seed if args.seed is not None else f"{random.randrange(10**6):06d}"
    # Endings in turn (so 100 runs cover each about equally), shuffled by the seed.
    chosen = (args.ending,) if args.ending else ENDINGS
    endings = [chosen[i % len(chosen)] for i in range(args.runs)]
    random.Random(base).shuffle(endings)
    cases = [(ending, base if i == 0 else f"{base}-{i}") for i, ending in enumerate(endings)]

    root = Path(tempfile.mkdtemp(prefix="engine-orphans-"))
    began = time.monotonic()
    outcomes: list[Outcome] = []
    try:
        # The search must see what a group kill cannot reach, or a count of 0 means nothing.
        checked = run_scenario(control(root / "control"), "control", death_deadline=0.5)
        print(f"control: a step that left its process group: {len(checked.orphans)} of 2 found")
        if len(checked.orphans) != 2 or checked.problems:
            print(checked.report())
            return 1
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            futures = [
                pool.submit(run_case, root / f"run{i:03d}", ending, seed)
                for i, (ending, seed) in enumerate(cases)
            ]
            for future in futures:
                outcome = future.result()
                outcomes.append(outcome)
                if not outcome.ok:
                    print(outcome.report(), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.monotonic() - began

    by_ending = Counter(o.ending for o in outcomes)
    orphans = sum(len(o.orphans) for o in outcomes)
    problems = sum(len(o.problems) for o in outcomes)
    print(f"orphans: {len(outcomes)} runs (seed {base}), {elapsed:.1f}s")
    for ending in ENDINGS:
        mine = [o for o in outcomes if o.ending == ending]
        codes = Counter(o.exit_code for o in mine)
        early = sum(o.early for o in mine)
        first = sum(o.moment == "first" for o in mine)
        spawning = sum(o.moment == "spawning" for o in mine)
        twice = sum(o.second_signal for o in mine)
        print(
            f"  {ending:<16} {by_ending[ending]:>3} runs, "
            f"{sum(o.steps for o in mine):>3} steps, {sum(o.processes for o in mine):>4} pids, "
            f"exit {dict(sorted(codes.items(), key=str))}"
            + (f", {first} ended once one step started" if first else "")
            + (f", {spawning} while steps were starting" if spawning else "")
            + (f", {twice} signalled twice" if twice else "")
            + (f", {early} timed out before every step started" if early else "")
            + f", orphans {sum(len(o.orphans) for o in mine)}"
        )
    print(f"orphans found: {orphans}")
    print(f"other problems (hangs, exit codes): {problems}")
    return 1 if orphans or problems else 0


if __name__ == "__main__":
    sys.exit(main())
