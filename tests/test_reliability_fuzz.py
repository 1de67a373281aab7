"""The fuzz reliability suite (issue 7) in small: the code of tests/reliability/fuzz.py with a
fixed seed, and the command-line cases it found that were not handled."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability._fuzzcase import MARKER, VALID_PLAN, Case
from reliability._fuzzkit import problems_of, run_in_process, run_suite


def test_bad_plans_and_configuration_exit_2_with_a_message_and_run_nothing() -> None:
    report = run_suite(plans=48, configs=27, children=2, seed=7, deadline=20)

    assert report.count("plan/") == 48
    assert report.count("config/") >= 20
    assert report.children == 2
    assert not report.failures, "\n".join(report.lines())


def _plan(text: str) -> tuple[tuple[str, bytes], ...]:
    return (("plan.yaml", text.encode()),)


FOUND = {
    # Crashed mid-run (a traceback, exit 1) once the run had started and been recorded.
    "NUL in a command": Case(
        "found", ("run", "plan.yaml"), _plan('name: p\nsubplans: [{name: a, run: "touch \\0"}]\n')
    ),
    "= in a variable name": Case(
        "found",
        ("run", "plan.yaml"),
        _plan(f'name: p\nsubplans: [{{name: a, run: touch {MARKER}, env: {{"A=B": x}}}}]\n'),
    ),
    "data_dir is a file": Case(
        "found",
        ("run", "plan.yaml"),
        (("plan.yaml", VALID_PLAN), ("afile", b"")),
        env=(("ENGINE_DATA_DIR", "afile"),),
        expect=("ENGINE_DATA_DIR",),
    ),
    # Tracebacks while reading the YAML (ValueError, KeyError, IndexError).
    "!!float abc": Case("found", ("run", "plan.yaml"), _plan("name: !!float abc\nsubplans: []\n")),
    "!!bool maybe": Case("found", ("validate", "plan.yaml"), _plan("name: !!bool maybe\n")),
    # Exit 0: the TOML value was converted, and the plan ran.
    "max_parallel = true": Case(
        "found",
        ("run", "plan.yaml"),
        (("plan.yaml", VALID_PLAN), ("engine.toml", b"max_parallel = true\n")),
        expect=("engine.toml: max_parallel",),
    ),
    # The run's first line came before the error: it looked started.
    "--events is a folder": Case(
        "found",
        ("run", "plan.yaml", "--events", "out"),
        (("plan.yaml", VALID_PLAN),),
        folders=("out",),
        expect=("--events out",),
        store_opens=True,
    ),
    # A message line as long as the value given.
    "a 5,000-digit flag": Case(
        "found", ("run", "plan.yaml", "--max-parallel", "9" * 5000), (("plan.yaml", VALID_PLAN),)
    ),
}


@pytest.mark.parametrize("case", FOUND.values(), ids=FOUND.keys())
def test_inputs_the_fuzz_suite_found(tmp_path: Path, case: Case) -> None:
    outcome = run_in_process(case, tmp_path / "case", deadline=20)

    assert problems_of(case, outcome, deadline=20) == [], outcome.crash or outcome.stderr
