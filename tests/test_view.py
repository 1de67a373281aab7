"""The terminal views render what the events say."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import engine
from engine.cli.view import LiveView, PlainView, render_summary
from engine.domain.plan import Plan

PLAN = Plan.model_validate(
    {
        "name": "v",
        "failure_mode": "continue_on_error",
        "subplans": [
            {"name": "a", "run": "echo tail line; exit 2"},
            {"name": "g", "subplans": [{"name": "b", "call": "stepkit:noop"}]},
        ],
    }
)


async def test_plain_view_and_summary(tmp_path: Path) -> None:
    out = io.StringIO()
    settings = engine.Settings(data_dir=str(tmp_path))
    result = await engine.run_plan(PLAN, settings=settings, on_event=PlainView(out))
    lines = out.getvalue().splitlines()
    assert any(line.endswith("a: running") for line in lines)
    assert any("a: failed in" in line and "(exit code 2)" in line for line in lines)
    assert any("g/b: completed" in line for line in lines)
    assert lines[-1].endswith(f"run {result.run_id}: failed")

    console = Console(file=io.StringIO(), width=120, record=True)
    render_summary(result, console)
    text = console.export_text()
    assert "a failed: exit code 2" in text
    assert "tail line" in text
    assert "g/b" in text
    assert f"run {result.run_id} failed" in text


async def test_live_view_tracks_states(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100, record=True)
    view = LiveView(PLAN, console)
    with view:
        await engine.run_plan(PLAN, settings=engine.Settings(data_dir=str(tmp_path)), on_event=view)
    assert view.states == {"a": "failed", "g": "completed", "g/b": "completed"}
    console.print(view._render())
    assert "✘ a failed" in console.export_text()
