"""Plan files: YAML -> Plan, and every problem reported at once, by file, path and field."""

from __future__ import annotations

import copy
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.domain.plan import Plan
from engine.errors import PlanValidationError
from engine.planfile import MAX_BYTES, load_plan, parse_plan, plan_from_data
from engine.planfile.problems import structure

VALID = textwrap.dedent(
    """\
    version: 1
    name: release-checks
    project: shop
    max_parallel: 4
    failure_mode: fail_fast
    timeout: 1800
    env: {CI: 1, RATIO: 0.5}
    cwd: .
    subplans:
      - name: lint
        run: ruff check .
      - name: unit
        run: [pytest, -q]
        timeout: 300
        retries: 2
      - name: report
        needs: [lint, unit]
        call: shop.reports:build
        with: {strict: true, level: 3}
      - name: matrix
        max_parallel: 2
        failure_mode: continue_on_error
        locks: [db]
        env: {PY: "3"}
        subplans:
          - {name: py311, run: "tox -e py311"}
          - name: inner
            subplans:
              - {name: deep, run: [echo, hi], env: {LEVEL: 3}}
    """
)


def problems_of(text: str, source: str = "plan.yaml") -> list[str]:
    with pytest.raises(PlanValidationError) as info:
        parse_plan(text, source)
    assert info.value.source == source
    lines = str(info.value).splitlines()
    assert len(lines) == len(info.value.problems)
    return lines


def problems_of_data(data: object) -> list[str]:
    with pytest.raises(PlanValidationError) as info:
        plan_from_data(data, "plan.yaml")
    return str(info.value).splitlines()


def one_step(extra: str = "", top: str = "") -> str:
    """A plan with one `run` step named lint; `extra` lines go into the step."""
    step = textwrap.indent(textwrap.dedent(extra), "    ")
    return f"name: p\n{textwrap.dedent(top)}subplans:\n  - name: lint\n    run: x\n{step}"


# --------------------------------------------------------------------------- valid plans


def test_valid_complex_plan() -> None:
    plan = parse_plan(VALID, "plan.yaml")

    assert plan.name == "release-checks"
    assert plan.project == "shop"
    assert plan.env == {"CI": "1", "RATIO": "0.5"}
    assert [path for path, _ in plan.walk()] == [
        "lint",
        "unit",
        "report",
        "matrix",
        "matrix/py311",
        "matrix/inner",
        "matrix/inner/deep",
    ]
    steps = dict(plan.walk())
    assert steps["unit"].run == ["pytest", "-q"]
    assert steps["unit"].retries == 2
    assert steps["unit"].timeout == 300
    assert steps["report"].call == "shop.reports:build"
    assert steps["report"].with_ == {"strict": True, "level": 3}
    assert steps["report"].needs == ["lint", "unit"]
    assert steps["matrix"].kind == "group"
    assert steps["matrix/inner/deep"].env == {"LEVEL": "3"}


def test_load_plan_remembers_its_file(tmp_path: Path) -> None:
    (tmp_path / "plan.yaml").write_text(VALID, encoding="utf-8")

    plan = load_plan(tmp_path / "plan.yaml")

    assert plan.source == (tmp_path / "plan.yaml").resolve()
    assert plan.base_dir == tmp_path.resolve()


def test_load_plan_names_the_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plan.yaml").write_text("name: p\nsubplans: []\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(PlanValidationError) as info:
        load_plan("plan.yaml")

    assert str(info.value) == "plan.yaml: subplans must not be empty"
    assert info.value.source == "plan.yaml"


def test_bom_bytes_and_merge_keys_and_anchors_are_fine() -> None:
    text = textwrap.dedent(
        """\
        name: p
        env: &env {A: "1"}
        subplans:
          - &base {name: a, run: x, timeout: 5}
          - <<: *base
            name: b
            env: *env
        """
    )
    plan = parse_plan(b"\xef\xbb\xbf" + text.encode(), "plan.yaml")

    assert [s.name for s in plan.subplans] == ["a", "b"]
    assert plan.subplans[1].timeout == 5
    assert plan.subplans[1].env == {"A": "1"}


def test_plan_from_data_accepts_a_dict() -> None:
    plan = plan_from_data({"name": "p", "subplans": [{"name": "a", "call": "m:f"}]}, "x")
    assert isinstance(plan, Plan)
    assert plan.subplans[0].kind == "call"


