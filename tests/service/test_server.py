"""The server and client end to end over a real loopback socket (journal only)."""
from __future__ import annotations

import asyncio
import socket
import struct
from decimal import Decimal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.client import Client, ClientError
from engine.messages import (Accepted, CancelOrder, Deposit, PlaceOrder, Rejected, Replaced, Trade,
                             Transfer)
from engine.service import protocol as P
from servers import TOKENS, connect, run, serving

SYM = "BTC-USDT"


async def fund(server, *accounts):
    t = await connect(server, "treasury")
    for a in accounts:
        await t.deposit(account=a, asset="USDT", amount="1000000", ref=f"usdt-{a}")
        await t.deposit(account=a, asset="BTC", amount="10", ref=f"btc-{a}")
    await t.close()


def test_orders_replies_and_maker_reports(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2, 3)
            maker = await connect(server, gateway_id="maker")
            taker = await connect(server, gateway_id="taker")
            ev = await maker.place(account=2, client_order_id="m1", symbol=SYM, side="buy",
                                   price="20000.00", qty="0.5")
            assert type(ev[0]) is Accepted and ev[0].price == 2_000_000 and ev[0].qty == 5000
            oid = ev[0].order_id
            ev = await maker.replace(account=2, order_id=oid, symbol=SYM, qty="0.4")
            assert [type(e) for e in ev][0] is Replaced and ev[0].priority_kept
            ev = await taker.place(account=3, client_order_id="t1", symbol=SYM, side="sell",
                                   price=Decimal("19000"), qty="0.1", tif="ioc")
            trades = [e for e in ev if type(e) is Trade]
            assert len(trades) == 1 and trades[0].maker_order_id == oid
            report = await asyncio.wait_for(maker.reports().__anext__(), 5)
            assert report.report_seq == 1 and report.seq == trades[0].seq
            assert trades[0] in report.events
            assert all(e.source_account == 2 or e.target_account == 2
                       for e in report.events if type(e) is Transfer)
            assert (await maker.depth(SYM)) == ([(2_000_000, 3000)], [])
            [info] = await maker.open_orders(2)
            assert (info.order_id, info.qty, info.client_order_id) == (oid, 3000, "m1")
            assert (await maker.order(oid)).qty == 3000
            bal = await maker.balances(3)
            assert bal["BTC"] == (10 * 10**8 - 1000 * 10**4, 0)
            ev = await maker.cancel(account=2, client_order_id="m1")
            assert ev[0].order_id == oid
            ev = await taker.cancel(account=3, order_id=oid)       # someone else's order
            assert type(ev[0]) is Rejected
            with pytest.raises(TypeError):
                await maker.place(account=2, client_order_id="f", symbol=SYM, side="buy",
                                  price=20000.0, qty="1")
            for c in (maker, taker):
                await c.close()
    run(go())


