"""Sessions that misbehave and parts that fail: the server answers, bounds or
stops, and never applies a command twice or loses an acknowledged one."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

import engine.service.journal as journal_module
import engine.service.server as server_module
from engine.client import ClientError
from engine.messages import Deposit, PlaceOrder, Trade, Transfer, Triggered, Withdraw
from engine.service import protocol as P
from servers import TOKENS, connect, run, serving, write_config

SYM = "BTC-USDT"


def test_a_request_id_carrying_another_command_is_refused_not_answered(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            c = await connect(server, "treasury")
            await c.request(Deposit(2, "USDT", 100))
            rid = c.last_request_id
            with pytest.raises(ClientError) as e:
                await c.resend(rid, Withdraw(2, "USDT", 60))
            assert e.value.reason == P.ERR_REQUEST_ID_REUSED
            assert server.state.engine.balance(2, "USDT") == (100, 0)
            await c.close()
    run(go())


def test_another_credential_cannot_take_over_a_gateway_id(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            treasury = await connect(server, "treasury", gateway_id="wallet")
            await treasury.request(Deposit(2, "USDT", 100, ref="d1"))
            intruder = await connect(server, "trading", gateway_id="wallet")
            assert intruder.welcome.last_request_id == 0          # a gateway of its own
            with pytest.raises(ClientError) as e:                 # and still no money moves
                await intruder.resend(1, Deposit(2, "USDT", 100, ref="d1"))
            assert e.value.reason == P.ERR_NOT_PERMITTED
            # the treasury's connection is untouched
            assert (await treasury.request(Deposit(2, "USDT", 1)))[0].amount == 1
            for c in (treasury, intruder):
                await c.close()
    run(go())


def test_a_connection_that_never_says_hello_is_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "HELLO_TIMEOUT_S", 0.2)

    async def go():
        async with serving(tmp_path) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            data = await asyncio.wait_for(reader.read(), 5)
            assert P.decode_server(data[4:]).reason == P.ERR_HELLO_REQUIRED
            writer.close()
    run(go())


def test_reading_resumes_after_a_flood_of_queries(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            server.pending_max = 10
            c = await connect(server)
            answers = await asyncio.gather(*[c.balances(2) for _ in range(300)])
            assert len(answers) == 300
            t = await connect(server, "treasury")
            assert (await asyncio.wait_for(t.request(Deposit(2, "USDT", 5)), 5))[0].amount == 5
            assert not server.reading_paused
            for x in (c, t):
                await x.close()
    run(go())


def test_close_waits_for_the_replies_of_what_was_sent(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            c = await connect(server, "treasury")
            futs = [c.request_nowait(Deposit(2, "USDT", i + 1)) for i in range(50)]
            await c.close()
            replies = await asyncio.gather(*futs)
            assert [r.seq for r in replies] == list(range(1, 51))
    run(go())


def test_a_triggered_stop_owner_gets_its_trade_transfers(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            t = await connect(server, "treasury")
            for account in (2, 3, 4):
                await t.deposit(account=account, asset="USDT", amount="1000000")
                await t.deposit(account=account, asset="BTC", amount="10")
            owner = await connect(server, gateway_id="stops")
            other = await connect(server, gateway_id="market")
            # a buy stop (IOC) at 100.00 of account 2, resting liquidity above it
            await owner.request(PlaceOrder(2, "s", SYM, "buy", type="stop_limit", tif="ioc",
                                           price=10_100, qty=5, stop_price=10_000))
            await other.request(PlaceOrder(3, "", SYM, "sell", price=10_050, qty=3))
            # a trade at 100.00 moves the last price: the stop triggers, trades 3, cancels 2
            await other.request(PlaceOrder(4, "", SYM, "sell", price=10_000, qty=1))
            await other.request(PlaceOrder(3, "", SYM, "buy", price=10_000, qty=1))
            got = []
            async for report in owner.reports():
                got.extend(report.events)
                if any(type(e) is Trade for e in got):
                    break
            assert any(type(e) is Triggered for e in got)
            transfers = [e for e in got if type(e) is Transfer and e.trade_id]
            assert transfers and all(2 in (e.source_account, e.target_account)
                                     for e in transfers)
            for c in (t, owner, other):
                await c.close()
    run(go())


def test_a_broken_journal_stops_the_server_with_an_outcome_unknown(tmp_path, monkeypatch):
    async def go():
        async with serving(tmp_path, fsync="always") as server:
            c = await connect(server, "treasury")
            await c.request(Deposit(2, "USDT", 5))

            def fail(fd):
                raise OSError(5, "Input/output error")
            monkeypatch.setattr(journal_module, "_datasync", fail)
            with pytest.raises(ClientError) as e:
                await c.request(Deposit(2, "USDT", 7))
            assert e.value.reason == P.ERR_OUTCOME_UNKNOWN      # the batch may be on disk
            assert server.journal.failed and server.failure is not None
            await asyncio.wait_for(server._stop.wait(), 5)
            monkeypatch.undo()
    run(go())


def test_a_failed_settlement_writer_stops_the_server(tmp_path, db_url):
    async def go():
        async with serving(tmp_path, database_url=db_url) as server:
            c = await connect(server, "treasury")
            await c.request(Deposit(2, "USDT", 5))
            await server.settle_backlog()

            async def broken(events):
                raise RuntimeError("the writer is gone")
            server.writer.put = broken
            await c.request(Deposit(2, "USDT", 6))
            await asyncio.wait_for(server._stop.wait(), 5)
            assert "settlement writer failed" in server.failure
    run(go())


def test_an_unreachable_database_is_one_line_and_exit_2(tmp_path, db_url):
    bad = db_url.rsplit("/", 1)[0] + "/exchange_no_such_database"
    config = write_config(tmp_path, database_url=bad)
    done = subprocess.run([str(Path(sys.executable).with_name("exchange")), "serve",
                           "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "exchange: error: database:" in done.stderr
