"""``python3 -m iommulab.bridge [--protect PATH]... [--stats] -- PROGRAM ARGS...``

Runs PROGRAM under the bridge with the echo handler (``/dev/iommulab-test``): a way to
try the interception layer on a program before the model is plugged in (``iommulab
exec`` will run the same bridge with the model's handler). Exits with PROGRAM's status
(128 + signal when it was killed).
"""

from __future__ import annotations

import argparse
import sys

from .echo import EchoHandler
from .supervisor import DEFAULT_PROTECT, Bridge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m iommulab.bridge",
                                 description="run a program under the bridge (echo handler)")
    ap.add_argument("--protect", action="append", metavar="PATH",
                    help=f"a real path the program may not open (default: "
                         f"{' '.join(DEFAULT_PROTECT)})")
    ap.add_argument("--stats", action="store_true", help="print the bridge's counts on exit")
    ap.add_argument("program", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    prog = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not prog:
        ap.error("no PROGRAM given")
    bridge = Bridge(EchoHandler(), protect=args.protect or DEFAULT_PROTECT)
    try:
        rc = bridge.run(prog)
    except FileNotFoundError as e:
        print(f"iommulab.bridge: {e}", file=sys.stderr)
        return 127
    if args.stats:
        s = bridge.stats
        print(f"bridge: {s.received} trapped, {s.answered} answered, {s.continued} "
              f"continued, {s.gone} gone, {s.installed} fds installed, {s.released} "
              f"released", file=sys.stderr)
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main())
