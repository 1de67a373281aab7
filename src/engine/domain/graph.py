"""The `needs` graph of one group: pure functions, no I/O.

Used by plan validation (unknown names, cycles) and by the dispatcher (who depends on whom).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def find_cycle(needs: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Return one cycle as a closed list of names (``[a, b, a]``), or None for a DAG.

    Edges to names that are not keys are ignored (reported elsewhere as unknown).
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(needs, white)
    stack_path: list[str] = []

    for root in needs:
        if colour[root] != white:
            continue
        # Iterative DFS so that a deep chain cannot overflow the interpreter stack.
        iters = [iter(needs[root])]
        colour[root] = grey
        stack_path.append(root)
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                iters.pop()
                colour[stack_path.pop()] = black
                continue
            if nxt not in colour:
                continue
            if colour[nxt] == grey:
                start = stack_path.index(nxt)
                return [*stack_path[start:], nxt]
            if colour[nxt] == white:
                colour[nxt] = grey
                stack_path.append(nxt)
                iters.append(iter(needs[nxt]))
    return None


def dependents(needs: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Invert the edges: for each name, the names that need it."""
    out: dict[str, list[str]] = {name: [] for name in needs}
    for name, deps in needs.items():
        for dep in deps:
            if dep in out:
                out[dep].append(name)
    return out
