"""The ``iommulab`` command: ``demo``, ``run SCENARIO``, ``sweep SCENARIO``, ``replay TRACE``,
``inspect STATE``, ``exec -- PROGRAM``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from . import __version__
from .errors import OutOfMemory
from .inspect import BadState, load_states, page_table_tree, render_address_space
from .kernel import DEFAULT_KERNEL, KERNEL_VERSIONS
from .machine import PLATFORMS, Machine
from .report import diff as report_diff
from .report import format_size, format_table
from .report.html import render_html
from .report.json_report import report_document
from .report.scenario_text import render_text
from .scenarios import SCENARIOS, Progress, ScenarioResult, UsageError, run_scenario
from .scenarios.base import FileError
from .sizes import parse_size
from .sweep import cli as sweep_cli
from .trace import REPLAY_PLATFORMS, TraceError, parse_trace_file, replay
from .workload.pgtable_tour import TourResult, run_pgtable_tour

__all__ = ["COMMANDS", "Command", "FileError", "add_output_options", "main", "register"]


def _render_tour(r: TourResult) -> str:
    out = [f"iommulab demo: one paging domain, {r.fmt} (seed {r.seed})", ""]
    rows = []
    for reg in r.regions:
        sizes = ", ".join(f"{n} x {format_size(s)}" for s, n in sorted(reg.leaves.items()))
        rows.append([reg.name, f"{reg.iova:#x}", format_size(reg.size), reg.runs, sizes])
    out.append(format_table(["region", "iova", "size", "runs", "IOPTEs"], rows, "lrrrl"))
    out.append("")
    rows = [[format_size(size), count, format_size(size * count)]
            for size, count in r.leaf_histogram.items()]
    total = sum(s * c for s, c in r.leaf_histogram.items())
    rows.append(["total", sum(r.leaf_histogram.values()), format_size(total)])
    out.append(format_table(["IOPTE size", "entries", "bytes mapped"], rows))
    out.append("")
    tables = ", ".join(f"level {lvl}: {n}" for lvl, n in r.tables_by_level.items())
    out.append(f"table memory: {format_size(r.table_bytes)} in "
               f"{sum(r.tables_by_level.values())} tables ({tables}); "
               f"{r.table_bytes / total * 1e6:.1f} bytes per MiB mapped")
    out.append(f"map_pages calls: {r.pgtable.map_pages}, unmap_pages calls: "
               f"{r.pgtable.unmap_pages}, iotlb syncs: {r.tlb.iotlb_sync}, "
               f"leaves invalidated: {r.tlb.add_page}, walk flushes: {r.tlb.flush_walk}")
    out.append(f"unmapped {format_size(r.unmapped)} afterwards; all table memory freed")
    out.append("")
    reg = r.regions[-1]
    out.append(f"walk of {reg.iova:#x} ({reg.name}):")
    out.extend(f"  level {lvl}: {desc}" for lvl, desc in reg.walk)
    return "\n".join(out)


#: exit statuses
EXIT_OK, EXIT_DISAGREE, EXIT_USAGE, EXIT_BAD_FILE, EXIT_INTERNAL = 0, 1, 2, 3, 4


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise FileError(f"{path}: cannot write: {e.strerror or e}") from None


def check_output_paths(args: argparse.Namespace, *names: str) -> None:
    """Before any work: each output file option in ``names`` that is set must name a file
    that can be written (``-`` is standard output), else a usage error naming the path."""
    for name in names:
        path = getattr(args, name, None)
        if not path or path == "-":
            continue
        option = "--" + name.replace("_", "-")
        parent = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise UsageError(f"{option} {path}: is a directory")
        if not os.path.isdir(parent):
            raise UsageError(f"{option} {path}: no directory {parent}")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: not writable")
        if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"{option} {path}: directory {parent} is not writable")


def _emit(result: ScenarioResult, args: argparse.Namespace) -> None:
    """Print ``result`` (unless ``--quiet``, or ``--json -`` takes standard output) and
    write the files the options of run and replay ask for."""
    if not args.quiet and args.json != "-":
        print(render_text(result))
    if args.json == "-":
        sys.stdout.write(json.dumps(report_document(result), indent=1) + "\n")
    elif args.json:
        _write(args.json, json.dumps(report_document(result), indent=1) + "\n")
    if args.html:
        _write(args.html, render_html([result]))
    if args.save_state:
        name = result.name or result.scenario
        states = {f"{name}/{k}": v for k, v in result.states.items()}
        if not states:
            raise FileError(f"{args.save_state}: the run kept no domain state to save")
        _write(args.save_state, json.dumps({"states": states}) + "\n")


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(sys.stderr if sys.stderr.isatty() and not args.no_progress else None)


def _cmd_run(args: argparse.Namespace) -> int:
    if args.help:
        scenario = SCENARIOS.get(args.scenario or "")
        if args.scenario and scenario is None:
            raise UsageError(f"no scenario {args.scenario!r} (scenarios: {', '.join(SCENARIOS)})")
        print(args.parser.format_help() if scenario is None else scenario.help())
        return EXIT_OK
    if args.list or not args.scenario:
        if not args.list:
            raise UsageError("name a scenario (iommulab run --list shows them)")
        print("\n\n".join(s.describe() for s in SCENARIOS.values()))
        return EXIT_OK
    check_output_paths(args, "json", "html", "save_state")
    scenario = SCENARIOS.get(args.scenario)
    if args.save_state and scenario is not None and not scenario.saves_state:
        raise UsageError(f"--save-state: {args.scenario} builds no IOMMU domain to save")
    result = run_scenario(args.scenario, platform=args.platform, settings=tuple(args.set),
                          seed=args.seed, quick=args.quick, progress=_progress(args),
                          save_states=bool(args.save_state))
    _emit(result, args)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    check_output_paths(args, "html")
    print(_render_tour(run_pgtable_tour(seed=args.seed)))
    results = []
    for name in SCENARIOS:
        print()
        r = run_scenario(name, seed=args.seed, quick=True, progress=_progress(args))
        print(render_text(r))
        results.append(r)
    if args.html:
        _write(args.html, render_html(results, "iommulab demo"))
    return EXIT_OK


def _cmd_replay(args: argparse.Namespace) -> int:
    check_output_paths(args, "json", "html", "save_state")
    try:
        trace = parse_trace_file(args.trace, strict=args.strict)
    except TraceError as e:
        raise FileError(str(e)) from None
    result = replay(trace, platform=args.platform, strict_invalidation=not args.lazy,
                    address_width=args.address_width, save_states=bool(args.save_state),
                    progress=_progress(args), kernel=args.kernel)
    _emit(result, args)
    if args.check and result.details.get("disagreements"):
        return EXIT_DISAGREE
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    try:
        views = load_states(args.state)
        if args.domain is not None:
            if args.domain not in views:
                raise UsageError(f"{args.state}: no domain {args.domain!r} (domains: "
                                 f"{', '.join(views)})")
            views = {args.domain: views[args.domain]}
        out = []
        for name, view in views.items():
            if not args.map_only:
                out.append(page_table_tree(view, max_lines=args.max_lines, iova=args.iova))
            if not args.tree_only:
                out.append(f"{name}: address space\n"
                           + render_address_space(view, holes=args.holes))
    except BadState as e:
        raise FileError(str(e)) from None
    print("\n\n".join(out))
    return EXIT_OK


#: the device a machine under ``exec`` has unless told otherwise (QEMU q35's first free slot)
EXEC_DEFAULT_DEVICE = "0000:00:02.0"


def exec_ram_max(platform: str) -> int:
    """The most RAM a machine of ``platform`` can have: RAM from the platform's base must
    end where the IOMMU can still address it. VT-d: QEMU's intel-iommu masks the
    addresses in second-level entries to aw-bits (the unit's MGAW, 39 by default);
    SMMUv3 and the mock: the SMMU's OAS; pSeries: below the PHB's 32-bit MMIO window."""
    base, first_bar, _ = PLATFORMS[platform]
    if platform == "ppc64-pseries":
        return first_bar - base
    from .drivers.smmuv3 import SmmuV3Config
    from .drivers.vtd import VtdHw
    bits = VtdHw.aw if platform == "x86-vtd" else SmmuV3Config().oas
    return (1 << bits) - base


def _exec_machine(args: argparse.Namespace) -> Machine:
    """The machine ``exec`` runs the program against, with ``--set`` applied:
    ``ram=SIZE``, ``device=BDF`` (QEMU's edu device; ``BDF:plain`` a plain DMA device
    whose BAR 0 is memory; repeatable; the first replaces the default edu device at
    :data:`EXEC_DEFAULT_DEVICE`, ``device=none`` leaves none),
    ``CONFIG_IOMMUFD_VFIO_CONTAINER=0|1`` and the ``vfio_iommu_type1.*`` module
    parameters."""
    ram, devices, params, kconfig = "4G", [], {}, {}
    scalable = False
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--set {item!r}: want KEY=VALUE")
        if key == "ram":
            ram = value
        elif key == "device":
            devices.append(value)
        elif key == "vtd_scalable":
            if args.platform != "x86-vtd":
                raise UsageError(f"--set vtd_scalable: only on x86-vtd, not {args.platform}")
            scalable = value not in ("0", "n", "no", "false")
        elif key == "CONFIG_IOMMUFD_VFIO_CONTAINER":
            kconfig[key] = value not in ("0", "n", "no", "false")
        elif key.startswith("vfio_iommu_type1."):
            try:
                params[key] = int(value, 0)
            except ValueError:
                raise UsageError(f"--set {item}: not an integer") from None
        else:
            raise UsageError(f"--set {key}: not a machine setting (ram, device, "
                             "CONFIG_IOMMUFD_VFIO_CONTAINER, vfio_iommu_type1.*, "
                             "vtd_scalable)")
    try:
        size = parse_size(ram)
    except ValueError as e:
        raise UsageError(f"--set ram={ram}: {e}") from None
    top = exec_ram_max(args.platform)
    if size > top:
        raise UsageError(f"--set ram={ram}: above the maximum {format_size(top)} on "
                         f"{args.platform} (where RAM from the platform's base must end: the "
                         "IOMMU's output address width, pSeries' 32-bit MMIO window)")
    try:
        m = Machine(args.platform, size, kernel=args.kernel, vtd_scalable=scalable)
    except ValueError as e:
        raise UsageError(f"--set ram={ram}: {e}") from None
    except OutOfMemory as e:
        raise UsageError(f"--set ram={ram}: too little RAM for the machine's own "
                         f"allocations at boot ({e})") from None
    for key in params:
        if key not in m.module_params:
            raise UsageError(f"--set {key}: no such module parameter")
    m.module_params.update(params)
    m.kconfig.update(kconfig)
    if not devices and args.platform not in ("mock", "ppc64-pseries"):
        devices = [EXEC_DEFAULT_DEVICE]
    for spec in devices:
        if spec == "none":
            continue
        bdf, kind = spec, "edu"
        if spec.endswith((":plain", ":edu")):
            bdf, _, kind = spec.rpartition(":")
        try:
            m.add_pci_device(bdf, model=None if kind == "plain" else "edu")
        except ValueError as e:
            raise UsageError(f"--set device={spec}: {e}") from None
        except OutOfMemory as e:
            raise UsageError(f"--set ram={ram}: too little RAM for the machine's own "
                             f"allocations at boot ({e})") from None
    return m


def _cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("name a program: iommulab exec [options] -- PROGRAM ARGS...")
    check_output_paths(args, "report", "html")
    from .exec import ExecLog, run_exec
    from .testing import leak_snapshot
    m = _exec_machine(args)
    fresh = leak_snapshot(m)
    log = ExecLog(m) if args.report or args.html or args.text_report else None
    try:
        result = run_exec(m, argv, log=log)
    except FileNotFoundError as e:
        raise FileError(f"{argv[0]}: {e.strerror}") from None
    if log is not None:
        report = log.result(argv, result.status, kernel=args.kernel,
                            left=fresh.diff(leak_snapshot(m)))
        if args.text_report:
            print(render_text(report), file=sys.stderr)
        if args.report:
            _write(args.report, json.dumps(report_document(report), indent=1) + "\n")
        if args.html:
            _write(args.html, render_html([report]))
    for err in result.handler_errors:
        print(f"iommulab exec: model error (answered EIO): {type(err).__name__}: {err}",
              file=sys.stderr)
    if args.summary:
        st = result.stats
        left = fresh.diff(leak_snapshot(m))
        print(f"iommulab exec: {result.ioctls} model ioctls, {st.received} trapped calls "
              f"({st.answered} answered, {st.continued} passed on), {st.installed} fds "
              f"installed, {st.released} released; machine "
              f"{'back to fresh' if not left else 'left: ' + '; '.join(left)}",
              file=sys.stderr)
    status = result.status
    return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as a shell


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _seed(text: str) -> int:
    """A seed: numpy's SeedSequence takes non-negative integers."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, not {value}")
    return value


def add_output_options(p: argparse.ArgumentParser, save: str) -> None:
    """--json, --html, --save-state and --no-progress, as run and replay take them."""
    p.add_argument("--json", metavar="FILE", help="write the report as JSON "
                   "(schema iommulab.report, version 2); - for standard output, "
                   "instead of the tables")
    p.add_argument("--html", metavar="FILE", help="write a self-contained HTML report "
                   "with plots")
    p.add_argument("--save-state", metavar="FILE", help=f"save {save} for inspect")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", "-q", action="store_true", help="print no tables (files "
                   "are still written)")


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure`` adds its arguments, ``run`` returns the exit status
    (raising :class:`UsageError` for exit 2 and :class:`FileError` for exit 3)."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    add_help: bool = True  # False: ``configure`` adds its own -h/--help


#: the subcommands in the order ``iommulab --help`` lists them; a new one is a
#: ``configure`` and a ``run`` function and one :func:`register` call
COMMANDS: dict[str, Command] = {}


def register(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], *, add_help: bool = True) -> None:
    """Add subcommand ``name`` (see :class:`Command`)."""
    COMMANDS[name] = Command(name, help, configure, run, add_help)


