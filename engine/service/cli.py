"""The ``exchange`` command line: ``main(argv=None) -> exit code``.

A subcommand is one decorated function; its arguments are declared with it::

    @command("serve", help="run the engine service", args=[arg("--config", required=True)])
    def serve(args) -> int: ...

An operating error (``OPERATING_ERRORS``: a bad configuration, an address in
use, a folder that cannot be written) prints one line, ``exchange: error:
...``, to stderr and exits 2.  Anything else is a bug and keeps its
traceback.  Subcommands import what they run lazily, so ``--help`` and a
configuration mistake cost no server import.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NamedTuple

from engine.service.config import ConfigError, load_config
from engine.service.journal import JournalCorrupt, JournalWriteError
from engine.service.recovery import RecoveryError
from settlement import SettlementError

__all__ = ["main", "command", "arg", "OPERATING_ERRORS", "PROG"]

PROG = "exchange"
EXIT_OPERATING_ERROR = 2        # as argparse's usage errors
EXIT_INTERRUPTED = 130          # 128 + SIGINT
OPERATING_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, OSError, JournalCorrupt, JournalWriteError, RecoveryError, SettlementError)


class _Command(NamedTuple):
    name: str
    help: str
    args: tuple
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {}


def arg(*flags: str, **kwargs) -> tuple:
    """One ``add_argument(*flags, **kwargs)`` of a subcommand."""
    return flags, kwargs


def command(name: str, *, help: str, args=()):
    """Register the decorated ``f(args) -> int`` as subcommand ``name``."""
    def register(run):
        assert name not in _COMMANDS, f"subcommand {name!r} registered twice"
        _COMMANDS[name] = _Command(name, help, tuple(args), run)
        return run
    return register


# ================================================================ subcommands
@command("serve", help="run the engine service",
         args=[arg("--config", required=True, metavar="FILE", help="the server's TOML configuration")])
def serve(args) -> int:
    config = load_config(args.config)
    from engine.service import server
    return server.run(config)


def _load_commands() -> None:
    """Import every module of engine.service.commands: each registers its
    subcommands with @command (adding one is one module, or one function)."""
    import importlib
    import pkgutil

    from engine.service import commands
    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{module.name}")


# ================================================================ main
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("exchange-core")
    except PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="exchange-core: matching engine service")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _load_commands()
    for c in _COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help, description=c.help)
        for flags, kwargs in c.args:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(run=c.run)
    return parser


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:         # --help, --version, a usage error: argparse has printed it
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.run(args)
    except OPERATING_ERRORS as e:
        print(f"{PROG}: error: {_one_line(str(e)) or type(e).__name__}", file=sys.stderr)
        return EXIT_OPERATING_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    from engine.service.cli import main as _main     # the one module the commands register in
    sys.exit(_main())
