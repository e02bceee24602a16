"""``exchange bench``: the benchmark harness (benchmarks/harness.py) from the command line.

The harness lives in the source checkout's ``benchmarks/`` folder, which is
not installed: this command finds it beside the ``engine`` package (an
editable install, or a run from the checkout) and says so when it is not
there.  ``python -m benchmarks`` runs this same command.
"""
from __future__ import annotations

import sys
from pathlib import Path

from engine.service.cli import arg, command


@command("bench", help="run the benchmarks: every layer and the peers, into a JSON file and plots",
         args=[arg("--quick", action="store_true",
                   help="the reduced set (a few minutes on two cores)"),
               arg("--scenario", action="append", metavar="NAME",
                   help="run only this scenario (repeatable); --list names them"),
               arg("--json", metavar="FILE",
                   help="results file (default bench-results/<timestamp>.json); plots go beside it"),
               arg("--no-plots", action="store_true", help="write the JSON only"),
               arg("--list", action="store_true", help="list the scenarios and exit")])
def bench(args) -> int:
    harness = _harness()
    if args.list:
        for sc in harness.scenarios().values():
            print(f"{sc.name:12s} {sc.help}")
        return 0
    flags = (["--quick"] if args.quick else []) + [f"--scenario={n}" for n in args.scenario or ()]
    if args.json:
        flags.append(f"--json={args.json}")
    try:
        return harness.run(quick=args.quick, names=args.scenario, json_path=args.json,
                           plots=not args.no_plots,
                           command=" ".join(["exchange", "bench", *flags]))
    except ValueError as e:         # an unknown scenario name
        from engine.service.config import ConfigError
        raise ConfigError("exchange bench", "", str(e)) from None


def _harness():
    checkout = Path(__file__).resolve().parents[3]
    if not (checkout / "benchmarks" / "harness.py").is_file():
        from engine.service.config import ConfigError
        raise ConfigError("exchange bench", "", f"needs the source checkout's benchmarks/ "
                          f"folder beside the engine package ({checkout}): install the project "
                          "from its checkout (pip install -e '.[bench]')")
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks import harness
    return harness
