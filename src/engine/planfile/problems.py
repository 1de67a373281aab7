"""What is wrong with plan data that does not validate, as `PlanProblem`s keyed by their place.

Two passes: pydantic's errors translated (what is allowed, described from the models' own JSON
schemas; what was found, shown short), and the model's structural checks (sibling names,
`needs`, cycles) run over the raw data, which pydantic never reaches once a field is wrong.
Each problem carries its position in the file (indexes of keys and items), so they are reported
in file order. Also what every part of plan-file checking shares: `fail` and `show`.
"""

from __future__ import annotations

import difflib
import re
from datetime import date
from functools import cache
from itertools import islice
from typing import Any, NamedTuple, NoReturn

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from engine.domain.graph import find_cycle
from engine.domain.plan import (
    CALL_PATTERN,
    NAME_PATTERN,
    Plan,
    PlanProblem,
    Subplan,
    listed,
    unknown_sibling,
)
from engine.errors import PlanValidationError

_RANGE_ERRORS = frozenset(
    {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}
)
_EMPTY_ERRORS = frozenset({"too_short", "string_too_short"})
LAST: tuple[int, ...] = (1 << 62,)  # sort key of a problem with no known position


class Located(NamedTuple):
    """A problem and its position in the file (indexes of keys and items, in file order)."""

    key: tuple[int, ...]
    problem: PlanProblem


def fail(source: str, message: str) -> NoReturn:
    """Stop with one problem of the file as a whole (it cannot be read, is not YAML, ...)."""
    raise PlanValidationError(source, [PlanProblem("", None, message)])


# --------------------------------------------------------------------------- pydantic -> problems


