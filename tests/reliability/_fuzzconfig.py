"""Bad configuration (SPEC section 5): engine.toml, `ENGINE_*` variables and flags, each with a
valid plan beside it that would touch the marker if the engine ran it anyway.

`config_cases(kind)` is the hypothesis strategy; `extreme_cases()` a few large plan files.
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any

from hypothesis import strategies as st

from engine.config import ENV_VARS
from reliability._fuzzcase import MARKER, VALID_PLAN, Case, Draw

INT_KEYS = {"max_parallel": (1, 32), "async.max_workers": (1, 256)}
SECONDS_KEYS = ["kill_grace", "async.poll_interval", "async.job_timeout", "async.job_ttl"]
SECONDS_KEYS += ["async.heartbeat_interval", "async.stuck_after", "locks.plan_ttl"]
SECONDS_KEYS += ["locks.project_ttl"]
# Every setting's variable but the signing key's (its rules: tests/test_signing.py).
VARIABLES = {k: v for k, v in ENV_VARS.items() if k != "async.signing_key"}
MODES = ["fail_fast", "continue_on_error"]
LOOKALIKE_MODE = "f\u0430il_fast"  # with a Cyrillic a
INF, NAN = math.inf, math.nan


def _kind(key: str) -> str:
    if key in INT_KEYS:
        return "int"
    if key in SECONDS_KEYS or key == "retry_backoff":
        return "seconds"
    return {"async.enabled": "bool", "failure_mode": "mode"}.get(key, "text")


# --------------------------------------------------------------------------- TOML


class Toml:
    """A TOML value written as is (a date, `1e400`)."""

    def __init__(self, text: str) -> None:
        self.text = text


def toml_value(value: Any) -> str:
    if isinstance(value, Toml):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(values: dict[str, Any]) -> str:
    """`{"a.b": 1}` as `[a]\\nb = 1`, top-level keys first."""
    lines = [f"{_key(k)} = {toml_value(v)}\n" for k, v in values.items() if "." not in k]
    sections: dict[str, list[str]] = {}
    for key, value in values.items():
        if "." in key:
            section, leaf = key.rsplit(".", 1)
            sections.setdefault(section, []).append(f"{_key(leaf)} = {toml_value(value)}\n")
    for section, entries in sections.items():
        lines += [f"[{section}]\n", *entries]
    return "".join(lines)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


DATES = [Toml("1979-05-27"), Toml("1979-05-27T07:32:00Z"), Toml("07:32:00")]
CONTAINERS = [[1, 2], {"a": 1}, [], {}, *DATES]
WRONG_TYPES = {
    "int": [True, False, "3", "three", 2.5, 3.0, *CONTAINERS],
    "seconds": [True, False, "5", "5s", "soon", *CONTAINERS],
    "bool": [0, 1, 2, "true", "yes", "on", 1.0, *CONTAINERS],
    "mode": [1, True, 2.5, "FAIL_FAST", "fail-fast", "", LOOKALIKE_MODE, *CONTAINERS],
    "text": [5, True, 2.5, *CONTAINERS],
}


def _out_of_range(draw: Draw, key: str) -> Any:
    if key in INT_KEYS:
        low, high = INT_KEYS[key]
        below = st.integers(min_value=-(2**63), max_value=low - 1)
        return draw(below | st.integers(min_value=high + 1, max_value=2**63 - 1))
    if key == "retry_backoff":  # 0 (no backoff) is fine
        return draw(st.floats(max_value=-1e-9) | st.sampled_from([INF, NAN, -1]))
    return draw(st.floats(max_value=0) | st.sampled_from([INF, NAN, Toml("1e400"), -1, 0]))


TOML_SYNTAX = ["max_parallel = \n", "= 3\n", "[unclosed\n", "max_parallel = [1,\n"]
TOML_SYNTAX += ['failure_mode = "unterminated\n', "max_parallel = 3\nmax_parallel = 4\n"]
TOML_SYNTAX += ["[async]\nenabled = true\n[async]\nmax_workers = 2\n", "[async.]\n"]
TOML_SYNTAX += ["max_parallel = 3 kill_grace = 2\n", "max_parallel = 0x\n", "kill_grace = 1.\n"]
TOML_SYNTAX += ["max_parallel = 1979-13-45\n", "failure_mode = 'multi\nline'\n", "tab\tkey = 1\n"]
TOML_SYNTAX += ['failure_mode = "\\ud800"\n', "max_parallel = nan1\n", "max_parallel = 3\x01\n"]
TOML_SYNTAX += ["max_parallel = +\n", "\ufeffmax_parallel = 3\n"]
UNKNOWN_KEYS = ["max-parallel", "maxParallel", "max_paralel", "parallel", "failure", "timeout"]
UNKNOWN_KEYS += ["asnyc.enabled", "lock.plan_ttl", "db.url", "database.uri", "async.workers"]
UNKNOWN_KEYS += ["locks.ttl", "async.enabled.really", "async.poll_interval.s", "async.signing"]
SECTIONS = ["async", "database", "locks"]
#: Settings' own names (`async_` too: the model takes names as well as aliases).
TAKEN = {*VARIABLES, *SECTIONS, "async_", "max_parallel", "failure_mode", "data_dir"}


def _unknown_toml(draw: Draw) -> str:
    quoted = st.text(min_size=1, max_size=12).map(lambda k: f'"{k}"')
    bare = st.text(string.ascii_letters + "_", min_size=1, max_size=12)
    key = draw(st.sampled_from(UNKNOWN_KEYS) | bare | quoted)
    if key.startswith('"'):  # a quoted key may hold dots: `"async.enabled"` names a known key
        inner = key[1:-1]
        return f"{json.dumps(inner if inner not in VARIABLES and inner.strip() else '?')} = 1\n"
    if key in TAKEN:
        key = f"{key}x"
    if "." not in key and draw(st.booleans()):
        return f"[{key}]\n"  # an empty table
    return toml_text({key: 1})


@st.composite
def toml_files(draw: Draw, kind: str) -> tuple[bytes, str]:
    """A bad engine.toml of one kind, and what is wrong with it."""
    good = {"max_parallel": 3} if draw(st.booleans()) else {}
    if kind == "toml_type":
        key = draw(st.sampled_from(sorted(VARIABLES)))
        value = draw(st.sampled_from(WRONG_TYPES[_kind(key)]))
        if _kind(key) == "mode" and draw(st.booleans()):
            value = draw(st.text(max_size=20).filter(lambda s: s not in MODES))
        return toml_text({**good, key: value}).encode(), f"{key} = {toml_value(value)[:60]}"
    if kind == "toml_range":
        key = draw(st.sampled_from([*INT_KEYS, *SECONDS_KEYS, "retry_backoff"]))
        value = _out_of_range(draw, key)
        return toml_text({**good, key: value}).encode(), f"{key} = {toml_value(value)}"
    if kind == "toml_unknown_key":
        text = toml_text(good) + _unknown_toml(draw)
        return text.encode(), text[-60:]
    if kind == "toml_section":
        section = draw(st.sampled_from(SECTIONS))
        value = draw(st.sampled_from([3, "x", True, [1], 2.5, DATES[0]]))
        text = draw(st.sampled_from([f"{section} = {toml_value(value)}\n", f"[[{section}]]\n"]))
        return text.encode(), text.strip()
    if kind == "toml_syntax":
        snippet = draw(st.sampled_from(TOML_SYNTAX))
        return (toml_text(good) + snippet).encode(), repr(snippet)
    assert kind == "toml_binary"
    data = draw(st.binary(max_size=500))
    at = draw(st.integers(0, len(data)))
    bad = draw(st.sampled_from([b"\x00", b"\xff", b"\xc0", b"\x01"]))
    return data[:at] + bad + data[at:], "binary"


# --------------------------------------------------------------------------- variables, flags


def _garbage(draw: Draw) -> str:
    """Text no setting takes: it ends in `x`, so it is no number, boolean, mode or URL."""
    chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00:")
    return str(draw(st.text(chars, max_size=40))) + "x"


def _bad_variable(draw: Draw, key: str) -> str:
    kind, garbage = _kind(key), _garbage(draw)
    if kind == "int":
        low, high = INT_KEYS[key]
        numbers = st.integers(max_value=low - 1) | st.integers(min_value=high + 1)
        odd = ["", " ", "2.5", "1e3", "true", "9" * 5000, "\u0663", "three", garbage]
        return draw(numbers.map(str) | st.sampled_from(odd))
    if kind == "seconds":
        numbers = st.floats(max_value=-1e-9 if key == "retry_backoff" else 0, allow_nan=False)
        odd = ["nan", "inf", "-inf", "1e999", "", " ", "5s", "NaN", "-1", garbage]
        return draw(numbers.map(repr) | st.sampled_from(odd))
    if kind == "bool":
        return draw(st.sampled_from(["2", "-1", "tru", "", " ", "enabled", "1.0", garbage]))
    assert kind == "mode"
    return draw(st.sampled_from(["FAIL_FAST", "fail-fast", "", LOOKALIKE_MODE, garbage]))


def _variable_case(draw: Draw, argv: list[str], files: list[tuple[str, bytes]]) -> Case:
    key = draw(st.sampled_from(sorted(VARIABLES)))
    if key == "data_dir":  # any folder name is fine: only one that cannot be a folder is not
        files.append(("afile", b"a file, not a folder"))
        value = draw(st.sampled_from(["afile", "afile/logs", "afile/a/b", "x" * 5000]))
        expect = VARIABLES[key]
    elif key == "database.url":
        scheme = draw(st.sampled_from(["mysql", "http", "ftp", "redis", "sqlite+pysqlite"]))
        value = draw(st.sampled_from([f"{scheme}://host/db", "", "nonsense", _garbage(draw)]))
        expect = "database URL"  # (the store names the URL it could not use)
    else:
        value, expect = _bad_variable(draw, key), VARIABLES[key]
    env = ((VARIABLES[key], value),)
    note = f"{VARIABLES[key]}={value[:60]!r}"
    return Case("config/env_var", tuple(argv), tuple(files), env=env, expect=(expect,), note=note)


def _flag_case(draw: Draw, files: list[tuple[str, bytes]]) -> Case:
    run = ["run", "plan.yaml"]
    low, high = str(draw(st.integers(max_value=0))), str(draw(st.integers(min_value=33)))
    choices: list[tuple[list[str], str]] = [
        ([*run, "--max-parallel", low], "max_parallel"),
        ([*run, "--max-parallel", high], "max_parallel"),
        ([*run, "--max-parallel", draw(st.sampled_from(["x", "2.5", "", "9" * 5000]))], "--max"),
        ([*run, "--failure-mode", draw(st.sampled_from(["fast", "", "FAIL_FAST"]))], "--fail"),
        ([*run, "--lock-wait", draw(st.sampled_from(["-1", "nan", "inf", "soon", ""]))], "--lock"),
        (
            [*run, "--db", draw(st.sampled_from(["mysql://h/db", "nonsense", "", "http://x"]))],
            "URL",
        ),
        ([*run, "--bogus"], "--bogus"),
        ([*run, "--max_parallel", "3"], "--max_parallel"),
        ([*run, "extra-argument"], "extra-argument"),
        ([*run, "--config", "x.toml"], "--config"),
        (["run"], "PLAN"),
        ([], "COMMAND"),
        (["runn", "plan.yaml"], "runn"),
        (["--config"], "--config"),
        (["worker", "--concurrency", draw(st.sampled_from(["0", "-1", "x"]))], "--concurrency"),
        (["worker", "--poll-interval", draw(st.sampled_from(["0", "nan", "-1", "x"]))], "--poll"),
        (["worker", "--grace", draw(st.sampled_from(["-1", "nan", "x"]))], "--grace"),
        (["jobs", "list", "--status", "bogus"], "--status"),
        (["jobs", "list", "--limit", "many"], "--limit"),
        (["runs", "list", "--limit", "2.5"], "--limit"),
        (["locks", "release"], "RESOURCE"),
        (["db", "upgrade", "--bogus"], "--bogus"),
    ]
    argv, expect = draw(st.sampled_from(choices))
    if draw(st.integers(0, 9)) == 0:  # a folder as the events file: found once the store is open
        argv, expect = [*run, "--events", "out"], "--events out"
        return Case("config/flag", tuple(argv), tuple(files), ("out",), (), (expect,), True, expect)
    return Case("config/flag", tuple(argv), tuple(files), expect=(expect,), note=" ".join(argv))


CONFIG_KINDS = ["toml_type", "toml_range", "toml_unknown_key", "toml_section", "toml_syntax"]
CONFIG_KINDS += ["toml_binary", "config_path", "env_var", "flag"]


#: Other commands that read the configuration first (`worker` is left out: it sets up logging).
COMMANDS = [["submit", "plan.yaml"], ["jobs", "list"], ["runs", "list"], ["locks", "list"]]
COMMANDS += [["diagnostics"], ["db", "current"]]


@st.composite
def config_cases(draw: Draw, kind: str) -> Case:
    """Bad configuration of one kind, for `run` of a valid plan (mostly) or another command."""
    files: list[tuple[str, bytes]] = [("plan.yaml", VALID_PLAN)]
    argv = draw(st.sampled_from([["run", "plan.yaml"]] * 6 + COMMANDS))
    if kind == "flag":
        return _flag_case(draw, files)
    if kind == "env_var":
        return _variable_case(draw, argv, files)
    env: tuple[tuple[str, str], ...] = ()
    folders: tuple[str, ...] = ()
    if kind == "config_path":  # the file named is not one
        name, note = draw(st.sampled_from([("conf/missing.toml", "missing"), ("conf", "a folder")]))
        folders = ("conf",) if note == "a folder" else ()
        where = draw(st.sampled_from(["--config", "ENGINE_CONFIG"]))
    else:
        where = draw(st.sampled_from(["engine.toml", "--config", "ENGINE_CONFIG"]))
        name = "engine.toml" if where == "engine.toml" else "conf/bad settings.toml"
        content, note = draw(toml_files(kind))
        files.append((name, content))
    if where == "--config":
        argv = ["--config", name, *argv]
    elif where == "ENGINE_CONFIG":
        env = (("ENGINE_CONFIG", name),)
    note = f"{where}: {note}"
    return Case(f"config/{kind}", tuple(argv), tuple(files), folders, env, (name,), note=note)


# --------------------------------------------------------------------------- extreme inputs


def extreme_cases() -> list[Case]:
    """A few large plan files, too slow to make by the thousand: each must still fail fast."""
    from engine.planfile import MAX_BYTES

    laughs = ["lol: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"l{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    steps = "".join(f"  - {{name: 'step {i}', run: touch {MARKER}}}\n" for i in range(10_000))
    documents = {
        "too_large": b"# " + b"x" * MAX_BYTES + b"\nname: p\n",
        "large_comment": b"# " + b"x" * (4 << 20) + b"\nname: [bad\n",
        "billion_laughs": ("\n".join(laughs) + "\n").encode(),
        "many_bad_subplans": f"name: many\nsubplans:\n{steps}".encode(),
        "deep_flow": b"name: " + b"[" * 100_000 + b"]" * 100_000 + b"\n",
        "long_line": b"name: '" + b"x" * (2 << 20) + b"'\nsubplans: []\n",
    }
    return [
        Case(f"extreme/{name}", ("run", "plan.yaml"), (("plan.yaml", data),), expect=("plan.yaml",))
        for name, data in documents.items()
    ]