# --------------------------------------------------------------------------- field problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 2\nname: p\nsubplans: [{name: a, run: x}]",
            "plan.yaml: version must be 1, got 2",
        ),
        ("version: true\nname: p\nsubplans: [{name: a, run: x}]", "version must be 1, got true"),
        ("subplans: [{name: a, run: x}]", "plan.yaml: name is required"),
        (
            "name: my plan\nsubplans: [{name: a, run: x}]",
            "plan.yaml: name must be 1 to 64 characters, each a letter, digit, _, . or -, "
            "got 'my plan'",
        ),
        (f"name: {'n' * 65}\nsubplans: [{{name: a, run: x}}]", "plan.yaml: name must be 1 to 64"),
        ("name: 2024\nsubplans: [{name: a, run: x}]", "got 2024 (quote it to make it a string)"),
        ("name: p\nproject: a/b\nsubplans: [{name: a, run: x}]", "plan.yaml: project must be 1"),
        (
            one_step(top="max_parallel: 40\n"),
            "plan.yaml: max_parallel must be between 1 and 32, got 40",
        ),
        (
            one_step(top="max_parallel: true\n"),
            "plan.yaml: max_parallel must be an integer between 1 and 32, got true",
        ),
        (
            one_step(top="failure_mode: fast\n"),
            "plan.yaml: failure_mode must be one of fail_fast, continue_on_error, got 'fast'",
        ),
        (one_step(top="timeout: 0\n"), "plan.yaml: timeout must be greater than 0, got 0"),
        (one_step(top="timeout: soon\n"), "plan.yaml: timeout must be a number greater than 0"),
        (one_step(top="timeout: yes\n"), "timeout must be a number greater than 0, got true"),
        (one_step(top="timeout: .inf\n"), "must be a finite number greater than 0, got inf"),
        (one_step(top="env: [A]\n"), "plan.yaml: env must be a mapping of names to strings"),
        (one_step(top="cwd: 3\n"), "plan.yaml: cwd must be a string, got 3"),
        (
            one_step("retries: three\n"),
            "plan.yaml: lint: retries must be an integer between 0 and 10, got 'three'",
        ),
        (one_step("retries: 11\n"), "plan.yaml: lint: retries must be between 0 and 10, got 11"),
        (one_step("retries: false\n"), "lint: retries must be an integer between 0 and 10"),
        (one_step("timeout: -1\n"), "plan.yaml: lint: timeout must be greater than 0, got -1"),
        (
            one_step("rnu: ruff\n"),
            "plan.yaml: lint: unknown key 'rnu' (did you mean 'run'?)",
        ),
        (
            one_step("Needs: []\n"),
            "plan.yaml: lint: unknown key 'Needs' (did you mean 'needs'?)",
        ),
        (one_step("project: shop\n"), "lint: unknown key 'project' here (only the top level"),
        (one_step("zzz: 1\n"), "lint: unknown key 'zzz' (allowed: name, run, call, with,"),
        (
            one_step(top="subplan: []\n"),
            "plan.yaml: unknown key 'subplan' (did you mean 'subplans'?)",
        ),
        (one_step(top="run: x\n"), "plan.yaml: unknown key 'run' here (only a subplan has it)"),
        (one_step("needs: [3]\n"), "plan.yaml: lint: needs[0] must be a string, got 3"),
        (one_step("needs: a\n"), "plan.yaml: lint: needs must be a list of strings, got 'a'"),
        (one_step("locks: [a b]\n"), "plan.yaml: lint: locks[0] must be 1 to 64 characters"),
        (one_step("env: {A: [1]}\n"), "lint: env.A must be a string or a number, got [1]"),
        (one_step("env: {1: x}\n"), "plan.yaml: lint: env keys must be strings, got 1"),
        (one_step("cwd: [a]\n"), "lint: cwd must be a string, got ['a']"),
        ("name: p\nsubplans: []", "plan.yaml: subplans must not be empty"),
        ("name: p\nsubplans: {a: 1}", "plan.yaml: subplans must be a non-empty list of subplans"),
        ("name: p", "plan.yaml: subplans is required"),
        (
            "name: p\nsubplans: [lint]",
            "plan.yaml: subplans[0] must be a mapping (a subplan with a name and one of run, "
            "call, subplans), got 'lint'",
        ),
        (
            "name: p\nsubplans: [{name: a, call: shop.reports}]",
            "plan.yaml: a: call must be 'module:attribute' (e.g. shop.reports:build), "
            "got 'shop.reports'",
        ),
        (
            "name: p\nsubplans: [{name: a, call: 'm:f', with: [1]}]",
            "plan.yaml: a: with must be a mapping, got [1]",
        ),
    ],
)
def test_field_problem(text: str, expected: str) -> None:
    lines = problems_of(text)
    assert any(expected in line for line in lines), lines