@cache
def _schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON schemas of Plan and Subplan: what is allowed, described from the models themselves."""
    plan = Plan.model_json_schema(by_alias=True)
    return plan, plan["$defs"]["Subplan"]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = _schemas()[0]["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:
        branches = [_resolve(b) for b in schema["anyOf"] if b.get("type") != "null"]
        return branches[0] if len(branches) == 1 else {"anyOf": branches}
    return schema


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _describe(schema: dict[str, Any]) -> tuple[str, str]:
    """(what it must be, its range): ("an integer", "between 1 and 32")."""
    if "anyOf" in schema:
        return " or ".join(" ".join(filter(None, _describe(b))) for b in schema["anyOf"]), ""
    if "const" in schema:
        return show(schema["const"]), ""
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"]), ""
    kind = schema.get("type")
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        above = schema.get("exclusiveMinimum")
        if low is not None and high is not None:
            limits = f"between {low} and {high}"
        elif above is not None:
            limits = f"greater than {above}"
        else:
            limits = f"at least {low}" if low is not None else ""
        return ("an integer" if kind == "integer" else "a number"), limits
    if kind == "string":
        pattern = schema.get("pattern")
        if pattern == NAME_PATTERN:
            return "1 to 64 characters, each a letter, digit, _, . or -", ""
        if pattern == CALL_PATTERN:
            return "'module:attribute' (e.g. shop.reports:build)", ""
        if pattern:
            return f"a string matching {pattern}", ""
        return ("a non-empty string" if schema.get("minLength") else "a string"), ""
    if kind == "array":
        noun = _plural(_resolve(schema.get("items", {})))
        return (
            f"a non-empty list of {noun}" if schema.get("minItems") else f"a list of {noun}"
        ), ""
    if kind == "object":
        if "properties" in schema:
            return "a mapping (a subplan with a name and one of run, call, subplans)", ""
        values = schema.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"a mapping of names to {_plural(_resolve(values))}", ""
        return "a mapping", ""
    return "a valid value", ""


def _plural(schema: dict[str, Any]) -> str:
    if schema.get("type") == "string":
        return "names" if schema.get("pattern") == NAME_PATTERN else "strings"
    return "subplans" if "properties" in schema else "values"


def translate(exc: ValidationError, data: dict[Any, Any]) -> list[Located]:
    index: dict[int, dict[Any, int]] = {}
    return [_problem_of(error, data, index) for error in exc.errors(include_url=False)]


def _key_index(container: object, step: object, index: dict[int, dict[Any, int]]) -> int | None:
    """Position of a key or item in its container (file order), if it is there."""
    if isinstance(container, dict):
        positions = index.get(id(container))
        if positions is None:
            positions = index[id(container)] = {k: i for i, k in enumerate(container)}
        return positions.get(step)
    if isinstance(container, list | tuple) and isinstance(step, int) and step < len(container):
        return step
    return None


def _step(container: object, step: object) -> tuple[bool, object]:
    if isinstance(container, dict) and step in container:
        return True, container[step]
    if isinstance(container, list | tuple) and isinstance(step, int) and step < len(container):
        return True, container[step]
    return False, None


def _segment(child: object, position: int) -> str:
    name = child.get("name") if isinstance(child, dict) else None
    if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):
        return name
    return f"subplans[{position}]"


def _problem_of(
    error: ErrorDetails, data: dict[Any, Any], index: dict[int, dict[Any, int]]
) -> Located:
    loc, kind = error["loc"], error["type"]
    node: object = data
    model: type[BaseModel] = Plan
    schema = _schemas()[0]
    parts: list[str] = []
    key: list[int] = []
    at = 0
    # Walk down through subplans while more of the location follows the subplan's index.
    while at + 2 < len(loc) and loc[at] == "subplans" and isinstance(loc[at + 1], int):
        for step in loc[at : at + 2]:
            position = _key_index(node, step, index)
            key.extend([position] if position is not None else [])
            node = _step(node, step)[1]
        parts.append(_segment(node, int(loc[at + 1])))
        model, schema, at = Subplan, _schemas()[1], at + 2
    path, rest = "/".join(parts), loc[at:]

    if kind in ("extra_forbidden", "invalid_key"):
        unknown = rest[-1] if rest else "?"
        position = _key_index(node, unknown, index)
        key.extend([position] if position is not None else [])
        return Located(tuple(key), PlanProblem(path, None, _unknown_key(unknown, model)))

    field = str(rest[0]) if rest else "?"
    if kind == "missing":
        return Located(tuple(key), PlanProblem(path, field, "is required"))

    # Follow the rest of the location into the field's value (list items, mapping values).
    found, value = True, error["input"]
    field_schema = _resolve(schema["properties"].get(field, {}))
    label, union = field, False
    on_key = len(rest) >= 3 and rest[-1] == "[key]"  # (field, ..., the key, "[key]")
    for depth, step in enumerate(rest[:-2] if on_key else rest):
        if depth > 0:
            if "anyOf" in field_schema:
                union = True
                break
            nested = field_schema.get("items") if isinstance(step, int) else None
            nested = nested or field_schema.get("additionalProperties")
            field_schema = _resolve(nested) if isinstance(nested, dict) else {}
            label += f"[{step}]" if isinstance(step, int) else _dotted(str(step))
        position = _key_index(node, step, index) if found else None
        key.extend([position] if position is not None else [])
        found, node = _step(node, step) if found else (False, None)
    if found and not on_key:
        value = node
    if "anyOf" in field_schema:
        union = True

    if on_key and kind == "env_name":
        wanted = "variable names (non-empty text without = or NUL)"
        message = f"keys must be {wanted}, got {show(value)}"
    elif on_key:
        message = f"keys must be strings, got {show(value)}"
    elif kind == "nul_character":
        message = f"must not contain a NUL character (\\0), got {show(value)}"
    elif kind == "string_unicode":
        message = f"must be valid Unicode text (no lone surrogates), got {show(value)}"
    elif kind in _EMPTY_ERRORS and not union:
        message = "must not be empty"
    else:
        what, limits = _describe(field_schema)
        if field == "env" and label != field:
            what = "a string or a number"
        if kind == "finite_number" and not union:
            message = f"must be a finite number {limits}".rstrip() + f", got {show(value)}"
        elif kind in _RANGE_ERRORS and limits and not union:
            message = f"must be {limits}, got {show(value)}"
        else:
            message = f"must be {' '.join(filter(None, (what, limits)))}, got {show(value)}"
        message += _hint(field_schema, value)
    return Located(tuple(key), PlanProblem(path, label, message))


def _dotted(key: str) -> str:
    return f".{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"[{key!r}]"


def _hint(schema: dict[str, Any], value: object) -> str:
    if "enum" in schema and isinstance(value, str):
        close = difflib.get_close_matches(value, [str(v) for v in schema["enum"]], n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""
    wants_text = schema.get("type") == "string" or any(
        b.get("type") == "string" for b in schema.get("anyOf", [])
    )
    if wants_text and isinstance(value, bool | int | float | date):
        return " (quote it to make it a string)"
    return ""


def _unknown_key(key: object, model: type[BaseModel]) -> str:
    allowed = _allowed_keys(model)
    if not isinstance(key, str):
        return f"unknown key {show(key)}; keys are names: {', '.join(allowed)}"
    close = difflib.get_close_matches(key.lower(), allowed, n=1) if len(key) <= 100 else []
    if close:
        return f"unknown key {show(key)} (did you mean {close[0]!r}?)"
    other = Subplan if model is Plan else Plan
    if key in _allowed_keys(other):
        where = "a subplan" if other is Subplan else "the top level of the plan"
        return f"unknown key {show(key)} here (only {where} has it)"
    return f"unknown key {show(key)} (allowed: {', '.join(allowed)})"


def show(value: object, depth: int = 0) -> str:
    """A short, YAML-flavoured rendering of a found value; bounded whatever the value is."""
    text = _show_inner(value, depth)
    return text if len(text) <= 80 else text[:77] + "..."


def _show_inner(value: object, depth: int) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 200:
            return f"a number with about {int(value.bit_length() * 0.30103) + 1} digits"
        return str(value)
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:60]!r}... ({len(value)} characters)"
    if isinstance(value, float | date):
        return str(value)
    if isinstance(value, dict):
        if depth >= 2:
            return "{...}"
        items = [
            f"{_show_inner(k, 2)}: {_show_inner(v, depth + 1)}" for k, v in islice(value.items(), 4)
        ]
        return "{" + ", ".join(items) + (", ..." if len(value) > 4 else "") + "}"
    if isinstance(value, list | tuple):
        if depth >= 2:
            return "[...]"
        items = [_show_inner(v, depth + 1) for v in islice(value, 4)]
        return "[" + ", ".join(items) + (", ..." if len(value) > 4 else "") + "]"
    return f"a {type(value).__name__}"


# --------------------------------------------------------------------------- structure of raw data


def _get(child: dict[Any, Any], field: str) -> object:
    """A subplan field by alias or by name, as the model reads it (populate_by_name)."""
    alias = Subplan.model_fields[field].alias
    if alias is not None and child.get(alias) is not None:
        return child.get(alias)
    return child.get(field)


def structure(data: dict[Any, Any]) -> list[Located]:
    """The model's structural checks (same messages) over raw data that failed field checks."""
    out: list[Located] = []
    index: dict[int, dict[Any, int]] = {}
    children = data.get("subplans")
    if isinstance(children, list):
        base = _key_index(data, "subplans", index)
        _structure_group(children, "", (base if base is not None else 0,), out, index)
    return out


