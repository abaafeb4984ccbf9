"""The versioned JSON report (``iommulab.report``, version 2) of a run or a replay.

The schemas ship as ``report-v<N>.schema.json`` next to this module (JSON Schema
2020-12). A change that adds, removes or renames a field, or changes a field's
meaning, bumps :data:`REPORT_VERSION` (the schemas forbid unknown fields, so an
added one would fail a strict reader of the old version); adding a headline key
or a table does not. Version 2 added ``timeline`` and made a plot's ``log`` the
scale drawn (decided from the data unless the plot chose).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from .. import __version__
from .axes import plot_is_log

if TYPE_CHECKING:
    from ..scenarios import ScenarioResult

__all__ = ["REPORT_SCHEMA", "REPORT_VERSION", "REPORT_VERSIONS", "load_schema",
           "report_document"]

REPORT_SCHEMA = "iommulab.report"
REPORT_VERSION = 2
#: the versions whose schema ships (and ``iommulab diff`` reads)
REPORT_VERSIONS = (1, 2)


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
    """The JSON document of ``result`` (see ``report-v2.schema.json``)."""
    return {
        "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "iommulab": __version__,
        "kind": "replay" if result.scenario == "replay" else "scenario",
        "name": result.name or result.scenario, "title": result.title,
        "platform": result.platform, "seed": result.seed, "quick": result.quick,
        "params": _plain(result.params), "headline": _plain(result.headline),
        "tables": [{"title": t.title, "headers": list(t.headers), "rows": _plain(t.rows)}
                   for t in result.tables],
        "plots": [{"title": p.title, "y_label": p.y_label, "categories": list(p.categories),
                   "series": _plain(p.series), "log": plot_is_log(p)} for p in result.plots],
        "notes": list(result.notes), "details": _plain(result.details),
        "host": dict(result.host),
        "timeline": _plain(result.timeline),
    }


def load_schema(version: int = REPORT_VERSION) -> dict[str, Any]:
    """The JSON Schema of ``version`` (one of :data:`REPORT_VERSIONS`)."""
    if version not in REPORT_VERSIONS:
        raise ValueError(f"no report schema version {version}")
    text = resources.files("iommulab.report").joinpath(
        f"report-v{version}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema
