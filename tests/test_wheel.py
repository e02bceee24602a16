"""The package as a user gets it: a wheel built from this checkout, installed
into a fresh virtual environment, its demos and command run from a folder
outside the checkout (nothing from the source tree on the path)."""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from settlement.database import drop_database

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, **kw):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a folder outside the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base / "dist"),
         str(ROOT)], env=env)
    [wheel] = (base / "dist").glob("exchange_core-*.whl")
    run([sys.executable, "-m", "venv", str(base / "venv")])
    python = base / "venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", str(wheel)], env=env)
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return python, elsewhere, env


def test_the_wheel_runs_outside_the_checkout(installed):
    python, elsewhere, env = installed
    where = run([str(python), "-c", "import engine, settlement; print(engine.__file__); "
                 "print(engine.BOOK_IMPLEMENTATION, engine.CORE_IMPLEMENTATION)"],
                cwd=elsewhere, env=env).stdout.split()
    assert not where[0].startswith(str(ROOT))           # the installed copy, not the source
    done = run([str(python), "-m", "engine", "demo"], cwd=elsewhere, env=env)
    assert "commands" in done.stdout
    exchange = python.with_name("exchange")
    assert "serve" in run([str(exchange), "--help"], cwd=elsewhere, env=env).stdout


def test_the_wheel_settles_into_postgresql(installed, db_url):
    python, elsewhere, env = installed
    done = run([str(python), "-m", "settlement", "demo"], cwd=elsewhere,
               env={**env, "DATABASE_URL": db_url})
    assert "balanced" in done.stdout.lower() or "ok" in done.stdout.lower(), done.stdout


def test_the_wheel_runs_the_exchange_demo(installed, db_url, pg_server_url):
    """``exchange demo`` from the installed script: a server, gateways over
    TCP, settlement into a database of its own on DATABASE_URL's server."""
    python, elsewhere, env = installed
    name = f"exchange_demo_wheel_{secrets.token_hex(4)}"
    try:
        done = run([str(python.with_name("exchange")), "demo", "--seconds", "5",
                    "--database", name], cwd=elsewhere, env={**env, "DATABASE_URL": db_url})
    finally:
        asyncio.run(drop_database(pg_server_url, name))
    assert done.stdout.splitlines()[-1] == "reconciliation: balanced", done.stdout[-3000:]
    assert not (elsewhere / "var").exists()         # its journal was temporary
