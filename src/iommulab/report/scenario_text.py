"""A scenario's or a replay's result as terminal text: title, settings, tables, notes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .text import format_table

if TYPE_CHECKING:
    from ..scenarios import ScenarioResult

__all__ = ["param_text", "render_text"]


def param_text(result: ScenarioResult) -> dict[str, str]:
    """The run's parameters as ``--set`` takes them."""
    return result.param_text or {k: ",".join(map(str, v)) if isinstance(v, (list, tuple))
                                 else str(v) for k, v in result.params.items()}


def render_text(result: ScenarioResult) -> str:
    """Everything of ``result`` but its plots and saved states, for a terminal."""
    settings = " ".join(f"{k}={v}" for k, v in param_text(result).items())
    out = [result.title, f"[{result.name or result.scenario} on {result.platform}, seed "
           f"{result.seed}{', quick' if result.quick else ''}] {settings}".rstrip()]
    for table in result.tables:
        out += ["", f"{table.title}:", format_table(table.headers, table.rows, table.align)]
    if result.notes:
        out.append("")
        out.extend(result.notes)
    return "\n".join(out)
