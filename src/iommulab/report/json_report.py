"""The versioned JSON report (``iommulab.report``, version 1) of a run or a replay.

The schema ships as ``report-v1.schema.json`` next to this module (JSON Schema
2020-12). A change that removes or renames a field, or changes a field's
meaning, bumps :data:`REPORT_VERSION`; adding a headline key or a table does not.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    from ..scenarios import ScenarioResult

__all__ = ["REPORT_SCHEMA", "REPORT_VERSION", "load_schema", "report_document"]

REPORT_SCHEMA = "iommulab.report"
REPORT_VERSION = 1


def _plain(value: Any) -> Any:
    """Tuples to lists and numpy scalars to Python numbers, recursively."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def report_document(result: ScenarioResult) -> dict[str, Any]:
    """The JSON document of ``result`` (see ``report-v1.schema.json``)."""
    return {
        "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "iommulab": __version__,
        "kind": "replay" if result.scenario == "replay" else "scenario",
        "name": result.name or result.scenario, "title": result.title,
        "platform": result.platform, "seed": result.seed, "quick": result.quick,
        "params": _plain(result.params), "headline": _plain(result.headline),
        "tables": [{"title": t.title, "headers": list(t.headers), "rows": _plain(t.rows)}
                   for t in result.tables],
        "plots": [{"title": p.title, "y_label": p.y_label, "categories": list(p.categories),
                   "series": _plain(p.series), "log": p.log} for p in result.plots],
        "notes": list(result.notes), "details": _plain(result.details),
        "host": dict(result.host),
    }


def load_schema() -> dict[str, Any]:
    """The JSON Schema of version :data:`REPORT_VERSION`."""
    text = resources.files("iommulab.report").joinpath("report-v1.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