@pytest.mark.parametrize(
    ("run", "shown"),
    [("''", "''"), ("[]", "[]"), ("[tox, 3]", "['tox', 3]"), ("3", "3"), ("{a: b}", "{'a': 'b'}")],
)
def test_run_must_be_a_string_or_an_argv_list(run: str, shown: str) -> None:
    lines = problems_of(f"name: p\nsubplans: [{{name: a, run: {run}}}]")

    expected = (
        f"plan.yaml: a: run must be a non-empty string or a non-empty list of strings, got {shown}"
    )
    assert [line for line in lines if "run must" in line] == [
        line for line in lines if line.startswith(expected)
    ]
    assert len([line for line in lines if "run must" in line]) == 1


def test_failure_mode_suggests_the_closest_value() -> None:
    lines = problems_of(one_step(top="failure_mode: fast\n"))
    assert lines == [
        "plan.yaml: failure_mode must be one of fail_fast, continue_on_error, got 'fast' "
        "(did you mean 'fail_fast'?)"
    ]


def test_unknown_keys_are_suggested_from_the_level_they_are_on() -> None:
    text = "name: p\nmax_paralel: 2\nsubplans:\n  - {name: a, run: x, max_paralel: 2, nedds: []}\n"

    lines = problems_of(text)

    assert "plan.yaml: unknown key 'max_paralel' (did you mean 'max_parallel'?)" in lines
    assert "plan.yaml: a: unknown key 'max_paralel' (did you mean 'max_parallel'?)" in lines
    assert "plan.yaml: a: unknown key 'nedds' (did you mean 'needs'?)" in lines


# --------------------------------------------------------------------------- structural problems


@pytest.mark.parametrize(
    ("subplans", "expected"),
    [
        (
            "[{name: a}]",
            "plan.yaml: a: needs exactly one of run, call, subplans; found none of them",
        ),
        (
            "[{name: a, run: x, call: 'm:f'}]",
            "plan.yaml: a: needs exactly one of run, call, subplans; found run and call",
        ),
        ("[{name: a, run: x}, {name: a, run: y}]", "plan.yaml: a: name is used by more than one"),
        (
            "[{name: a, run: x, needs: [b]}]",
            "plan.yaml: a: needs names unknown sibling 'b' (siblings: no siblings)",
        ),
        (
            "[{name: a, run: x, needs: [b]}, {name: b, run: x, needs: [c]}, "
            "{name: c, run: x, needs: [a]}]",
            "plan.yaml: needs form a cycle: a -> b -> c -> a",
        ),
        ("[{name: a, run: x, needs: [a]}]", "plan.yaml: a: needs names the subplan itself"),
        (
            "[{name: a, run: x}, {name: b, run: x, needs: [a, a]}]",
            "plan.yaml: b: needs lists a sibling more than once",
        ),
        ("[{name: a, run: x, with: {k: 1}}]", "plan.yaml: a: with is only allowed together with"),
        ("[{name: a, run: x, max_parallel: 2}]", "plan.yaml: a: max_parallel only applies to a"),
        ("[{name: a, subplans: []}]", "plan.yaml: a: subplans must not be empty"),
        (
            "[{name: g, retries: 1, subplans: [{name: a, run: x}]}]",
            "plan.yaml: g: retries only applies to run and call steps",
        ),
        (
            "[{name: g, subplans: [{name: a, run: x, needs: [b]}, {name: b, run: x, needs: [a]}]}]",
            "plan.yaml: g: needs form a cycle: a -> b -> a",
        ),
    ],
)
def test_structural_problem(subplans: str, expected: str) -> None:
    assert any(line.startswith(expected) for line in problems_of(f"name: p\nsubplans: {subplans}"))


