"""The benchmark harness behind ``exchange bench`` and ``python -m benchmarks``.

It owns the list of scenarios, runs the chosen ones in order with a progress
display, and writes one results file (JSON, ``SCHEMA``) with the machine and
the software versions beside the figures, then the plots next to it.  The
measuring itself lives in the benchmark scripts (``bench_*.py``) and in
``benchmarks.peers``; scenarios only call them.  It never runs a scenario on
a database it did not create: every one it makes is named ``exchange_bench_*``
and dropped by the scenario that made it.

A scenario is one function registered with ``@scenario``; its keyword
arguments come from the ``quick`` or ``full`` size, and it reports through
the ``Context`` it is given (``figure``, ``detail``, ``step``) or raises
``Skip`` with the reason it cannot run here.  Adding a scenario (the
market-data fan-out, say) is one decorated function in a module listed in
``SCENARIO_MODULES``; the JSON, the plots and the README table pick its
figures up as they are.
"""
from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

SCHEMA = "exchange-bench/1"
PERCENTILES = (50, 90, 99, 99.9, 99.99)          # every latency curve, p50 ... p99.99
RESULTS_DIR = "bench-results"
# Modules whose import registers scenarios, in the order they run.  A module
# that is not there (a scenario another change adds) is passed over.
SCENARIO_MODULES = (
    "benchmarks.scenarios",               # flows, engine, book, memory, settlement, replay,
                                          # recovery, wire
    "benchmarks.peers.scenario",          # peers
    "benchmarks.bench_market_data",       # market-data fan-out: define a @scenario there
)


class Scenario(NamedTuple):
    name: str
    help: str
    run: Callable[..., None]
    quick: dict
    full: dict
    database: str               # "none", "optional" (some cases use it) or "required"


_SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, *, help: str, quick: dict, full: dict, database: str = "none"):
    """Register ``f(ctx, **size)`` as scenario ``name``: ``quick`` and ``full``
    are its keyword arguments in the two sets.  ``database``: "required" (the
    scenario is skipped, with the reason, when no PostgreSQL can be had),
    "optional" (``ctx.database_url`` may be None) or "none"."""
    def register(run):
        assert name not in _SCENARIOS, f"scenario {name!r} registered twice"
        assert set(quick) == set(full), f"scenario {name!r}: quick and full differ in keys"
        assert database in ("none", "optional", "required"), database
        _SCENARIOS[name] = Scenario(name, help, run, dict(quick), dict(full), database)
        return run
    return register


def scenarios() -> dict[str, Scenario]:
    """Every registered scenario, in running order."""
    for module in SCENARIO_MODULES:
        if module in sys.modules:
            continue
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(module)
    return dict(_SCENARIOS)


class Skip(Exception):
    """This scenario cannot run here; the message says why (it goes in the JSON)."""


def percentile_map(values, percentiles=PERCENTILES) -> dict[str, float]:
    """{"50": v, "99.9": v, ...}: the JSON's form of a latency curve."""
    return {f"{p:g}": float(v) for p, v in zip(percentiles, values)}


class Context:
    """What a running scenario reports to: figures, details, progress."""

    def __init__(self, name: str, database_url: str | None, progress):
        self.name = name
        self.database_url = database_url
        self.figures: list[dict] = []
        self.details: dict = {}
        self._progress = progress

    def step(self, text: str) -> None:
        """Show what the scenario is doing now."""
        self._progress.step(f"{self.name}: {text}")

    def figure(self, key: str, label: str, value: float, unit: str, *, latency: dict | None = None,
               latency_unit: str | None = None, **extra) -> dict:
        """One measured figure, ``<scenario>.<key>``: ``value`` in ``unit``
        (higher is better unless the unit says otherwise), optionally a latency
        curve ({percentile: value} in ``latency_unit``) and extra numbers."""
        fig = {"id": f"{self.name}.{key}", "label": label, "value": float(value), "unit": unit}
        if latency is not None:
            fig["latency"] = {"unit": latency_unit, "percentiles": latency}
        if extra:
            fig["extra"] = extra
        self.figures.append(fig)
        return fig

    def detail(self, key: str, value) -> None:
        self.details[key] = value


