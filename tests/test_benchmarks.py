"""The engine and book benchmarks run end to end (tiny sizes: this checks that
they work and print every table, not how fast anything is)."""
from __future__ import annotations

import re

from support import BOOKS

import engine
from benchmarks import bench_book, bench_engine


def test_bench_engine_prints_every_table(capsys):
    bench_engine.main(["-n", "3000", "--repeat", "1", "--prefill", "200",
                       "--memory-orders", "20000"])
    out = capsys.readouterr().out
    for mix in ("exchange_core", "insert_heavy"):
        rows = re.findall(rf"^{mix} +([a-z]+) +([a-z]+) +[\d,]+ +[\d,]+ ", out, re.M)
        cores = {"python", engine.CORE_IMPLEMENTATION}
        assert {tuple(r) for r in rows} == {(c, b) for c in cores for b in BOOKS}, rows
    assert "# raw book operations" in out and "# floor:" in out
    floor = re.findall(r"^(exchange_core|insert_heavy) +\d+ +\d+ +(\d+) +[\d,]+ ", out, re.M)
    assert len(floor) == 2 and all(int(ns) > 0 for _, ns in floor), out[-800:]
    assert re.search(r"^without client order ids -?\d+ B/order; with them .* -?\d+ B/order$",
                     out, re.M), out[-400:]


def test_bench_book_runs(capsys):
    bench_book.main(["--n", "2000", "--resting", "2000", "--memory-orders", "20000",
                     "--repeat", "1"])
    out = capsys.readouterr().out
    for phase in bench_book.PHASES:
        assert re.search(rf"^{phase} +[\d,]+", out, re.M), phase
    assert "B/order" in out


def test_bench_service_prints_every_table(capsys, pg_server_url):
    from benchmarks import bench_service
    bench_service.main(["-n", "2000", "--window", "200", "--rates", "2000",
                        "--recovery-n", "3000", "--replay-n", "3000",
                        "--database-url", pg_server_url])
    out = capsys.readouterr().out
    rows = re.findall(r"^fsync=(batch|always) settlement=(on|off) +([14]) +[\d,]+ ", out, re.M)
    assert len(rows) == 6, out
    assert re.search(r"^settlement writer alone +[\d,]+$", out, re.M), out
    assert len(re.findall(r"^ +2,000 +(on|off) +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M)) == 2, out
    assert re.search(r"^restart to serving after 3,000 commands: [\d.]+ s .* [\d.]+ s ", out,
                     re.M), out
    assert re.search(r"^exchange replay of 3,000 commands: [\d,]+ commands/s", out, re.M), out


def test_bench_market_data_prints_every_row(capsys):
    from benchmarks import bench_market_data
    bench_market_data.main(["-n", "2000", "--subscribers", "0,2", "--silent", "1",
                            "--repeat", "1", "--window", "200"])
    out = capsys.readouterr().out
    rows = re.findall(r"^ +(\d+) +(\d+) +[\d,]+ +[\d.]+ +([\d,]+) ", out, re.M)
    assert [(n, s) for n, s, _ in rows] == [("0", "0"), ("2", "0"), ("2", "1")], out
    assert rows[0][2] == "0" and int(rows[1][2].replace(",", "")) > 0, out
    assert re.search(r"^fairness: .* = [\d.]+ ", out, re.M), out