def _configure_demo(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the random choices")
    demo.add_argument("--html", metavar="FILE", help="also write the HTML report")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")


def _configure_run(run: argparse.ArgumentParser) -> None:
    # its own --help (registered with add_help=False): with a scenario, the scenario's
    run.add_argument("-h", "--help", action="store_true", help="show this help, or with "
                     "SCENARIO its parameters, their bounds and platforms")
    run.set_defaults(parser=run)
    run.add_argument("scenario", nargs="?", help=f"one of {', '.join(SCENARIOS)}")
    run.add_argument("--list", action="store_true", help="list scenarios and parameters")
    run.add_argument("--platform", choices=sorted(PLATFORMS), help="default: the "
                     "scenario's first platform")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="set a scenario parameter (repeatable)")
    run.add_argument("--seed", type=_seed, default=0, help="seed of the random choices")
    run.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    add_output_options(run, "the domains' page tables")


def _configure_replay(rep: argparse.ArgumentParser) -> None:
    rep.add_argument("trace", help="ftrace text output (/sys/kernel/tracing/trace, a "
                     "trace_event= boot log or a pasted excerpt)")
    rep.add_argument("--platform", choices=REPLAY_PLATFORMS, default="x86-vtd")
    rep.add_argument("--address-width", type=_int, default=48, help="IOVA bits of the "
                     "replayed domains (VT-d: the unit's MGAW, 32-57; default 48)")
    rep.add_argument("--kernel", choices=KERNEL_VERSIONS, default=str(DEFAULT_KERNEL),
                     help="the Linux release whose answers the trace is checked against "
                     "(VT-d differs: 6.12's own table code, 7.0's generic_pt; "
                     f"default {DEFAULT_KERNEL})")
    rep.add_argument("--lazy", action="store_true", help="replay with lazy invalidation "
                     "(default strict, as iommu.strict=1)")
    rep.add_argument("--strict", action="store_true", help="stop at the first line that "
                     "cannot be parsed (exit 3)")
    rep.add_argument("--check", action="store_true", help="exit 1 when the model disagrees "
                     "with the trace")
    add_output_options(rep, "each replayed domain's page table")


