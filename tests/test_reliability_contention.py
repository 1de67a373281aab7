"""The contention suite (tests/reliability/contention.py) for 3 seconds: runs, locks and jobs
from four processes on one SQLite file; no error reaches a user and every write is stored."""

from __future__ import annotations

from pathlib import Path

from reliability.contention import run_contention


def test_four_processes_on_one_sqlite_file_lose_nothing_and_report_no_error(
    tmp_path: Path,
) -> None:
    report = run_contention(tmp_path, seconds=3.0, seed=3)
    assert report.ok, str(report)
    assert (report.figures["errors"], report.figures["missing writes"]) == (0, 0)
    for figure in ("runs", "of them `engine run` processes", "jobs", "lock steps"):
        assert report.figures[figure] > 0, str(report)  # every process got work done