STRUCTURAL_ONLY = [
    {"name": "p", "subplans": [{"name": "a"}, {"name": "a", "run": "x", "call": "m:f"}]},
    {
        "name": "p",
        "subplans": [
            {"name": "a", "run": "x", "needs": ["b", "zz", "a", "a"]},
            {"name": "b", "run": "x", "needs": ["a"], "max_parallel": 3, "with": {"k": 1}},
            {
                "name": "g",
                "retries": 2,
                "failure_mode": "fail_fast",
                "subplans": [
                    {"name": "x", "run": "x", "needs": ["y"]},
                    {"name": "y", "run": "x", "needs": ["x"]},
                    {"name": "e", "subplans": []},
                ],
            },
        ],
    },
]


@pytest.mark.parametrize("data", STRUCTURAL_ONLY)
def test_raw_structure_pass_matches_the_model_check(data: dict[str, Any]) -> None:
    """The pass run when pydantic stops early must say exactly what the model would say."""
    with pytest.raises(PlanValidationError) as from_model:
        Plan.model_validate(data)

    from_raw = [item.problem for item in structure(data)]

    assert sorted(map(repr, from_raw)) == sorted(map(repr, from_model.value.problems))
    assert len(problems_of_data(data)) == len(from_model.value.problems)


def test_field_and_structural_problems_are_reported_together() -> None:
    text = textwrap.dedent(
        """\
        name: p
        max_parallel: 40
        subplans:
          - name: a
            run: x
            needs: [b, ghost]
            retries: 99
          - name: b
            needs: [a]
          - name: a
            call: nomodule
          - name: g
            subplans:
              - {name: x, run: x, needs: [y], timeout: -5}
              - {name: y, run: x, needs: [x]}
        """
    )

    assert problems_of(text) == [
        "plan.yaml: max_parallel must be between 1 and 32, got 40",
        "plan.yaml: a: needs names unknown sibling 'ghost' (siblings: b, g)",
        "plan.yaml: a: retries must be between 0 and 10, got 99",
        "plan.yaml: b: needs exactly one of run, call, subplans; found none of them",
        "plan.yaml: a: name is used by more than one sibling",
        "plan.yaml: a: call must be 'module:attribute' (e.g. shop.reports:build), got 'nomodule'",
        "plan.yaml: g/x: timeout must be greater than 0, got -5",
        "plan.yaml: g: needs form a cycle: x -> y -> x",
    ]


def test_every_problem_at_once_in_file_order_without_duplicates() -> None:
    text = textwrap.dedent(
        """\
        version: 2
        name: bad name
        failure_mode: fast
        subplans:
          - name: lint
            rnu: ruff check .
          - name: matrix
            max_parallel: 40
            subplans:
              - {name: py311, run: ""}
              - {run: "tox -e py312"}
              - name: py313
                run: x
                retries: three
        """
    )

    lines = problems_of(text)

    assert lines == [
        "plan.yaml: version must be 1, got 2",
        "plan.yaml: name must be 1 to 64 characters, each a letter, digit, _, . or -, "
        "got 'bad name'",
        "plan.yaml: failure_mode must be one of fail_fast, continue_on_error, got 'fast' "
        "(did you mean 'fail_fast'?)",
        "plan.yaml: lint: needs exactly one of run, call, subplans; found none of them",
        "plan.yaml: lint: unknown key 'rnu' (did you mean 'run'?)",
        "plan.yaml: matrix: max_parallel must be between 1 and 32, got 40",
        "plan.yaml: matrix/py311: run must be a non-empty string or a non-empty list of "
        "strings, got ''",
        "plan.yaml: matrix/subplans[1]: name is required",
        "plan.yaml: matrix/py313: retries must be an integer between 0 and 10, got 'three'",
    ]
    assert len(set(lines)) == len(lines)


def test_nested_paths_use_names_and_fall_back_to_positions() -> None:
    data = {
        "name": "p",
        "subplans": [
            {
                "name": "outer",
                "subplans": [
                    {"name": "mid", "subplans": [{"name": "leaf", "run": "x", "timeout": 0}]},
                    {"name": 7, "subplans": [{"name": "x", "run": "y", "retries": -1}]},
                ],
            }
        ],
    }

    assert problems_of_data(data) == [
        "plan.yaml: outer/mid/leaf: timeout must be greater than 0, got 0",
        "plan.yaml: outer/subplans[1]: name must be 1 to 64 characters, each a letter, digit, "
        "_, . or -, got 7 (quote it to make it a string)",
        "plan.yaml: outer/subplans[1]/x: retries must be between 0 and 10, got -1",
    ]


