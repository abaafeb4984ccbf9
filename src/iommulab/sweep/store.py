"""A sweep's output directory (lab): one JSON report per point, found again on resume.

Layout of ``--out DIR``::

    DIR/sweep.json              what the sweep ran (scenario, grid, seeds, platforms)
    DIR/points/<id>.json        a point's report (schema iommulab.report, as run --json)
    DIR/points/<id>.error.json  a failed point: its settings and its error
    DIR/results.parquet         the table (results.csv when pyarrow is absent)

A point's ``id`` depends only on what it runs (:attr:`Point.id`), so a sweep started
again with the same or a larger grid finds the reports it already has and does not run
those points again; failed points are run again. Files are written whole (a temporary
file renamed), so an interrupted sweep leaves no half report behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..scenarios.base import FileError
from .grid import Point
from .point import Outcome

__all__ = ["OutputDir"]


def _point_doc(point: Point) -> dict[str, Any]:
    return {"index": point.index, "id": point.id, "scenario": point.scenario,
            "platform": point.platform, "seed": point.seed, "quick": point.quick,
            "settings": list(point.settings)}


class OutputDir:
    """The ``--out`` directory of one sweep."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.points = self.path / "points"

    def create(self) -> None:
        """Make the directories, or :class:`FileError` saying why they cannot be."""
        try:
            self.points.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FileError(f"--out {self.path}: cannot create: {e.strerror or e}") from None
        if not os.access(self.points, os.W_OK | os.X_OK):
            raise FileError(f"--out {self.path}: not writable")

    def write(self, name: str, text: str | bytes) -> Path:
        """Write ``name`` under the directory whole: a temporary file, then a rename."""
        path = self.path / name
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            if isinstance(text, bytes):
                tmp.write_bytes(text)
            else:
                tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            raise FileError(f"{path}: cannot write: {e.strerror or e}") from None
        return path

    def report_name(self, point: Point) -> str:
        return f"points/{point.id}.json"

    def save(self, outcome: Outcome) -> None:
        """Keep ``outcome``: its report, or its error (a later success replaces it)."""
        point = outcome.point
        error = self.path / f"points/{point.id}.error.json"
        if outcome.report is not None:
            self.write(self.report_name(point), json.dumps(outcome.report, indent=1) + "\n")
            error.unlink(missing_ok=True)
        else:
            self.write(f"points/{point.id}.error.json", json.dumps(
                {"point": _point_doc(point), "error": outcome.error,
                 "worker": outcome.worker, "host": outcome.host}, indent=1) + "\n")

    def load(self, point: Point) -> Outcome | None:
        """The outcome kept for ``point`` when its report is here (None: run it)."""
        path = self.path / self.report_name(point)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable or cut short: run the point again
        if not (isinstance(doc, dict) and doc.get("seed") == point.seed
                and doc.get("platform") == point.platform and "headline" in doc):
            return None
        host = {k: float(v) for k, v in doc.get("host", {}).items()}
        return Outcome(point, report=doc, host=host, skipped=True)
