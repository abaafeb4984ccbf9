"""``iommulab sweep SCENARIO --grid KEY=V1,V2 ...``: a grid of scenario runs, in parallel."""

from __future__ import annotations

import argparse
import os
import sys

from ..machine import PLATFORMS
from ..scenarios import SCENARIOS, Progress, UsageError
from .engine import DASK_MISSING, DaskEngine, Engine, SerialEngine, dask_available
from .grid import SweepSpec, parse_grid_option
from .gridfile import load_grid_file
from .run import run_sweep
from .store import OutputDir

__all__ = ["HELP", "configure", "run"]

HELP = ("run a scenario over a grid of parameters, seeds and platforms, in parallel "
        "(Dask), into one table (exit status 1 when a point failed)")

#: exit statuses (as iommulab.cli's)
_EXIT_OK, _EXIT_FAILED_POINTS = 0, 1


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {value}")
    return value


def _seed(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, not {value}")
    return value


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help=f"one of {', '.join(SCENARIOS)}")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a parameter's values, one point each (repeatable: the cross "
                   "product); for a parameter that takes a list, + joins one value's "
                   "items (modes=strict+lazy,strict)")
    p.add_argument("--grid-file", metavar="FILE", help="the grid from a TOML file (or "
                   "YAML, with PyYAML installed): a [grid] table of KEY = [values], "
                   "optionally [set], seeds, platforms; the options add to it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter the same in every point (repeatable)")
    p.add_argument("--seeds", type=_positive, help="seeds per grid point: --seed, "
                   "--seed + 1, ... (default 1)")
    p.add_argument("--seed", type=_seed, default=0, help="the first seed (default 0)")
    p.add_argument("--platform", metavar="P,...", help="platforms to run on, "
                   f"comma-separated (of {', '.join(sorted(PLATFORMS))}; default: the "
                   "scenario's first)")
    p.add_argument("--quick", action="store_true", help="the scenario's small sizes for "
                   "what the grid does not set")
    p.add_argument("--out", metavar="DIR", help="output directory: the table, one JSON "
                   "report per point, and what a resumed sweep skips (default "
                   "sweep-SCENARIO)")
    p.add_argument("--workers", type=_positive, help="worker processes of the local Dask "
                   "cluster (default: this machine's cores); 1 runs the points one after "
                   "the other in this process, without Dask")
    p.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler "
                   "(tcp://HOST:PORT) to run the points on, instead of a local cluster")
    p.add_argument("--html", nargs="?", const="", metavar="FILE", help="also write a page "
                   "of plots and the table (default FILE: DIR/sweep.html)")
    p.add_argument("--x", metavar="PARAM", help="the plots' x axis: a grid parameter "
                   "(or platform; default: the first numeric one that varies)")
    p.add_argument("--lines", metavar="PARAM", help="one line per value of this grid "
                   "parameter (or platform; default: the next one that varies)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")


def _spec(args: argparse.Namespace) -> SweepSpec:
    grid: dict[str, list[str]] = {}
    settings: list[str] = []
    seeds = 1
    platforms: tuple[str, ...] = ()
    if args.grid_file:
        f = load_grid_file(args.grid_file)
        grid.update(f.grid)
        settings.extend(f.settings)
        seeds = f.seeds or seeds
        platforms = f.platforms
    for text in args.grid:
        key, values = parse_grid_option(text)
        grid[key] = values
    overridden = {s.partition("=")[0] for s in args.set}
    settings = [s for s in settings if s.partition("=")[0] not in overridden] + args.set
    if args.seeds is not None:
        seeds = args.seeds
    if args.platform:
        platforms = tuple(p.strip() for p in args.platform.split(",") if p.strip())
    if not grid:
        raise UsageError("give a grid: --grid KEY=V1,V2,... or --grid-file FILE")
    return SweepSpec(args.scenario, grid, tuple(settings),
                     tuple(range(args.seed, args.seed + seeds)), tuple(platforms),
                     args.quick)


def _engine(args: argparse.Namespace) -> Engine:
    if args.scheduler:
        return DaskEngine(scheduler=args.scheduler)
    workers = args.workers or os.cpu_count() or 1
    if workers == 1:
        if not dask_available():
            print("iommulab sweep: Dask is not installed: the points run one after the "
                  "other in this process", file=sys.stderr)
        return SerialEngine()
    if not dask_available():
        raise UsageError(DASK_MISSING)
    return DaskEngine(workers=workers)


def run(args: argparse.Namespace) -> int:
    from .grid import expand
    spec = _spec(args)
    expand(spec)  # every value within its bounds before a cluster starts
    if args.x is not None or args.lines is not None:
        if args.html is None:
            raise UsageError("--x and --lines choose the plots of --html: give --html too")
        from .html import check_plot_choice
        check_plot_choice(spec, args.x, args.lines)
    out = OutputDir(args.out or f"sweep-{args.scenario}")
    html = None
    if args.html is not None:
        html = args.html or str(out.path / "sweep.html")
        parent = os.path.dirname(os.path.abspath(html))
        if args.html and (os.path.isdir(html) or not os.path.isdir(parent)):
            raise UsageError(f"--html {html}: " + ("is a directory" if os.path.isdir(html)
                                                   else f"no directory {parent}"))
    out.create()
    progress = Progress(sys.stderr if sys.stderr.isatty() and not args.no_progress
                        else None)
    engine = _engine(args)
    try:
        result = run_sweep(spec, engine, out, progress=progress)
    finally:
        engine.close()
    if html is not None:
        from .html import render_sweep_html
        page = render_sweep_html(result, x=args.x, lines=args.lines)
        out.write(os.path.relpath(html, out.path), page)
    if not args.quiet:
        print(result.table.render())
        failed = [o for o in result.outcomes if not o.ok]
        if failed:
            print("\nfailed points:")
            for o in failed:
                print(f"  {o.point.index} ({', '.join(o.point.settings)}, seed "
                      f"{o.point.seed}, {o.point.platform}): {o.error}")
        print()
    table = "results.parquet" if (out.path / "results.parquet").exists() else "results.csv"
    print(f"iommulab sweep: {result.summary(str(out.path))}; table {out.path / table}"
          + (f", page {html}" if html else ""))
    return _EXIT_FAILED_POINTS if result.failed else _EXIT_OK
