"""What `run` shows: a live rich tree on a terminal, plain lines otherwise, and the summary.

The views consume events only; they never look inside the dispatcher.
"""

from __future__ import annotations

from types import TracebackType
from typing import IO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from engine.domain.events import Event, RunStateChanged, SubplanAttemptFailed, SubplanStateChanged
from engine.domain.plan import Plan
from engine.domain.results import RunResult
from engine.domain.states import RunState, SubplanState

STYLE: dict[str, str] = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "skipped": "magenta",
}
ICON: dict[str, str] = {
    "pending": "·",
    "running": "▶",
    "completed": "✔",
    "failed": "✘",
    "cancelled": "■",
    "skipped": "↷",
}


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:04.1f}s"


class PlainView:
    """One line per transition: for logs and CI."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __enter__(self) -> PlainView:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def __call__(self, event: Event) -> None:
        line = describe(event)
        if line:
            print(line, file=self.out, flush=True)


def describe(event: Event) -> str | None:
    stamp = event.at.strftime("%H:%M:%S")
    if isinstance(event, SubplanStateChanged):
        if event.to is SubplanState.RUNNING:
            return f"{stamp} {event.path}: running"
        text = f"{stamp} {event.path}: {event.to.value}"
        if event.duration is not None:
            text += f" in {_fmt_duration(event.duration)}"
        if event.error and event.to is not SubplanState.CANCELLED:
            text += f" ({event.error})"
        return text
    if isinstance(event, SubplanAttemptFailed):
        return (
            f"{stamp} {event.path}: attempt {event.attempt} failed ({event.error}); "
            f"retrying in {event.retry_in:.2f}s"
        )
    if isinstance(event, RunStateChanged) and event.to is not RunState.RUNNING:
        return f"{stamp} run {event.run_id}: {event.to.value}"
    return None


class LiveView:
    """A live tree of the plan's subplans, redrawn as events arrive."""

    def __init__(self, plan: Plan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.states: dict[str, str] = {path: "pending" for path, _ in plan.walk()}
        self.notes: dict[str, str] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.live.__exit__(et, e, tb)

    def __call__(self, event: Event) -> None:
        if isinstance(event, SubplanStateChanged):
            self.states[event.path] = event.to.value
            if event.duration is not None:
                self.notes[event.path] = _fmt_duration(event.duration)
            elif event.to is SubplanState.RUNNING:
                self.notes.pop(event.path, None)
        elif isinstance(event, SubplanAttemptFailed):
            self.notes[event.path] = f"attempt {event.attempt} failed, retrying"
        else:
            return
        self.live.update(self._render())

    def _render(self) -> Tree:
        tree = Tree(Text(f"plan {self.plan.name}", style="bold"))
        nodes: dict[str, Tree] = {"": tree}
        for path, _ in self.plan.walk():
            parent = path.rpartition("/")[0]
            state = self.states[path]
            label = Text(f"{ICON[state]} {path.rpartition('/')[2]} ", style=STYLE[state])
            label.append(state, style=STYLE[state])
            if path in self.notes:
                label.append(f"  {self.notes[path]}", style="dim")
            nodes[path] = nodes[parent].add(label)
        return tree


def render_summary(result: RunResult, console: Console) -> None:
    table = Table(title=f"run {result.run_id} · plan {result.plan}", title_justify="left")
    table.add_column("subplan")
    table.add_column("state")
    table.add_column("duration", justify="right")
    table.add_column("attempts", justify="right")
    for path, sub in result.subplans.items():
        table.add_row(
            path,
            Text(sub.state.value, style=STYLE[sub.state.value]),
            _fmt_duration(sub.duration),
            "-" if sub.kind == "group" else str(sub.attempts),
        )
    parts: list[Table | Text] = [table]
    for path, sub in result.subplans.items():
        if sub.state is SubplanState.FAILED and sub.kind != "group":
            block = Text(f"\n{path} failed: {sub.error}", style="bold red")
            if sub.output_tail:
                block.append("\n  last output:\n", style="dim")
                block.append("\n".join(f"    {ln}" for ln in sub.output_tail.splitlines()))
            if sub.log_path:
                block.append(f"\n  log: {sub.log_path}", style="dim")
            parts.append(block)
    counts: dict[str, int] = {}
    for sub in result.subplans.values():
        counts[sub.state.value] = counts.get(sub.state.value, 0) + 1
    tally = ", ".join(f"{n} {state}" for state, n in counts.items())
    closing = Text(
        f"\nrun {result.run_id} {result.state.value} in {_fmt_duration(result.duration)} ({tally})",
        style=STYLE.get(result.state.value, "bold"),
    )
    if result.error:
        closing.append(f"\n{result.error}")
    parts.append(closing)
    console.print(Group(*parts))
