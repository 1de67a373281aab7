"""YAML text -> plain data, with PyYAML hardened for files nobody vetted: duplicate keys, deep
nesting, values their tag does not fit, alias bombs and self-containing values are problems
with a line and column, never a traceback or a hang.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable
from datetime import date
from typing import Any, NoReturn

import yaml
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, ScalarNode

from engine.planfile.problems import fail, show

MAX_DEPTH = 100  # nesting levels of mappings and lists
MAX_VALUES = 1_000_000  # values after expanding YAML aliases ("billion laughs")


class _SourceError(Exception):
    """A problem found while reading YAML, at a place in the text."""

    def __init__(self, message: str, mark: Mark | None) -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark


def _at(mark: Mark | None) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


class _PlanLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, deep nesting and values their tag does not fit
    (`!!float abc`), with the line where they are."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                self.check_event(yaml.NodeEvent)  # makes `current_event` the next one
                mark: Mark = self.current_event.start_mark
                raise _SourceError(f"nested deeper than {MAX_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError):
            # An explicit tag on a value it does not fit: `!!float abc`, `!!bool maybe`, `!!int ""`.
            tag = str(node.tag).removeprefix("tag:yaml.org,2002:")
            shown = show(node.value) if isinstance(node, ScalarNode) else "this value"
            raise _SourceError(f"{shown} is not a valid !!{tag} value", node.start_mark) from None

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        if not isinstance(node, MappingNode):  # `!!map [1]`: the base class says what is wrong
            return super().construct_mapping(node, deep=deep)
        first: dict[Any, Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` may override keys on purpose
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                break  # the base class reports the unhashable key
            if key in first:
                raise _SourceError(
                    f"duplicate key {show(key)} (first at line {first[key].line + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            limit = sys.get_int_max_str_digits()
            digits = sum(c.isdigit() for c in str(node.value))
            if not 0 < limit < digits:
                raise  # not a number at all (`!!int abc`): construct_object says so
            raise _SourceError(
                f"number with {digits} digits is too large", node.start_mark
            ) from None

    def construct_yaml_timestamp(self, node: ScalarNode) -> date:
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as exc:
            raise _SourceError(
                f"{node.value!r} looks like a date but is not one ({exc}); quote it",
                node.start_mark,
            ) from None

    def construct_yaml_set(self, node: Node) -> NoReturn:
        # pydantic would take a set for a list: an argv, `needs` or `locks` in no defined order.
        raise _SourceError("a !!set has no order: write a list instead", node.start_mark)


_PlanLoader.add_constructor("tag:yaml.org,2002:int", _PlanLoader.construct_yaml_int)
_PlanLoader.add_constructor("tag:yaml.org,2002:set", _PlanLoader.construct_yaml_set)
_PlanLoader.add_constructor("tag:yaml.org,2002:timestamp", _PlanLoader.construct_yaml_timestamp)


def load_yaml(text: str, source: str) -> object:
    loader: _PlanLoader | None = None
    try:
        loader = _PlanLoader(text)
        return loader.get_single_data()
    except _SourceError as exc:
        fail(source, f"{_at(exc.mark)}{exc.message}")
    except yaml.composer.ComposerError as exc:
        if exc.problem == "but found another document":
            fail(
                source,
                f"{_at(exc.problem_mark)}a second YAML document starts here; a plan file holds one",
            )
        fail(source, f"{_at(exc.problem_mark)}not valid YAML: {_yaml_reason(exc)}")
    except yaml.MarkedYAMLError as exc:
        fail(source, f"{_at(exc.problem_mark)}not valid YAML: {_yaml_reason(exc)}")
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        fail(source, f"line {line}, column {column}: character U+{char:04X} is not allowed")
    except yaml.YAMLError as exc:
        fail(source, f"not valid YAML: {exc}")
    except RecursionError:  # e.g. thousands of chained `<<` merges
        fail(source, "is nested too deeply to read")
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    reason = exc.problem or "syntax error"
    if "\\t" in reason or "\t" in reason:
        reason += " (indent with spaces; YAML does not allow tabs)"
    if exc.context:
        where = exc.context_mark
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        reason += f" ({exc.context}{at})"
    return reason


def kind_of(value: object) -> str:
    if isinstance(value, list | tuple):
        return "a list"
    return show(value)


def _children(value: object) -> list[object] | None:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, list | tuple | set | frozenset):
        return list(value)
    return None


def shape_problem(data: object) -> str | None:
    """Depth, size after expanding shared values, and cycles; iterative and linear."""
    done: dict[int, tuple[int, int]] = {}  # id -> (depth, values), for values reached twice
    active: set[int] = {id(data)}
    stack: list[tuple[object, list[object], int, list[int]]] = []
    first = _children(data)
    if first is None:
        return None
    stack.append((data, first, 0, [1, 1]))
    while stack:
        node, kids, pos, acc = stack[-1]
        if pos < len(kids):
            stack[-1] = (node, kids, pos + 1, acc)
            kid = kids[pos]
            grandkids = _children(kid)
            if grandkids is None:
                acc[1] += 1
            elif id(kid) in active:
                return "contains a value that contains itself (a YAML alias inside its anchor)"
            elif id(kid) in done:
                depth, values = done[id(kid)]
                acc[0] = max(acc[0], depth + 1)
                acc[1] += values
            elif len(stack) >= MAX_DEPTH:
                return f"is nested deeper than {MAX_DEPTH} levels"
            else:
                active.add(id(kid))
                stack.append((kid, grandkids, 0, [1, 1]))
            continue
        stack.pop()
        active.discard(id(node))
        done[id(node)] = (acc[0], acc[1])
        if acc[1] > MAX_VALUES:
            return f"is too large: more than {MAX_VALUES:,} values once YAML aliases are expanded"
        if stack:
            parent = stack[-1][3]
            parent[0] = max(parent[0], acc[0] + 1)
            parent[1] += acc[1]
    return None