# ================================================================ progress
class _Progress:
    """A rich progress bar on a terminal; on anything else, one line per step
    on stderr (CI logs)."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                                   TextColumn, TimeElapsedColumn)
        self.console = Console(stderr=True)
        self._t0 = time.perf_counter()
        self._live = self.console.is_terminal
        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                             disable=not self._live)
        self._task = self._bar.add_task("starting", total=total)

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def step(self, text: str) -> None:
        if self._live:
            self._bar.update(self._task, description=text)
        else:
            print(f"[{time.perf_counter() - self._t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    def done(self, text: str) -> None:
        self._bar.advance(self._task)
        if self._live:
            self._bar.console.print(text, highlight=False)
        else:
            print(f"[{time.perf_counter() - self._t0:6.1f}s] {text}", file=sys.stderr, flush=True)


# ================================================================ running
def _database(progress) -> tuple[str | None, dict]:
    """(server URL or None, the JSON's record of it): DATABASE_URL, else the
    embedded server; None with the reason when neither answers."""
    import os

    from settlement.database import ENV_URL, database_url
    source = "DATABASE_URL" if os.environ.get(ENV_URL, "").strip() else "embedded"
    progress.step(f"database: {source}")
    try:
        url = database_url()
        version = _server_version(url)
    except Exception as e:          # any failure: the database scenarios are skipped, with it
        return None, {"source": source, "status": "unavailable",
                      "reason": f"{type(e).__name__}: {e}".strip()}
    return url, {"source": source, "status": "ok", "postgresql": version}


def _server_version(url: str) -> str:
    import asyncio

    import asyncpg

    async def ask():
        conn = await asyncpg.connect(url, timeout=30)
        try:
            return await conn.fetchval("SHOW server_version")
        finally:
            await conn.close()
    return asyncio.run(ask())


def run(*, quick: bool, names: list[str] | None, json_path: str | None, plots: bool = True,
        command: str | None = None) -> int:
    """Run the scenarios (all, or ``names``) of the quick or full set; write
    the JSON (default ``bench-results/<timestamp>.json``) and the plots.
    Exit code 0 when no scenario failed (skipped ones are not failures)."""
    from benchmarks.machine import describe
    available = scenarios()
    chosen = list(available) if not names else names
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}: one of {', '.join(available)}")
    started = dt.datetime.now(dt.timezone.utc)
    path = Path(json_path) if json_path else (
        Path(RESULTS_DIR) / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json")
    size = "quick" if quick else "full"
    t0 = time.perf_counter()
    results: dict = {}
    with _Progress(len(chosen)) as progress:
        db_url, db_record = None, {"status": "not needed"}
        if any(available[n].database != "none" for n in chosen):
            db_url, db_record = _database(progress)
        for name in chosen:
            sc = available[name]
            params = sc.quick if quick else sc.full
            ctx = Context(name, db_url, progress)
            entry = {"status": "ok", "reason": None, "help": sc.help, "params": params}
            s0 = time.perf_counter()
            progress.step(f"{name}: starting")
            try:
                if sc.database == "required" and db_url is None:
                    raise Skip(f"no PostgreSQL: {db_record.get('reason')}")
                sc.run(ctx, **params)
            except Skip as e:
                entry.update(status="skipped", reason=str(e))
            except Exception as e:      # a broken scenario is reported; the others still run
                entry.update(status="failed", reason=f"{type(e).__name__}: {e}",
                             traceback=traceback.format_exc())
            entry["seconds"] = round(time.perf_counter() - s0, 3)
            entry["figures"], entry["details"] = ctx.figures, ctx.details
            results[name] = entry
            why = last_line(entry["reason"])
            progress.done(f"{name}: {entry['status']} in {entry['seconds']:.1f}s"
                          + (f" ({why})" if why else ""))
        doc = {
            "schema": SCHEMA,
            "started": started.isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - t0, 3),
            "set": size,
            "command": command or shlex.join(["exchange", "bench"] + (["--quick"] if quick else [])
                                             + [f"--scenario={n}" for n in names or ()]),
            **describe(db_record),
            "scenarios": results,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        doc["plots"] = _plots(doc, path, progress) if plots else {"status": "skipped",
                                                                 "reason": "--no-plots"}
        path.write_text(json.dumps(doc, indent=1) + "\n")
    _summary(doc, path, progress.console)
    return 1 if any(e["status"] == "failed" for e in results.values()) else 0


def _plots(doc: dict, path: Path, progress) -> dict:
    progress.step("plots")
    try:
        from benchmarks.plots import write_plots
        files = write_plots(doc, path.parent, path.stem)
    except ImportError as e:
        return {"status": "unavailable",
                "reason": f"{e.name or e} is not installed: pip install -e '.[bench]'"}
    return {"status": "ok", "files": [str(f) for f in files]}


def _summary(doc: dict, path: Path, console) -> None:
    """The figures as a table on stdout, then where the results are."""
    from rich.console import Console
    from rich.table import Table
    out = Console()
    if not out.is_terminal:
        out = Console(width=200, no_color=True, highlight=False)
    table = Table(show_edge=False, pad_edge=False, box=None, highlight=False)
    for header, right in (("figure", False), ("value", True), ("unit", False),
                          ("p50", True), ("p99", True), ("latency unit", False)):
        table.add_column(header, justify="right" if right else "left", no_wrap=True)
    for name, entry in doc["scenarios"].items():
        if entry["status"] != "ok":
            table.add_row(name, entry["status"], "", "", "", last_line(entry["reason"]))
        for f in entry["figures"]:
            lat = (f.get("latency") or {}).get("percentiles") or {}
            table.add_row(f["id"], number_text(f["value"]), f["unit"],
                          number_text(lat.get("50")), number_text(lat.get("99")),
                          (f.get("latency") or {}).get("unit") or "")
    out.print(table)
    out.print(f"results: {path}" + "".join(f"\nplot: {p}" for p in doc["plots"].get("files", ())),
              highlight=False)


def last_line(text: str | None) -> str:
    """The last non-empty line of a reason (a traceback ends with the error)."""
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return lines[-1] if lines else ""


def number_text(v: float | None) -> str:
    """A figure as people read it: whole above 100, three or so digits below."""
    if v is None:
        return ""
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if v >= 1 else f"{v:.3g}"
