"""``exchange bench --quick`` end to end, as a process: the results file's
schema, every scenario present, every figure positive, every installed peer
agreeing with our trades.  How fast anything ran is not asserted."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXCHANGE = str(Path(sys.executable).with_name("exchange"))
QUICK_SECONDS_MAX = 900         # a hang guard, not a timing: the quick set takes ~2 minutes


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, pg_server_url):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = dict(os.environ, DATABASE_URL=pg_server_url)
    done = subprocess.run([EXCHANGE, "bench", "--quick", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=QUICK_SECONDS_MAX)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return json.loads(out.read_text()), out, done


def _positive(value, where: str) -> None:
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (where, value)


def test_results_file_schema(quick_run):
    doc, _, _ = quick_run
    assert doc["schema"] == "exchange-bench/1"
    assert doc["set"] == "quick" and doc["command"].startswith("exchange bench --quick")
    m = doc["machine"]
    assert m["cpu_model"] and m["cores"] >= 1 and m["memory_bytes"] > 0
    s = doc["software"]
    for key in ("python", "cython", "msgspec", "uvloop", "git_commit"):
        assert s[key], key
    assert doc["database"]["status"] == "ok" and doc["database"]["postgresql"]
    import engine
    assert doc["implementations"] == {"book": engine.BOOK_IMPLEMENTATION,
                                      "core": engine.CORE_IMPLEMENTATION}


def test_every_scenario_ran_and_every_figure_is_positive(quick_run):
    doc, _, _ = quick_run
    from benchmarks.harness import scenarios
    names = set(scenarios())
    assert {"flows", "engine", "book", "memory", "settlement", "replay", "recovery", "wire",
            "peers"} <= names
    assert set(doc["scenarios"]) == names
    for name, entry in doc["scenarios"].items():
        assert entry["status"] == "ok", (name, entry.get("reason"), entry.get("traceback"))
        assert entry["figures"], name
        for fig in entry["figures"]:
            assert fig["id"].startswith(f"{name}.") and fig["label"] and fig["unit"], fig
            _positive(fig["value"], fig["id"])
            curve = (fig.get("latency") or {}).get("percentiles")
            if curve:
                for p, v in curve.items():
                    _positive(v, f"{fig['id']} p{p}")
                values = list(curve.values())
                assert values == sorted(values), (fig["id"], curve)
    flows = {f["id"]: f for f in doc["scenarios"]["flows"]["figures"]}
    for mix in ("exchange_core", "insert_heavy", "cancel_heavy", "sweep"):
        rows = flows[f"flows.{mix}"]["extra"]["rows_per_command"]
        assert set(rows) == {"ledger", "trades", "orders"} and rows["ledger"] > 0, rows
    settlement = {f["id"] for f in doc["scenarios"]["settlement"]["figures"]}
    assert {"settlement.writer", "settlement.ceiling", "settlement.lag_25", "settlement.lag_50",
            "settlement.lag_75"} <= settlement
    wire = {f["id"] for f in doc["scenarios"]["wire"]["figures"]}
    assert {"wire.batch-settle_off.1", "wire.batch-settle_off.4"} <= wire


def test_every_installed_peer_agreed(quick_run):
    doc, _, _ = quick_run
    engines = doc["scenarios"]["peers"]["details"]["engines"]
    assert engines["exchange-core"]["agreed"] is True
    for package in ("liquibook", "lightmatchingengine"):
        e = engines[package]
        if e["status"] == "unavailable":
            assert e["reason"], e
            continue
        assert e["status"] == "ok" and e["agreed"] is True, e
        assert e["trades"] == engines["exchange-core"]["trades"] > 0, e
        _positive(e["ours_to_theirs"], package)


def test_plots_and_readme_section(quick_run):
    doc, path, _ = quick_run
    plots = doc["plots"]
    if plots["status"] == "ok":
        assert all(Path(f).stat().st_size > 0 for f in plots["files"]), plots
    else:
        assert plots["status"] == "unavailable" and "matplotlib" in plots["reason"], plots
    from benchmarks.readme_table import BEGIN, END, section
    text = section(doc, None)
    assert text.startswith(BEGIN) and text.endswith(END)
    assert doc["command"] in text and "| flows | Engine.submit, exchange_core mix |" in text


def test_unknown_scenario_is_one_line():
    done = subprocess.run([EXCHANGE, "bench", "--scenario", "nosuch", "--json", os.devnull],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done
    assert done.stderr.startswith("exchange: error:") and "nosuch" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_micro_benchmarks_run():
    """``pytest benchmarks/``: each micro-benchmark once, untimed."""
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "-q", "-p",
                           "no:cacheprovider", "--benchmark-disable"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
