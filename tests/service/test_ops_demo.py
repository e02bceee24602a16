"""``exchange demo`` as a user runs it: a real process, from a folder outside
the checkout, against a real PostgreSQL; it trades, settles and ends
balanced, and its database really holds the ledger it summarised."""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from settlement.database import ENV_URL, drop_database, with_database

EXCHANGE = Path(sys.executable).with_name("exchange")


def exchange(*argv: str, cwd: Path, server_url: str, timeout_s: float = 300):
    cmd = ([str(EXCHANGE)] if EXCHANGE.exists()
           else [sys.executable, "-m", "engine.service.cli"]) + list(argv)
    env = {**os.environ, ENV_URL: server_url}
    env.pop("PYTHONPATH", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def summary_count(out: str, row: str) -> int:
    """A count from the summary table (plain ASCII: stdout is a pipe)."""
    m = re.search(rf"^\|\s*{re.escape(row)}\s*\|\s*([\d,]+)", out, re.MULTILINE)
    assert m is not None, f"no {row!r} row in:\n{out}"
    return int(m.group(1).replace(",", ""))


@pytest.fixture
def demo_database(pg_server_url):
    name = f"exchange_demo_test_{secrets.token_hex(4)}"
    yield name
    asyncio.run(drop_database(pg_server_url, name))


def test_demo_trades_settles_and_ends_balanced(tmp_path, pg_server_url, demo_database):
    done = exchange("demo", "--seconds", "3", "--gateways", "2", "--database", demo_database,
                    cwd=tmp_path, server_url=pg_server_url)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "reconciliation: balanced"
    trades = summary_count(done.stdout, "trades")
    commands = summary_count(done.stdout, "commands (engine seq)")
    assert trades > 0
    assert commands > trades
    # progress lines while trading (plain: stdout is not a terminal)
    assert any("commands/s" in line and "settlement lag" in line for line in lines)
    # the summary speaks of the ledger as PostgreSQL holds it
    url = with_database(pg_server_url, demo_database)

    async def ledger():
        conn = await asyncpg.connect(url)
        try:
            return (await conn.fetchval("SELECT count(*) FROM trades"),
                    await conn.fetchval("SELECT last_seq FROM settlement_state"),
                    await conn.fetch("SELECT status, through_seq FROM reconciliation_runs"))
        finally:
            await conn.close()
    trade_rows, last_seq, runs = asyncio.run(ledger())
    assert trade_rows == trades == summary_count(done.stdout, "ledger rows: trades")
    assert last_seq == commands
    assert [(r["status"], r["through_seq"]) for r in runs] == [("ok", commands)]
    # the journal lived in a temporary folder: nothing left in the working folder
    assert list(tmp_path.iterdir()) == []
    # the operators' view of the same ledger adds up, and the database-only audit agrees
    overview = exchange("overview", cwd=tmp_path, server_url=url)
    assert overview.returncode == 0, overview.stdout + overview.stderr
    assert "does not add up" not in overview.stdout and "adds up" in overview.stdout
    audit = exchange("reconcile", cwd=tmp_path, server_url=url)
    assert audit.stdout.splitlines()[-1] == "reconciliation: balanced", audit.stdout


@pytest.mark.parametrize("argv", [["--gateways", "0"], ["--seconds", "-1"],
                                  ["--database", "no such name"], ["--database", "ledger"]])
def test_demo_refuses_bad_arguments_in_one_line(tmp_path, pg_server_url, argv):
    done = exchange("demo", *argv, cwd=tmp_path, server_url=pg_server_url, timeout_s=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("exchange: error:")