def test_the_number_of_problems_shown_is_capped() -> None:
    data = {"name": "p", "subplans": [{"name": "a", "run": "x", "needs": list(range(500))}]}

    lines = problems_of_data(data)

    assert len(lines) == 101
    assert lines[-1] == "plan.yaml: ... and 400 more problem(s) not shown"


# --------------------------------------------------------------------------- garbage files


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PlanValidationError, match=r"nope\.yaml: no such file$"):
        load_plan(missing)


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(PlanValidationError, match=r"is a directory, not a plan file$"):
        load_plan(tmp_path)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(VALID, encoding="utf-8")
    path.chmod(0)
    try:
        with pytest.raises(PlanValidationError, match=r"cannot be read: permission denied$"):
            load_plan(path)
    finally:
        path.chmod(0o600)


def test_unreadable_file_even_as_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(VALID, encoding="utf-8")

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "open", refuse)

    with pytest.raises(
        PlanValidationError, match=r"plan\.yaml: cannot be read: permission denied$"
    ):
        load_plan(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "plan.yaml: is a binary file, not YAML text"),
        (b"name: caf\xe9\n", "plan.yaml: is not UTF-8 text (byte 0xe9 at offset 9)"),
        (b"", "plan.yaml: is empty; a plan needs at least name and subplans"),
        (b"  \n\n", "plan.yaml: is empty; a plan needs at least name and subplans"),
        (b"# only\n# comments\n", "plan.yaml: holds no plan (only comments or null)"),
        (b"- a\n- b\n", "plan.yaml: must be a mapping with name and subplans, got a list"),
        (b"just words", "plan.yaml: must be a mapping with name and subplans, got 'just words'"),
        (b"42", "plan.yaml: must be a mapping with name and subplans, got 42"),
        (
            b"name: a\n---\nname: b\n",
            "plan.yaml: line 2, column 1: a second YAML document starts here",
        ),
        (
            b"name: p\nsubplans:\n  - name: a\n     run: x\n",
            "plan.yaml: line 4, column 9: not valid YAML: mapping values are not allowed here",
        ),
        (b"name: [p\n", "plan.yaml: line 2, column 1: not valid YAML:"),
        (b"name: p\n\tsubplans: []\n", "(indent with spaces; YAML does not allow tabs)"),
        (
            b"name: p\nsubplans:\n  - name: a\n    run: x\n    run: y\n",
            "plan.yaml: line 5, column 5: duplicate key 'run' (first at line 4)",
        ),
        (
            b"name: p\nname: q\n",
            "plan.yaml: line 2, column 1: duplicate key 'name' (first at line 1)",
        ),
        (b"name: !!python/object/apply:os.system [ls]\n", "line 1, column 7: not valid YAML:"),
        (b"name: *nowhere\n", "not valid YAML: found undefined alias 'nowhere'"),
        (b"? [a]\n: b\n", "not valid YAML: found unhashable key"),
        (b"name: \x07\n", "plan.yaml: line 1, column 7: character U+0007 is not allowed"),
        (b"name: " + b"9" * 5000 + b"\n", "line 1, column 7: number with 5000 digits is too large"),
        (b"name: 2024-13-45\n", "'2024-13-45' looks like a date but is not one"),
        (b"[" * 150 + b"]" * 150, "plan.yaml: line 1, column 101: nested deeper than 100 levels"),
        (b"a: &a [*a]\n", "plan.yaml: contains a value that contains itself"),
    ],
)
def test_garbage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, expected: str
) -> None:
    (tmp_path / "plan.yaml").write_bytes(content)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(PlanValidationError) as info:
        load_plan("plan.yaml")

    assert str(info.value).startswith("plan.yaml: ")
    assert expected in str(info.value), str(info.value)
    assert len(info.value.problems) == 1