def _configure_exec(ex: argparse.ArgumentParser) -> None:
    ex.add_argument("--platform", choices=sorted(PLATFORMS), default="x86-vtd")
    ex.add_argument("--kernel", choices=KERNEL_VERSIONS, default=str(DEFAULT_KERNEL),
                    help=f"the Linux release the model answers as (default {DEFAULT_KERNEL})")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a machine setting: ram=SIZE, device=BDF (QEMU's edu device "
                    "bound to vfio-pci; BDF:plain for a plain DMA device whose BAR 0 is "
                    "memory; device=none for no device; repeatable; default an edu at "
                    f"{EXEC_DEFAULT_DEVICE} off the mock platform), "
                    "CONFIG_IOMMUFD_VFIO_CONTAINER=0|1, vfio_iommu_type1.PARAM=N, "
                    "vtd_scalable=1 (x86-vtd: a scalable-mode unit that can nest)")
    ex.add_argument("--summary", action="store_true", help="print what the model did, and "
                    "whether the machine is back to its fresh state, on stderr")
    ex.add_argument("--report", metavar="FILE", help="write the report of what the "
                    "program did as JSON (schema iommulab.report, version 2)")
    ex.add_argument("--html", metavar="FILE", help="write the report as self-contained HTML")
    ex.add_argument("--text-report", action="store_true", help="print the report on stderr")
    ex.add_argument("program", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")


def _configure_inspect(ins: argparse.ArgumentParser) -> None:
    ins.add_argument("state", help="a file written by --save-state")
    ins.add_argument("--domain", help="only this domain (default: all)")
    ins.add_argument("--iova", type=_int, help="only the walk to this address")
    ins.add_argument("--max-lines", type=_int, default=200, help="tree lines per domain")
    ins.add_argument("--holes", action="store_true", help="list unmapped holes too")
    view = ins.add_mutually_exclusive_group()
    view.add_argument("--tree-only", action="store_true")
    view.add_argument("--map-only", action="store_true")


register("demo", "a quick tour: one paging domain walked, then every scenario in --quick "
         "mode", _configure_demo, _cmd_demo)
register("run", "run a built-in scenario", _configure_run, _cmd_run, add_help=False)
register("sweep", sweep_cli.HELP, sweep_cli.configure, sweep_cli.run)
register("replay", "replay an ftrace text trace of iommu and dma events", _configure_replay,
         _cmd_replay)
register("exec", "run a real program with its calls on /dev/iommu and /dev/vfio answered "
         "by the model (exit status: the program's)", _configure_exec, _cmd_exec)
register("inspect", "a saved domain state as a page-table tree and an address-space map",
         _configure_inspect, _cmd_inspect)
register("diff", report_diff.HELP, report_diff.configure, report_diff.run)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), as the commands' own."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (--help shows the options)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iommulab", description=(
        "An executable, faithful model of the Linux IOMMU stack. Exit status: 0 done, "
        "1 replay --check found disagreements or a sweep point failed, 2 bad usage, 3 a "
        "file that cannot be used, 4 internal error."))
    parser.add_argument("--version", action="version", version=f"iommulab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for cmd in COMMANDS.values():
        cmd.configure(sub.add_parser(cmd.name, help=cmd.help, add_help=cmd.add_help))
    return parser


def _silence_stdout() -> None:
    """Point standard output at /dev/null so the flush at exit does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's capture)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on bad usage
    try:
        return COMMANDS[args.command].run(args)
    except UsageError as e:
        print(f"iommulab {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileError as e:
        print(f"iommulab {args.command}: {e}", file=sys.stderr)
        return EXIT_BAD_FILE
    except BrokenPipeError:  # a reader that stopped early (| head): quiet, as head expects
        _silence_stdout()
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"iommulab {args.command}: interrupted", file=sys.stderr)
        return 128 + 2  # SIGINT, as a shell reports it
    except Exception as e:  # a bug of ours: one line, the traceback on request
        if os.environ.get("IOMMULAB_DEBUG"):
            raise
        print(f"iommulab {args.command}: internal error: {type(e).__name__}: {e} "
              "(IOMMULAB_DEBUG=1 shows the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
