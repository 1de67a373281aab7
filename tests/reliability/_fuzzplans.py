"""Malformed plan documents: a valid plan (whose steps would touch the marker), broken on purpose.

Each breaker makes a change that no plan may contain, whatever else the plan holds, so that every
document is one the engine must reject: `plan_cases(kind)` is the hypothesis strategy.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st

from reliability._fuzzcase import MARKER, Case, Draw

NAME_CHARS = string.ascii_letters + string.digits + "_.-"
NAMES = st.text(NAME_CHARS, min_size=1, max_size=10)
MODES = ["fail_fast", "continue_on_error"]
ENV_NAMES = st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True)
ENV_VALUES = st.text(string.ascii_letters + " -_./:", max_size=12) | st.integers(-99, 99)
PLAN_FILES = ["plan.yaml", "plans/nested/release.yml", "pl\u00e4n \U0001f642.yaml", "p l a n.json"]
TOP_FIELDS = ["name", "version", "project", "max_parallel", "failure_mode", "timeout", "env"]
TOP_FIELDS += ["cwd", "subplans"]
SUB_FIELDS = ["name", "run", "call", "with", "subplans", "needs", "timeout", "retries", "env"]
SUB_FIELDS += ["cwd", "max_parallel", "failure_mode", "locks"]
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
CALL_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
INF, NAN = math.inf, math.nan


class Raw:
    """YAML text put into a rendered document as written: huge numbers, tags, anchors, flows."""

    def __init__(self, text: str) -> None:
        self.text = text


# --------------------------------------------------------------------------- the valid base


@st.composite
def valid_plans(draw: Draw) -> dict[str, Any]:
    """A valid plan whose every `run` step would touch the marker (there is at least one)."""
    plan: dict[str, Any] = {}
    if draw(st.booleans()):
        plan["version"] = 1
    plan["name"] = draw(NAMES)
    optional = {
        "project": NAMES,
        "max_parallel": st.integers(1, 32),
        "failure_mode": st.sampled_from(MODES),
        "timeout": st.integers(1, 3600) | st.floats(0.5, 3600),
        "env": st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=3),
        "cwd": st.just("."),
    }
    for key, values in optional.items():
        if draw(st.booleans()):
            plan[key] = draw(values)
    plan["subplans"] = _children(draw, 0)
    return plan


def _children(draw: Draw, depth: int) -> list[dict[str, Any]]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3 if depth else 4, unique=True))
    out = []
    for i, name in enumerate(names):
        kinds = ["run", "argv", "call"] + (["group"] if depth < 2 else [])
        kind = "run" if depth == 0 and i == 0 else draw(st.sampled_from(kinds))
        child: dict[str, Any] = {"name": name}
        if kind == "run":
            child["run"] = f"touch {MARKER}"
        elif kind == "argv":
            child["run"] = ["touch", MARKER]
        elif kind == "call":
            child["call"] = "stepkit:value"
            child["with"] = {"x": draw(st.integers(0, 9))}
        else:
            child["subplans"] = _children(draw, depth + 1)
            if draw(st.booleans()):
                child["max_parallel"] = draw(st.integers(1, 32))
            if draw(st.booleans()):
                child["failure_mode"] = draw(st.sampled_from(MODES))
        if kind != "group" and draw(st.booleans()):
            child["retries"] = draw(st.integers(0, 10))
        if draw(st.booleans()):
            child["timeout"] = draw(st.integers(1, 600))
        if i and draw(st.booleans()):
            child["needs"] = draw(st.lists(st.sampled_from(names[:i]), max_size=2, unique=True))
        if draw(st.booleans()):
            child["locks"] = draw(st.lists(NAMES, max_size=2, unique=True))
        if draw(st.booleans()):
            child["env"] = draw(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=2))
        out.append(child)
    return out


@dataclass
class _Node:
    """A place breakers change: the top level or one subplan."""

    data: dict[str, Any]
    top: bool

    @property
    def fields(self) -> list[str]:
        return TOP_FIELDS if self.top else SUB_FIELDS


def _nodes(plan: dict[str, Any]) -> list[_Node]:
    """The top level and every subplan still a mapping (another breaker may have been first)."""
    out = [_Node(plan, True)]

    def visit(children: object) -> None:
        for child in children if isinstance(children, list) else []:
            if isinstance(child, dict):
                out.append(_Node(child, False))
                visit(child.get("subplans"))

    visit(plan.get("subplans"))
    return out


def _node(draw: Draw, plan: dict[str, Any]) -> _Node:
    node: _Node = draw(st.sampled_from(_nodes(plan)))
    return node


# --------------------------------------------------------------------------- breakers


def _not_name(text: str) -> bool:
    return NAME_RE.fullmatch(text) is None


NOT_TEXT = st.one_of(
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(0, 9), max_size=2),
    st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=3), st.integers()),
)
ODD_NAMES = ["", "a b", "x" * 65, "x" * 100_000, "\u0142\u00f3d\u017a", "\u540d\u524d"]
ODD_NAMES += ["\U0001f642", "a/b", "a:b", "\u202eabc", "a\u200bb", "tab\there", "new\nline"]
BAD_NAMES = st.text(max_size=70).filter(_not_name) | st.sampled_from(ODD_NAMES)
NOT_NUMBERS = ["4", "four", True, False, [], {}, [1], {"n": 1}, "\uff13", "\u0663"]
BAD_ENV = [[], "A=1", 5, True, 1.5, None, ["A"], {"A": []}, {"A": {}}, {"A": None}]
BAD_ENV += [{1: "x"}, {"": "x"}, {"A=B": "x"}, {"A": "\x00"}, {"\x00": "x"}, {None: "x"}]
BAD_ENV += [{"A": "\ud800"}, {"A": {"B": "C"}}]
BAD_RUN = ["", [], [1], ["a", 2], [[]], 5, True, 2.5, {}, {"a": 1}, "\x00", [None]]
BAD_RUN += [["touch", "\x00"], "touch \ud800", [MARKER, "\udbff"]]
BAD_SUBPLANS = [[], {}, "x", 5, True, [1], ["x"], [[]], [None], {"name": "a", "run": "x"}]


def _bad_value(draw: Draw, key: str, node: _Node) -> Any:
    """A value no plan accepts for `key` at `node`, whatever else the plan holds."""
    if key == "name":
        return draw(BAD_NAMES | NOT_TEXT | st.none())
    if key == "version":
        return draw(st.sampled_from([0, 2, -1, "1", 1.0, True, False, None, [1], {"v": 1}]))
    if key == "project":
        return draw(BAD_NAMES | st.integers() | st.booleans() | st.just([]))
    if key in ("max_parallel", "retries"):
        low, high = (1, 32) if key == "max_parallel" else (0, 10)
        odd = [*NOT_NUMBERS, 2.5, 4.0, INF, -INF, NAN] + ([None] if key == "retries" else [])
        too_low, too_high = st.integers(max_value=low - 1), st.integers(min_value=high + 1)
        return draw(too_low | too_high | st.sampled_from(odd))
    if key == "failure_mode":
        return draw(
            st.text(max_size=20).filter(lambda s: s not in MODES) | st.sampled_from([1, []])
        )
    if key == "timeout":
        odd = [INF, NAN, "30", "1h", True, False, [], {}, -(10**400), 10**400]
        return draw(st.floats(max_value=0) | st.sampled_from(odd))
    if key == "env":
        return draw(st.sampled_from(BAD_ENV))
    if key == "cwd":
        return draw(st.sampled_from([5, True, 1.5, [], {}, "\x00", "a\x00b", "\ud800", ["a"]]))
    if key == "subplans":  # a step has none: `null` is only wrong at the top
        return draw(st.sampled_from([*BAD_SUBPLANS, None] if node.top else BAD_SUBPLANS))
    if key == "run":
        return draw(st.sampled_from(BAD_RUN))
    if key == "call":
        odd = [5, [], {}, True, "a:b:c", "1a:b", ":b", "a:", "a b:c"]
        return draw(
            st.text(max_size=20).filter(lambda s: not CALL_RE.fullmatch(s)) | st.sampled_from(odd)
        )
    if key == "with":
        return draw(st.sampled_from([[], "x", 5, True, 2.5, [1, 2], {1: 2}]))
    if key == "needs":
        odd = ["a", 5, {}, True, None, [1], [None], [[]], [{}], ["no-such-sibling"]]
        return draw(st.sampled_from(odd) | st.just([node.data.get("name")]))
    if key == "locks":
        return draw(st.sampled_from(["db", 5, {}, True, None, [5], ["a b"], [""], [None]]))
    raise AssertionError(key)


def wrong_type(draw: Draw, plan: dict[str, Any]) -> str:
    node = _node(draw, plan)
    key = draw(st.sampled_from(node.fields))
    on_step = not node.top and "subplans" not in node.data
    if on_step and key in ("max_parallel", "failure_mode") and draw(st.booleans()):
        node.data[key] = 2 if key == "max_parallel" else "fail_fast"  # a group's setting
        return f"{key} on a step"
    node.data[key] = _bad_value(draw, key, node)
    return f"{key} = {node.data[key]!r}"[:120]


def missing_key(draw: Draw, plan: dict[str, Any]) -> str:
    node = _node(draw, plan)
    if node.top:
        key = draw(st.sampled_from(["name", "subplans"]))
        node.data.pop(key, None)
        return f"no top-level {key}"
    choice = draw(st.sampled_from(["name", "kind", "two kinds"]))
    kinds = {"run": "echo", "call": "stepkit:noop", "subplans": [{"name": "x", "run": "x"}]}
    if choice == "name":
        node.data.pop("name", None)
    elif choice == "kind":
        for key in kinds:
            node.data.pop(key, None)
    else:
        order = draw(st.permutations(list(kinds)))
        while sum(node.data.get(k) is not None for k in kinds) < 2:
            extra = next(k for k in order if node.data.get(k) is None)
            node.data[extra] = kinds[extra]
    return f"a subplan's {choice}" + (" (present)" if choice == "two kinds" else " (missing)")


TYPOS = ["nmae", "Name", "NAME", "subplan", "sub_plans", "Subplans", "max-parallel"]
TYPOS += ["maxParallel", "max_paralel", "failure-mode", "failuremode", "timeout_s", "retry"]
TYPOS += ["lock", "need", "cmd", "comand", "runs", "RUN", "args", "depends_on", "environment"]
TYPOS += ["working_dir", "\uff4e\uff41\uff4d\uff45", "with_ "]


def unknown_key(draw: Draw, plan: dict[str, Any]) -> str:
    node = _node(draw, plan)
    allowed = {*node.fields, "with_"}
    elsewhere = sorted(set(SUB_FIELDS if node.top else TOP_FIELDS) - allowed)
    text_keys = st.sampled_from(TYPOS + elsewhere) | st.text(max_size=30)
    odd_keys = st.integers() | st.booleans() | st.none() | st.floats(allow_nan=False)
    key = draw(text_keys.filter(lambda k: k not in allowed) | odd_keys)
    node.data[key] = draw(st.sampled_from([1, "x", None, [], {}, True]))
    return f"unknown key {key!r}"[:120]


def _digits(n: int) -> str:
    return "9" + "0" * (n - 1)


def huge_number(draw: Draw, plan: dict[str, Any]) -> str:
    node = _node(draw, plan)
    n = draw(st.sampled_from([20, 40, 310, 400, 1000, 4300, 4301, 5000, 50_000]))
    sign = draw(st.sampled_from(["", "-", "+"]))
    keys = ["name", "max_parallel", "failure_mode", "cwd", "timeout"]
    keys += ["version", "project"] if node.top else ["call", "retries", "locks", "needs", "env"]
    key = draw(st.sampled_from(keys))
    if key == "timeout":  # a large positive number is a fine timeout: only past float's range
        text = draw(st.sampled_from(["-" + _digits(n), _digits(max(n, 310)), ".inf", ".nan"]))
    elif key == "env":  # any number is a fine value: only one too long to read at all
        text = _digits(max(n, 4301))
    else:
        forms = [sign + _digits(n), f"{sign}1.0e+{n}", f"{sign}{_digits(n)}.5", f"0x{'f' * n}"]
        forms += [f"0{'7' * n}", f"0b{'1' * n}", "1_" * n + "0", ".inf", "-.inf", ".nan"]
        text = draw(st.sampled_from(forms))
    value: Any = Raw(text)
    node.data[key] = (
        [value] if key in ("locks", "needs") else {"N": value} if key == "env" else value
    )
    return f"{key} = {text[:30]}... ({len(text)} characters)"


def _nested(draw: Draw, depth: int) -> str:
    if draw(st.booleans()):
        return "[" * depth + "x" + "]" * depth
    return "{a: " * depth + "1" + "}" * depth


def deep_nesting(draw: Draw, plan: dict[str, Any]) -> str:
    choice = draw(st.sampled_from(["scalar field", "any field", "deep groups", "bad leaf"]))
    if choice in ("scalar field", "any field"):
        node = _node(draw, plan)
        if choice == "scalar field":  # a list or mapping is wrong here at any depth
            keys = ["name", "max_parallel", "failure_mode", "timeout", "cwd"]
            keys += ["version", "project"] if node.top else ["call", "retries"]
            key, depth = draw(st.sampled_from(keys)), draw(st.integers(1, 300))
        else:  # deeper than any plan may be (100 levels)
            key, depth = draw(st.sampled_from(node.fields)), draw(st.integers(101, 400))
        node.data[key] = Raw(_nested(draw, depth))
        return f"{key} nested {depth} deep"
    levels = draw(st.integers(51, 150) if choice == "deep groups" else st.integers(5, 45))
    inner = (
        f"{{name: leaf, run: touch {MARKER}}}" if choice == "deep groups" else "{name: l, run: 5}"
    )
    for level in range(levels):
        inner = f"{{name: g{level}, subplans: [{inner}]}}"
    if isinstance(plan.get("subplans"), list) and plan["subplans"]:
        plan["subplans"][0] = Raw(inner)
    else:
        plan["subplans"] = [Raw(inner)]
    return f"{levels} nested groups" + (", a bad leaf" if choice == "bad leaf" else "")


def cycle(draw: Draw, plan: dict[str, Any]) -> str:
    choice = draw(st.sampled_from(["needs", "needs", "self", "alias"]))
    if choice == "alias":
        node = _node(draw, plan)
        key = draw(st.sampled_from(node.fields))
        text = draw(st.sampled_from(["&loop [x, *loop]", "&loop {a: *loop}", "&loop [[*loop]]"]))
        node.data[key] = Raw(text)
        return f"{key} contains itself: {text}"
    groups = [n.data["subplans"] for n in _nodes(plan) if isinstance(n.data.get("subplans"), list)]
    if not groups:
        plan["subplans"] = groups = [[]]
    group = draw(st.sampled_from(groups))
    named = [c for c in group if isinstance(c, dict) and isinstance(c.get("name"), str)]
    if choice == "self" and named:
        child = draw(st.sampled_from(named))
        needs = child.get("needs")
        child["needs"] = [*needs, child["name"]] if isinstance(needs, list) else [child["name"]]
        return f"{child['name']} needs itself"
    while len(named) < 2:
        named.append({"name": f"extra-sibling-{len(named)}", "run": f"touch {MARKER}"})
        group.append(named[-1])
    members = draw(st.permutations(named))[: draw(st.integers(2, len(named)))]
    for i, member in enumerate(members):
        member["needs"] = [members[(i + 1) % len(members)]["name"]]
    return "needs cycle " + " -> ".join(m["name"] for m in members)


NON_ASCII = st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), min_size=1)
LOOKALIKE_MODES = ["f\u0430il_fast", "fail_fast\u200b", "\uff46\uff41\uff49\uff4c_fast", "\ufb01"]
LOOKALIKE_NUMBERS = ["\uff13", "\u0663", "\u2476", "\u2162", "\u0969", "3\u0301"]


def unicode(draw: Draw, plan: dict[str, Any]) -> str:
    node = _node(draw, plan)
    choice = draw(st.sampled_from(["name", "key", "failure_mode", "number", "surrogate"]))
    if choice == "name":
        base, at = draw(NAMES), draw(st.integers(0, 10))
        value = base[:at] + draw(NON_ASCII) + base[at:]
        key = draw(st.sampled_from(["name", "project"] if node.top else ["name", "locks"]))
        node.data[key] = [value] if key == "locks" else value
        return f"{key} = {value!r}"
    if choice == "key":
        key = draw(NON_ASCII)
        node.data[key] = "x"
        return f"unknown key {key!r}"
    if choice in ("failure_mode", "number"):
        key = draw(st.sampled_from(["max_parallel", "timeout"])) if choice == "number" else choice
        node.data[key] = draw(
            st.sampled_from(LOOKALIKE_MODES if choice != "number" else LOOKALIKE_NUMBERS)
        )
        return f"{key} = {node.data[key]!r}"
    surrogate = chr(draw(st.integers(0xD800, 0xDFFF)))
    node.data["cwd" if node.top else "env"] = "d" + surrogate if node.top else {"A": surrogate}
    return f"a lone surrogate U+{ord(surrogate):04X}"


TAGGED = ["!!float abc", '!!int ""', "!!int 0x", "!!bool maybe", "!!timestamp nope"]
TAGGED += ["!!timestamp 2001-02-30", "!!map [1]", "!!seq {a: 1}", "!!str [a]", "!!omap [a]"]
TAGGED += ["!!set {a, b}", "!!python/name:os.system", "!foo bar", "!<tag:x.org,2000:x> y"]
TAGGED += [f"!!python/object/apply:os.system ['touch {MARKER}']", "!!merge x"]
TAGGED += [f"!!python/object/apply:subprocess.check_call [[touch, {MARKER}]]"]


def yaml_tag(draw: Draw, plan: dict[str, Any]) -> str:
    node = _node(draw, plan)
    key = draw(st.sampled_from(node.fields))
    text = draw(st.sampled_from(TAGGED))
    node.data[key] = Raw(text)
    return f"{key} = {text}"


DATA_BREAKERS = {
    "wrong_type": wrong_type,
    "missing_key": missing_key,
    "unknown_key": unknown_key,
    "huge_number": huge_number,
    "deep_nesting": deep_nesting,
    "cycle": cycle,
    "unicode": unicode,
    "yaml_tag": yaml_tag,
}


# --------------------------------------------------------------------------- text and bytes


def render(draw: Draw, plan: dict[str, Any], style: str | None = None) -> bytes:
    """YAML (block or flow style) or JSON text of a plan, with `Raw` values as written."""
    raws: dict[str, str] = {}

    def tokens(value: Any) -> Any:
        if isinstance(value, Raw):
            token = f"RAWTOKEN{len(raws)}X"
            raws[token] = value.text
            return token
        if isinstance(value, dict):
            return {k: tokens(v) for k, v in value.items()}
        if isinstance(value, list):
            return [tokens(v) for v in value]
        return value

    data = tokens(plan)
    styles = ["block", "flow", "json"] if _json_safe(data) else ["block", "flow"]
    style = style or draw(st.sampled_from(styles))
    if style == "json":
        text = json.dumps(data, indent=draw(st.sampled_from([None, 2])))
        raws = {json.dumps(token): raw for token, raw in raws.items()}
    else:
        unicode, width = draw(st.booleans()), draw(st.sampled_from([80, 1 << 20]))
        flow = style == "flow"
        text = yaml.safe_dump(
            data, sort_keys=False, allow_unicode=unicode, default_flow_style=flow, width=width
        )
    for token, raw in raws.items():
        text = text.replace(token, raw)
    if style == "block" and draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    return text.encode("utf-8", "surrogatepass")


def _json_safe(value: Any) -> bool:
    """Whether JSON keeps the value as it is (JSON has no int keys, no NaN, no infinity)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_safe(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_json_safe(v) for v in value)
    return math.isfinite(value) if isinstance(value, float) else True