def test_billion_laughs_is_rejected_quickly() -> None:
    lines = ["lol: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]

    assert problems_of("\n".join(lines)) == [
        "plan.yaml: is too large: more than 1,000,000 values once YAML aliases are expanded"
    ]


def test_too_large_text_is_rejected_before_parsing() -> None:
    huge = "# " + "x" * MAX_BYTES
    assert problems_of(huge) == ["plan.yaml: is too large: more than 10 MB"]
    assert problems_of(huge.encode()) == ["plan.yaml: is too large: more than 10 MB"]


def test_deep_python_data_is_rejected_without_recursion_error() -> None:
    deep: list[Any] = []
    for _ in range(5000):
        deep = [deep]
    cyclic: dict[str, Any] = {"name": "p"}
    cyclic["subplans"] = [cyclic]

    assert problems_of_data({"name": "p", "subplans": deep}) == [
        "plan.yaml: is nested deeper than 100 levels"
    ]
    assert problems_of_data(cyclic)[0].startswith("plan.yaml: contains a value that contains")
    assert problems_of_data([1]) == [
        "plan.yaml: must be a mapping with name and subplans, got a list"
    ]


# --------------------------------------------------------------------------- property


def _valid_data() -> dict[str, Any]:
    data = yaml.safe_load(VALID)
    assert isinstance(data, dict)
    return data


def _containers(value: object, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if isinstance(value, dict | list) else []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, child in items:
        found += _containers(child, (*path, key))
    return found


def _deep(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = [value]
    return value


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=80),
    st.sampled_from(["", "a b", "fail_fast", "m:f", "x" * 70, "łódź", "\u202e", "🙂", "run"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
) | st.integers(min_value=90, max_value=160).map(_deep)
KEYS = st.sampled_from(
    [
        *("name", "run", "call", "with", "subplans", "needs", "timeout", "retries", "env"),
        *("cwd", "max_parallel", "failure_mode", "locks", "version", "project", "rnu", "", "🙂"),
    ]
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_mutated_plans_give_a_plan_or_a_plan_validation_error(data: st.DataObject) -> None:
    plan = _valid_data()
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        path = data.draw(st.sampled_from(_containers(plan)))
        target: Any = plan
        for step in path:
            target = target[step]
        action = data.draw(st.sampled_from(["set", "drop", "add", "nest"]))
        if isinstance(target, dict):
            key = data.draw(
                KEYS if action == "add" or not target else st.sampled_from(sorted(target))
            )
        elif target:
            key = data.draw(st.integers(min_value=0, max_value=len(target) - 1))
        else:
            continue
        if action == "drop" and isinstance(target, list):
            del target[key]
        elif action == "drop":
            target.pop(key, None)
        elif action == "nest":
            target[key] = _deep(data.draw(st.integers(min_value=1, max_value=150)))
        else:
            target[key] = data.draw(VALUES)

    results: list[object] = [_outcome(lambda: plan_from_data(copy.deepcopy(plan), "plan.yaml"))]
    try:
        text = yaml.safe_dump(plan, allow_unicode=True)
    except (ValueError, yaml.YAMLError, RecursionError):
        pass  # some generated values cannot be written as YAML at all
    else:
        results.append(_outcome(lambda: parse_plan(text, "plan.yaml")))

    for result in results:
        _check_outcome(result)


def _outcome(build: Callable[[], Plan]) -> Plan | PlanValidationError:
    try:
        return build()
    except PlanValidationError as exc:
        return exc


def _check_outcome(result: object) -> None:
    """A Plan, or a PlanValidationError whose every line is a short, rendered problem."""
    if isinstance(result, PlanValidationError):
        assert result.problems
        for line in str(result).splitlines():
            assert line.startswith("plan.yaml: ")
            assert "Input should" not in line
            assert len(line) < 1000
    else:
        assert isinstance(result, Plan)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_gives_a_plan_or_a_plan_validation_error(text: str | bytes) -> None:
    _check_outcome(_outcome(lambda: parse_plan(text, "plan.yaml")))


# --------------------------------------------------------------------------- found by fuzzing
# (tests/reliability/fuzz.py, issue 7): each of these was a traceback, a step that crashed the
# run after it had started, or a message that did not say what was wrong.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('!!int ""', "line 2, column 15: '' is not a valid !!int value"),  # was IndexError
        ("!!int abc", "line 2, column 15: 'abc' is not a valid !!int value"),  # "too large"
        ("!!float abc", "line 2, column 15: 'abc' is not a valid !!float value"),  # ValueError
        ("!!bool maybe", "line 2, column 15: 'maybe' is not a valid !!bool value"),  # KeyError
        (
            "!!timestamp nope",
            "line 2, column 15: 'nope' is not a valid !!timestamp value",
        ),  # AttributeError
        (
            "!!map [1]",
            "line 2, column 15: not valid YAML: expected a mapping node, but found sequence",
        ),  # TypeError
        ("!!set {a, b}", "line 2, column 15: a !!set has no order: write a list instead"),
    ],
)
def test_explicit_tags_that_do_not_fit_their_value(value: str, expected: str) -> None:
    text = f"name: p\nmax_parallel: {value}\nsubplans: [{{name: a, run: x}}]\n"
    assert problems_of(text) == [f"plan.yaml: {expected}"]


def test_a_set_is_no_argv() -> None:
    # pydantic takes a set for a list: the argv would have come in no defined order.
    assert problems_of("name: p\nsubplans:\n  - name: a\n    run: !!set {touch, x}\n") == [
        "plan.yaml: line 4, column 10: a !!set has no order: write a list instead"
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('cwd: "a\\0b"', "lint: cwd must not contain a NUL character (\\0), got 'a\\x00b'"),
        ('env: {A: "\\0"}', "lint: env.A must not contain a NUL character (\\0), got '\\x00'"),
        (
            'env: {"A=B": x}',
            "lint: env keys must be variable names (non-empty text without = or NUL), got 'A=B'",
        ),
        (
            'env: {"": x}',
            "lint: env keys must be variable names (non-empty text without = or NUL), got ''",
        ),
        (
            'env: {A: "\\ud800"}',
            "lint: env.A must be valid Unicode text (no lone surrogates), got '\\ud800'",
        ),
        (
            'cwd: "\\udc80"',
            "lint: cwd must be valid Unicode text (no lone surrogates), got '\\udc80'",
        ),
    ],
)
def test_text_no_process_can_take_is_rejected_before_running(extra: str, expected: str) -> None:
    assert problems_of(one_step(extra + "\n")) == [f"plan.yaml: {expected}"]


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        ('"echo \\0"', "run must not contain a NUL character (\\0), got 'echo \\x00'"),
        ('[echo, "\\0"]', "run must not contain a NUL character (\\0), got ['echo', '\\x00']"),
        (
            '"echo \\ud800"',
            "run must be valid Unicode text (no lone surrogates), got 'echo \\ud800'",
        ),
        (
            '[echo, "\\udfff"]',
            "run must be valid Unicode text (no lone surrogates), got ['echo', '\\udfff']",
        ),
    ],
)
def test_a_command_no_process_can_take_is_rejected(run: str, expected: str) -> None:
    assert problems_of(f"name: p\nsubplans:\n  - name: a\n    run: {run}\n") == [
        f"plan.yaml: a: {expected}"
    ]