def test_roles_and_accounts(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            trading = await connect(server)
            with pytest.raises(ClientError) as e:
                await trading.deposit(account=2, asset="USDT", amount=5)
            assert e.value.reason == P.ERR_NOT_PERMITTED
            with pytest.raises(ClientError):
                await trading.halt(SYM)
            treasury = await connect(server, "treasury")
            with pytest.raises(ClientError):
                await treasury.place(account=2, client_order_id="", symbol=SYM, side="buy",
                                     price=1, qty=1)
            with pytest.raises(ClientError):
                await treasury.adjust(account=2, asset="USDT", amount=5, admin="a", reason="r")
            assert type((await treasury.deposit(account=4, asset="USDT", amount=5))[0]) is Transfer
            limited = await connect(server, "limited")
            with pytest.raises(ClientError) as e:
                await limited.cancel(account=4, order_id=1)
            assert e.value.reason == P.ERR_ACCOUNT_NOT_PERMITTED
            with pytest.raises(ClientError):
                await limited.balances(4)
            admin = await connect(server, "admin")
            assert (await admin.halt(SYM))[0].symbol == SYM
            seq = server.state.seq
            assert seq == 2         # refusals are not journaled and take no seq
            for c in (trading, treasury, limited, admin):
                await c.close()
    run(go())


def test_bad_hello_closes(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            with pytest.raises(ClientError) as e:
                await Client.connect("127.0.0.1", server.port, token="nope", gateway_id="g")
            assert e.value.reason == P.ERR_BAD_TOKEN
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(P.encode_frame(P.Request(1, Deposit(2, "USDT", 5))))
            msg = P.decode_server(await read_frame(reader))
            assert type(msg) is P.Error and msg.reason == P.ERR_HELLO_REQUIRED
            assert await reader.read() == b""       # closed
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(P.encode_frame(P.Hello("g", TOKENS["admin"], 99, 0)))
            msg = P.decode_server(await read_frame(reader))
            assert msg.reason == P.ERR_BAD_VERSION
            assert server.state.seq == 0
    run(go())


async def read_frame(reader) -> bytes:
    size = struct.unpack("<I", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def test_resend_gets_the_original_reply_across_a_restart(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            c = await connect(server, gateway_id="g1")
            await c.balances(2)                           # request id 1: a query, not journaled
            cmd = PlaceOrder(2, "r1", SYM, "buy", price=100, qty=10)
            first = await c.request(cmd)
            rid = c._next_id - 1
            again = await c.resend(rid, cmd)
            assert again == first and server.state.seq == 3
            c.abort()
        async with serving(tmp_path) as server:       # recovered from the shutdown snapshot
            c = await connect(server, gateway_id="g1")
            assert c.welcome.last_request_id == rid
            assert await c.resend(rid, cmd) == first
            with pytest.raises(ClientError) as e:
                await c.resend(1, cmd)
            assert e.value.reason == P.ERR_STALE_REQUEST_ID
            assert server.state.seq == 3
            await c.close()
    run(go())


def test_reports_wait_for_an_absent_gateway(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2, 3)
            maker = await connect(server, gateway_id="maker")
            oid = (await maker.place(account=2, client_order_id="", symbol=SYM, side="sell",
                                     price=100, qty=10))[0].order_id
            await maker.close()
            taker = await connect(server, gateway_id="taker")
            for _ in range(3):
                await taker.place(account=3, client_order_id="", symbol=SYM, side="buy",
                                  price=100, qty=2, tif="ioc")
            await taker.close()
        async with serving(tmp_path) as server:
            maker = await connect(server, gateway_id="maker", last_report_seq=1)
            assert maker.welcome.report_seq == 3 and not maker.welcome.reports_lost
            got = []
            async for r in maker.reports():
                got.append(r)
                if len(got) == 2:
                    break
            assert [r.report_seq for r in got] == [2, 3]
            assert all(any(type(e) is Trade and e.maker_order_id == oid for e in r.events)
                       for r in got)
            await maker.close()
    run(go())


def test_pipelining(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            c = await connect(server)
            futs = [c.request_nowait(PlaceOrder(2, f"p{i}", SYM, "buy", price=100 + i, qty=1))
                    for i in range(500)]
            replies = await asyncio.gather(*futs)
            assert [r.seq for r in replies] == list(range(3, 503))
            assert all(type(r.events[0]) is Accepted for r in replies)
            await c.close()
    run(go())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.binary(max_size=300), min_size=1, max_size=4), hello_first=st.booleans())
def test_garbage_frames_close_only_their_connection(tmp_path_factory, garbage, hello_first):
    folder = tmp_path_factory.mktemp("garbage")

    async def go():
        async with serving(folder) as server:
            good = await connect(server, "treasury")
            await good.deposit(account=2, asset="USDT", amount=1)
            before = server.state.engine.state_hash()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            if hello_first:
                writer.write(P.encode_frame(P.Hello("junk", TOKENS["admin"], 1, 0)))
            for blob in garbage:
                writer.write(struct.pack("<I", len(blob)) + blob)
            writer.write(struct.pack("<I", 2**31))       # oversized: always ends it
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(), 5)     # the server closes it
            except ConnectionResetError:
                pass
            writer.close()
            changed = server.state.engine.state_hash() != before
            # only a frame that happens to be a valid admin request may change state
            assert not changed or hello_first
            assert type((await good.deposit(account=2, asset="USDT", amount=1))[0]) is Transfer
            await good.close()
    run(go())


def test_slow_reader_is_disconnected_not_waited_for(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            server.outbound_bytes_max = 64 * 1024
            await fund(server, 2)
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(P.encode_frame(P.Hello("slow", TOKENS["trading"], 1, 0)))
            frames = b"".join(P.encode_frame(P.QueryDepth(i, SYM, 1000)) for i in range(1, 40001))
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sock, frames)
            for _ in range(200):
                if not any(c.gateway_id == "slow" for c in server.connections):
                    break
                await asyncio.sleep(0.02)
            assert not any(c.gateway_id == "slow" for c in server.connections)
            fast = await connect(server)
            assert await fast.balances(2)
            await fast.close()
            sock.close()
    run(go())


def test_a_stalled_ledger_pauses_reading_and_drops_nothing(tmp_path, db_url):
    from settle_db import BalancesLocked

    async def go():
        async with serving(tmp_path, database_url=db_url, database_extra=(
                "batch_events_max = 100\nqueue_events_max = 200")) as server:
            server.settle_backlog_max = 50
            treasury = await connect(server, "treasury")
            await treasury.deposit(account=2, asset="USDT", amount=1)
            await server.writer.flush()
            async with BalancesLocked(db_url) as lock:     # every batch stalls at its balances
                sent = [treasury.request_nowait(Deposit(2, "USDT", i + 1)) for i in range(3000)]
                for _ in range(500):
                    if server.reading_paused:
                        break
                    await asyncio.sleep(0.01)
                assert server.reading_paused             # intake stopped, the engine waits for nobody
                assert not all(f.done() for f in sent)
                await lock.release()
                replies = await asyncio.gather(*sent)
            assert [r.seq for r in replies] == list(range(2, 3002))
            await server.settle_backlog()
            assert server.writer.committed_seq == server.state.seq == 3001
            assert not server.reading_paused
            await treasury.close()
    run(go())