def _structure_group(
    children: list[Any],
    prefix: str,
    base: tuple[int, ...],
    out: list[Located],
    index: dict[int, dict[Any, int]],
) -> None:
    members = [(i, c) for i, c in enumerate(children) if isinstance(c, dict)]
    seen: set[str] = set()
    needs_of: dict[str, list[str]] = {}

    def add(i: int, child: dict[Any, Any], field: str | None, message: str) -> None:
        field_position = _key_index(child, field, index) if field else None
        where = (*base, i, *([field_position] if field_position is not None else []))
        out.append(Located(where, PlanProblem(prefix + _segment(child, i), field, message)))

    for i, child in members:
        name = child.get("name")
        if isinstance(name, str) and name in seen:
            add(i, child, "name", "is used by more than one sibling")
        if isinstance(name, str):
            seen.add(name)
        kinds = [k for k in ("run", "call", "subplans") if child.get(k) is not None]
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none of them"
            add(i, child, None, f"needs exactly one of run, call, subplans; found {found}")
        if _get(child, "with_") is not None and child.get("call") is None:
            add(i, child, "with", "is only allowed together with call")
        subplans = child.get("subplans")
        if subplans is None:
            for field in ("max_parallel", "failure_mode"):
                if child.get(field) is not None:
                    add(i, child, field, "only applies to a group (a subplan with subplans)")
        else:
            if isinstance(subplans, list) and not subplans:
                add(i, child, "subplans", "must not be empty")
            retries = child.get("retries")
            if isinstance(retries, int) and not isinstance(retries, bool) and retries:
                add(i, child, "retries", "only applies to run and call steps, not groups")
        raw_needs = child.get("needs")
        needs = [d for d in raw_needs if isinstance(d, str)] if isinstance(raw_needs, list) else []
        if len(set(needs)) != len(needs):
            add(i, child, "needs", "lists a sibling more than once")
        if isinstance(name, str):
            if name in needs:
                add(i, child, "needs", "names the subplan itself")
            needs_of[name] = [d for d in needs if d != name]
    for i, child in members:
        raw_needs = child.get("needs")
        if not isinstance(raw_needs, list):
            continue
        for dep in raw_needs:
            if isinstance(dep, str) and dep not in seen:
                own = child.get("name")
                others = [_shown(n) for n in sorted(seen) if n != own]
                add(i, child, "needs", unknown_sibling(dep, others))
    cycle = find_cycle(needs_of)
    if cycle is not None:
        loop = listed([_shown(n) for n in cycle], " -> ")
        where = PlanProblem(prefix.rstrip("/"), "needs", f"form a cycle: {loop}")
        out.append(Located((*base, len(children)), where))
    for i, child in members:
        grandchildren = child.get("subplans")
        if isinstance(grandchildren, list) and grandchildren:
            position = _key_index(child, "subplans", index)
            inner = (*base, i, position if position is not None else 0)
            _structure_group(grandchildren, f"{prefix}{_segment(child, i)}/", inner, out, index)


def _shown(name: str) -> str:
    """A name as it may appear in a message: as is when valid, else quoted and escaped (a name
    holding a control character must not break the one-problem-per-line output)."""
    return name if re.fullmatch(NAME_PATTERN, name) else show(name)