def test_long_names_and_long_lists_in_needs_messages_are_bounded() -> None:
    siblings = [{"name": f"s{i}", "run": "x"} for i in range(50)]
    ghost = "g" * 5000
    data = {"name": "p", "subplans": [*siblings, {"name": "a", "run": "x", "needs": [ghost]}]}
    (line,) = problems_of_data(data)
    assert line.startswith(f"plan.yaml: a: needs names unknown sibling {'g' * 60!r}... (5000 ")
    assert line.endswith(
        "(siblings: s0, s1, s10, s11, s12, s13, s14, s15, s16, s17, ... (50 in all))"
    )
    assert len(line) < 300

    ring = [{"name": f"n{i}", "run": "x", "needs": [f"n{(i + 1) % 30}"]} for i in range(30)]
    (line,) = problems_of_data({"name": "p", "subplans": ring})
    assert (
        line
        == "plan.yaml: needs form a cycle: "
        + " -> ".join(f"n{i}" for i in range(10))
        + " -> ... (31 in all)"
    )


def test_a_list_as_a_subplan_name_beside_an_unknown_need_is_reported_not_crashed() -> None:
    """Found by the mutation test: the unknown-sibling message hashed the (list) name."""
    data = {
        "name": "p",
        "subplans": [
            {"name": "a", "run": "true"},
            {"name": ["x"], "run": "true", "needs": ["nope"]},
        ],
    }
    with pytest.raises(PlanValidationError) as caught:
        plan_from_data(data, "plan.yaml")
    assert "nope" in str(caught.value)
