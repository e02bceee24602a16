"""Write the README's benchmark table and picture from a results file, never by hand.

    python -m benchmarks.readme_table bench-results/<timestamp>.json [--readme README.md]
                                      [--plot docs/bench.png]

Replaces what lies between ``BEGIN`` and ``END`` in the README with the
machine, the command, one table of the headline figures (throughput, p50 and
p99 per scenario) and one of the peers (with our ratio to each), and writes
the picture the README shows (``plots.write_summary``).  Which figures are
headlines is ``HEADLINES``; what each means is docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

from benchmarks.harness import last_line, number_text

BEGIN = "<!-- bench-table:begin (written by python -m benchmarks.readme_table) -->"
END = "<!-- bench-table:end -->"
HEADLINES = ("flows.*", "engine.python-python", "engine.cython-cython", "book.mixed.*",
             "settlement.*", "replay.*", "recovery.*", "wire.*.1", "wire.*.4", "wire.latency_*",
             "market_data.*", "memory.engine*")
_NOTES = {      # extra numbers shown beside a figure: key -> format
    "trades_per_s": "{:,.0f} trades/s",
    "ratio_to_ceiling": "{:.2f} of the ceiling",
    "settled_per_s": "{:,.0f} settled/s",
    "offered_trades_per_s": "offered {:,.0f} trades/s",
}
_UNITS = {"us": "µs", "ms": "ms", "ns": "ns"}


def _reason(entry: dict) -> str:
    """A scenario's or an engine's reason, in one table cell."""
    return last_line(entry.get("reason")).replace("|", "/")


def _notes(fig: dict) -> str:
    extra = fig.get("extra") or {}
    out = [fmt.format(extra[k]) for k, fmt in _NOTES.items() if k in extra]
    rows = extra.get("rows_per_command")
    if rows:
        out.append("rows/command: " + ", ".join(f"{k} {v:.2f}" for k, v in rows.items()))
    return "; ".join(out)


def _latency(fig: dict, p: str) -> str:
    lat = fig.get("latency")
    if not lat or p not in lat["percentiles"]:
        return ""
    return f"{number_text(lat['percentiles'][p])} {_UNITS.get(lat['unit'], lat['unit'])}"


def headline_rows(doc: dict) -> list[str]:
    rows = []
    for name, entry in doc["scenarios"].items():
        if name == "peers":
            continue
        if entry["status"] != "ok":
            rows.append(f"| {name} | {entry['status']}: {_reason(entry)} | | | | |")
            continue
        for fig in entry["figures"]:
            if not any(fnmatch.fnmatchcase(fig["id"], pattern) for pattern in HEADLINES):
                continue
            rows.append(f"| {name} | {fig['label']} | {number_text(fig['value'])} {fig['unit']} | "
                        f"{_latency(fig, '50')} | {_latency(fig, '99')} | {_notes(fig)} |")
    return rows


def peer_rows(doc: dict) -> list[str]:
    entry = doc["scenarios"].get("peers")
    if not entry:
        return []
    if entry["status"] != "ok":
        return [f"| peers | {entry['status']}: {_reason(entry)} | | | |"]
    rows = []
    for e in entry["details"]["engines"].values():
        name = e["label"] + (f" {e['version']}" if e.get("version") else "")
        if e["status"] != "ok":
            rows.append(f"| {name} | {e['kind']} | {e['status']}: {_reason(e)} | | |")
            continue
        ratio = e.get("ours_to_theirs")
        goal = e.get("goal")
        ratio_text = "" if ratio is None else f"{ratio:.2f}×" + (
            f" (goal ≥ {goal['ratio_at_least']:g}×: {'met' if goal['met'] else 'not met'})"
            if goal else "")
        rows.append(f"| {name} | {e['kind']} | {number_text(e['commands_per_s'])} commands/s | "
                    f"{'agreed' if e['agreed'] else 'differed'} | {ratio_text} |")
    return rows


def section(doc: dict, plot: str | None) -> str:
    m, s, impl = doc["machine"], doc["software"], doc["implementations"]
    commit = (s.get("git_commit") or "unknown")[:10] + (" + local changes" if s.get("git_dirty") else "")
    pg = doc.get("database", {}).get("postgresql")
    lines = [
        BEGIN,
        f"`{doc['command']}` ({doc['set']} set, {doc['seconds'] / 60:.1f} min), commit {commit}, "
        f"{doc['started'][:10]}: {m['cores']} cores of {m['cpu_model']}, "
        f"{(m['memory_bytes'] or 0) / 2**30:.0f} GiB, Python {s['python']}, Cython {s['cython']}, "
        f"msgspec {s['msgspec']}, uvloop {s['uvloop']}, PostgreSQL {pg or 'none'}; "
        f"engine core {impl['core']}, book {impl['book']}.",
        "",
        "| scenario | measure | throughput | p50 | p99 | also |",
        "|---|---|---:|---:|---:|---|",
        *headline_rows(doc),
    ]
    peers = peer_rows(doc)
    if peers:
        flow = doc["scenarios"]["peers"]["details"].get("flow", {})
        kinds = flow.get("commands_by_kind", {})
        lines += [
            "",
            f"The same flow through each engine ({flow.get('commands', 0):,} commands: "
            + ", ".join(f"{v:,} {k}" for k, v in kinds.items())
            + f"; {flow.get('trades', 0):,} trades), trades checked equal before timing.  "
            "exchange-core runs with its full risk and balance work (locks, fees, double-entry "
            "transfers, events); the peers keep no balances.",
            "",
            "| engine | what it is | throughput | trades | exchange-core ÷ it |",
            "|---|---|---:|---|---|",
            *peers,
        ]
    if plot:
        lines += ["", f"![exchange-core beside its peers, and latency per flow]({plot})"]
    lines.append(END)
    return "\n".join(lines)


def rewrite(readme: Path, text: str) -> None:
    old = readme.read_text()
    if BEGIN not in old or END not in old:
        raise SystemExit(f"{readme}: no generated benchmark section ({BEGIN} ... {END})")
    head, rest = old.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + text + tail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", help="a results file of exchange bench")
    ap.add_argument("--readme", default="README.md")
    ap.add_argument("--plot", default="docs/bench.png",
                    help="the picture to write and show (relative to the README's folder)")
    args = ap.parse_args(argv)
    doc = json.loads(Path(args.results).read_text())
    readme = Path(args.readme)
    plot = None
    if args.plot:
        from benchmarks.plots import write_summary
        write_summary(doc, readme.parent / args.plot)
        plot = args.plot
    rewrite(readme, section(doc, plot))
    print(f"{readme}: benchmark section written from {args.results}"
          + (f"; {readme.parent / args.plot}" if plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