#: Each breaks any document, at its end or (most) at its start; `extra` is no key anyway.
SYNTAX_ERRORS = ["\tname: tabbed\n", "extra: [1, 2\n", 'extra: "unterminated\n']
SYNTAX_ERRORS += ["name: duplicate\n", "extra: *nowhere\n", "extra: a: b\n", "<<: 5\n"]
SYNTAX_ERRORS += ["? [a, b]\n: unhashable\n", "extra: @reserved\n", "extra: `backtick\n"]
SYNTAX_ERRORS += ["extra: {a: 1\n", "extra: 'a' 'b'\n", "---\nname: second\nsubplans: []\n"]


def yaml_syntax(draw: Draw, plan: dict[str, Any]) -> tuple[bytes, str]:
    text = render(draw, plan, "block").decode("utf-8", "surrogatepass")
    snippet = draw(st.sampled_from(SYNTAX_ERRORS))
    text = (
        snippet + text if draw(st.booleans()) and not snippet.startswith("---") else text + snippet
    )
    if draw(st.booleans()):
        text = "%YAML 2.0\n---\n" + text
    return text.encode("utf-8", "surrogatepass"), f"broken YAML: {snippet!r}"


#: Characters YAML does not allow anywhere in a document.
FORBIDDEN = [chr(c) for c in (*range(1, 9), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
FORBIDDEN += [chr(c) for c in (*range(0x80, 0x85), *range(0x86, 0xA0), 0xFFFE, 0xFFFF)]
HEADERS = [b"\x89PNG\r\n\x1a\n\x00\x00", b"\x7fELF\x02\x01\x01\x00", b"SQLite format 3\x00"]
HEADERS += [b"PK\x03\x04\x14\x00", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"]
BAD_BYTES = [b"\x80", b"\xbf", b"\xc0", b"\xc1", b"\xf5", b"\xfe", b"\xff"]
BINARY_KINDS = ["random", "nul", "bad utf-8", "cut utf-8", "forbidden", "header", "gzip"]
BINARY_KINDS += ["latin-1", "utf-16", "utf-32"]


def binary(draw: Draw, plan: dict[str, Any]) -> tuple[bytes, str]:
    data = render(draw, plan, "block")
    text = data.decode("utf-8", "surrogatepass")
    at = draw(st.integers(0, len(text)))  # a character position: never inside a UTF-8 sequence
    head = len(text[:at].encode("utf-8", "surrogatepass"))
    kind = draw(st.sampled_from(BINARY_KINDS))
    if kind == "random":
        return draw(st.binary(min_size=1, max_size=3000)), "random bytes"
    if kind == "nul":
        return data[:head] + b"\x00" + data[head:], f"a NUL byte at {head}"
    if kind == "bad utf-8":  # a byte UTF-8 never has there (at a character boundary)
        byte = draw(st.sampled_from(BAD_BYTES))
        return data[:head] + byte + data[head:], f"byte {byte!r} at {head}"
    if kind == "cut utf-8":
        return data + draw(st.sampled_from([b"\xe2\x82", b"\xc3", b"\xf0\x9f\x99"])), kind
    if kind == "forbidden":
        char = draw(st.sampled_from(FORBIDDEN))
        return (text[:at] + char + text[at:]).encode("utf-8", "surrogatepass"), f"{char!r}"
    if kind == "header":
        return draw(st.sampled_from(HEADERS)) + data, "a binary file's header"
    if kind == "gzip":
        return gzip.compress(data, mtime=0), "gzip"
    if kind == "latin-1":  # é is one byte in Latin-1, which UTF-8 never has alone
        return ("# \u00e9\n" + text).encode("latin-1", "replace"), "Latin-1 text"
    encoding = draw(st.sampled_from([kind, f"{kind}-le", f"{kind}-be"]))
    return text.encode(encoding, "surrogatepass"), f"{encoding} text"


NOT_PLANS = [b"", b"   \n\n", b"# only a comment\n", b"null\n", b"~\n", b"- a\n- b\n", b"42\n"]
NOT_PLANS += [b"just words\n", b"[]\n", b"{}\n", b"true\n", b'"quoted"\n', b"---\n", b"...\n"]
NOT_PLANS += [b"--- |\n  text\n", b"\xef\xbb\xbf\n", b"name: only-a-name\n"]
NOT_PLANS += [b"subplans: [{name: a, run: touch fuzz-marker}]\n"]


def not_a_plan(draw: Draw) -> tuple[bytes | None, str]:
    choice = draw(st.sampled_from(["content", "content", "missing file", "a folder"]))
    if choice != "content":
        return None, choice
    data = draw(st.sampled_from(NOT_PLANS))
    return data, f"content {data[:30]!r}"


# --------------------------------------------------------------------------- cases

PLAN_KINDS = [*DATA_BREAKERS, "yaml_syntax", "binary", "not_a_plan", "several"]
RUN_FLAGS = [["--quiet"], ["--max-parallel", "3"], ["--failure-mode", "continue_on_error"]]
RUN_FLAGS += [["--events", "events.jsonl"], ["--lock-wait", "0.5"]]


@st.composite
def plan_cases(draw: Draw, kind: str) -> Case:
    """A malformed plan document of one kind, given to `run` (mostly), `validate` or `submit`."""
    plan = draw(valid_plans())
    if kind in DATA_BREAKERS:
        note = DATA_BREAKERS[kind](draw, plan)
    elif kind == "several":
        names = draw(st.lists(st.sampled_from(sorted(DATA_BREAKERS)), min_size=2, max_size=4))
        note = "; ".join(DATA_BREAKERS[name](draw, plan) for name in names)
    content: bytes | None
    if kind == "yaml_syntax":
        content, note = yaml_syntax(draw, plan)
    elif kind == "binary":
        content, note = binary(draw, plan)
    elif kind == "not_a_plan":
        content, note = not_a_plan(draw)
    else:
        content = render(draw, plan)
    plan_file = draw(st.sampled_from(PLAN_FILES))
    command = draw(st.sampled_from(["run"] * 8 + ["validate", "submit"]))
    flags = []
    if command == "run":
        for chosen in draw(st.lists(st.sampled_from(RUN_FLAGS), max_size=2, unique_by=tuple)):
            flags += chosen
    return Case(
        category=f"plan/{kind}",
        argv=(command, plan_file, *flags),
        files=((plan_file, content),) if content is not None else (),
        folders=(plan_file,) if note == "a folder" else (),
        expect=(plan_file,),
        note=note,
    )
