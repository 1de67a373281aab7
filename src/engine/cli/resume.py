"""`resume RUN_ID`: run again what did not complete in a recorded run, as a new linked run."""

from __future__ import annotations

import argparse

from engine.cli.run import console_for, drive, finish, lock_wait_notice, open_engine


async def resume(args: argparse.Namespace) -> int:
    console = console_for(args)
    async with open_engine(args) as eng:
        prepared = await eng.prepare_resume(
            args.run_id,
            max_parallel=args.max_parallel,
            failure_mode=args.failure_mode,
            lock_wait=args.lock_wait,
        )
        eng.locks.on_wait = lock_wait_notice(args, console)
        assert prepared.resume is not None
        kept, total = len(prepared.resume.kept), len(prepared.tracker.subplans)
        header = [f"note: {note}" for note in prepared.resume.notes]
        header.append(
            f"run {prepared.run_id}: plan {prepared.plan.name} (resuming run "
            f"{prepared.resume.previous.id}: {kept} of {total} subplans completed there, kept)"
        )
        received = await drive(args, eng, prepared, console, header)
    return finish(prepared, received, console)
