"""Sweeps (lab): one scenario over a grid of parameters, seeds and platforms, run in
parallel on a local or an existing Dask cluster, into one table of results.

``iommulab sweep`` is the command (:mod:`.cli`); from Python::

    from iommulab.sweep import OutputDir, SweepSpec, run_sweep
    result = run_sweep(SweepSpec("streaming-dma", {"packets": ["100", "200"]}),
                       out=OutputDir("out"))
    result.table.records()
"""

from .engine import DaskEngine, SerialEngine
from .grid import Point, SweepSpec, expand
from .point import Outcome, run_point, scenario_runner
from .run import SweepResult, run_points, run_sweep
from .store import OutputDir
from .table import TIMING_PREFIX, ResultsTable, results_table

__all__ = ["TIMING_PREFIX", "DaskEngine", "Outcome", "OutputDir", "Point", "ResultsTable",
           "SerialEngine", "SweepResult", "SweepSpec", "expand", "results_table",
           "run_point", "run_points", "run_sweep", "scenario_runner"]
