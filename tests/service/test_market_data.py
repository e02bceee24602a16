"""Market data: the per-turn diff against a slow obvious model (the engine's
own depth), then end to end over a real loopback socket: subscribers' local
books, trades and sequence numbers under a random multi-client flow,
conflation, halts, slow and dead readers, bad subscriptions, and
cancel-on-disconnect with a client process killed by SIGKILL."""
from __future__ import annotations

import asyncio
import random
import socket
import struct
import sys

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.client
from engine.client import Client, ClientError, LocalBook
from engine.flow import Flow, new_engine
from engine.messages import (Accepted, CancelOrder, Cancelled, Deposit, PlaceOrder, ReplaceOrder,
                             Trade)
from engine.service import protocol as P
from engine.service.config import load_config
from engine.service.journal import JournalWriteError
from engine.service.market_data import MarketData
from engine.service.recovery import open_journal, replay
from engine.service.server import CANCEL_ON_DISCONNECT_GATEWAY, Server
from engine.service.state import ServiceState
from servers import TOKENS, connect, run, serving, write_config

SYMBOLS = ("BTC-USDT", "ETH-BTC")
MID = {"BTC-USDT": 3_000_000, "ETH-BTC": 6_670}


async def fund(server, *accounts):
    t = await connect(server, "treasury")
    for a in accounts:
        await t.deposit(account=a, asset="USDT", amount="100000000", ref=f"usdt-{a}")
        await t.deposit(account=a, asset="BTC", amount="1000", ref=f"btc-{a}")
        await t.deposit(account=a, asset="ETH", amount="100000", ref=f"eth-{a}")
    await t.close()


def book_of(engine, symbol, depth):
    bids, asks = engine.depth(symbol, depth)
    return [tuple(x) for x in bids], [tuple(x) for x in asks]


async def until(predicate, timeout_s: float = 5.0) -> bool:
    """Whether ``predicate()`` holds within ``timeout_s`` (polled)."""
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def hello(gateway_id: str, cancel_on_disconnect: bool = True) -> bytes:
    return P.encode_frame(P.Hello(gateway_id, TOKENS["trading"], P.PROTOCOL_VERSION, 0,
                                  cancel_on_disconnect))


def place(rid: int, price: int, account: int = 2) -> bytes:
    return P.encode_frame(P.Request(rid, PlaceOrder(account, f"r{rid}", "BTC-USDT", "buy",
                                                    price=price, qty=1)))


async def raw_session(server, data: bytes) -> list:
    """Send ``data`` in one write on a fresh connection; what the server sent
    until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(data)
    try:
        received = await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:                # an abort: what was sent is lost too
        received = b""
    writer.close()
    return _frames(received)[0]


def gateway_id_of(server, name: str) -> str:
    [gid] = [gid for gid in server.state.gateways if gid.endswith(":" + name)]
    return gid


# ====================================================================== the diff, no sockets
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_published_updates_rebuild_every_depth_exactly(seed):
    """The ledger flow (cross markets, halts, stops, STP, cancels, amends) in
    turns of random size; subscribers at several depths, joining and leaving;
    after every turn each local book equals depth(symbol, its depth), seqs
    are contiguous, and every trade is published once, in order."""
    rng = random.Random(seed)
    eng = new_engine("cross")
    md = MarketData(eng, depth_max=1000)
    flow = Flow("ledger", seed, engine=eng, prefill=300)
    symbols = [i.symbol for i in eng.instruments]
    books: dict[tuple[str, str], LocalBook] = {}
    trades_published = {s: [] for s in symbols}
    trades_made = {s: [] for s in symbols}

    def deliver(frame: bytes, key: str):
        msg = P.decode_server(frame[4:])
        book = books[(key, msg.symbol)]
        if type(msg) is P.BookSnapshot:
            book._reset(msg)
            return
        assert type(msg) is P.BookUpdate
        assert msg.seq == book.seq + 1, (key, msg.symbol, msg.seq, book.seq)
        book._apply(msg)
        if key == "deep":                       # subscribed all along
            trades_published[msg.symbol].extend((t.trade_id, t.price, t.qty, t.taker_side)
                                                 for t in msg.trades)
        return msg

    def subscribe(key, symbol, depth):
        books[(key, symbol)] = LocalBook(symbol, depth)
        deliver(md.subscribe(key, symbol, depth), key)

    for key, depth in (("one", 1), ("five", 5), ("deep", 1000)):
        for s in symbols:
            subscribe(key, s, depth)
    stream = flow.stream(flow.setup_count + 6000)
    done = False
    turn = 0
    while not done:
        for _ in range(rng.choice((1, 1, 3, 10, 50, 200))):
            try:
                command, events = next(stream)
            except StopIteration:
                done = True
                break
            md.note(command, events)
            for e in events:
                if type(e) is Trade:
                    trades_made[e.symbol].append((e.trade_id, e.price, e.qty, e.taker_side))
        for frame, keys in md.publish():
            sent = None
            for key in keys:
                msg = deliver(frame, key)
                sent = msg if sent is None else sent
                assert msg == sent                  # one encoding per group, the same bytes
        for (key, symbol), book in books.items():
            bids, asks = book_of(eng, symbol, book.depth)
            assert (book.bids, book.asks) == (bids, asks), (turn, key, symbol)
            assert book.halted == eng.market(symbol).halted
        turn += 1
        if turn % 17 == 0:                          # subscriptions come and go between turns
            key, symbol = rng.choice(("one", "five", "mid")), rng.choice(symbols)
            if (key, symbol) in books and rng.random() < 0.5:
                assert md.unsubscribe(key, symbol)
                del books[(key, symbol)]
            else:
                subscribe(key, symbol, rng.choice((1, 2, 7, 30)))
    assert sum(map(len, trades_made.values())) > 100
    for s in symbols:
        assert trades_published[s] == trades_made[s]
    for key, symbol in list(books):
        md.unsubscribe(key, symbol)
    assert not md.active and not md.subscriptions


def test_a_turn_is_conflated_and_trades_are_not():
    eng = new_engine("cross")
    for account in (2, 3):
        eng.submit(Deposit(account, "USDT", 10**13))
        eng.submit(Deposit(account, "BTC", 10**10))
    md = MarketData(eng)
    snap = P.decode_server(md.subscribe("k", "BTC-USDT", 10)[4:])
    turn = [PlaceOrder(2, "a", "BTC-USDT", "buy", price=100, qty=1),
            PlaceOrder(2, "b", "BTC-USDT", "buy", price=100, qty=2),
            CancelOrder(2, client_order_id="a"),
            PlaceOrder(2, "c", "BTC-USDT", "sell", price=200, qty=5),
            PlaceOrder(3, "", "BTC-USDT", "buy", price=200, qty=1, tif="ioc"),
            PlaceOrder(3, "", "BTC-USDT", "buy", price=200, qty=1, tif="ioc")]
    for c in turn:
        md.note(c, eng.submit(c))
    [(frame, keys)] = md.publish()
    update = P.decode_server(frame[4:])
    assert keys == ["k"] and update.seq == snap.seq + 1
    assert update.bids == [(100, 2)] and update.asks == [(200, 3)]     # final totals, once each
    assert [(t.price, t.qty, t.taker_side) for t in update.trades] == [(200, 1, "buy")] * 2
    assert md.publish() == []                   # nothing changed: nothing sent, seq kept
    c = CancelOrder(2, client_order_id="zzz")   # a rejected cancel marks, publishes nothing
    md.note(c, eng.submit(c))
    assert md.publish() == []


def test_a_level_entering_a_shallow_view_is_sent():
    eng = new_engine("cross")
    eng.submit(Deposit(2, "USDT", 10**13))
    md = MarketData(eng)
    for p in (100, 99, 98):
        eng.submit(PlaceOrder(2, "", "BTC-USDT", "buy", price=p, qty=1))
    md.subscribe("shallow", "BTC-USDT", 2)
    md.subscribe("deep", "BTC-USDT", 3)
    c = CancelOrder(2, order_id=1)
    md.note(c, eng.submit(c))
    updates = {keys[0]: P.decode_server(frame[4:]) for frame, keys in md.publish()}
    assert updates["shallow"].bids == [(100, 0), (98, 1)]      # 98 entered the top 2
    assert updates["deep"].bids == [(100, 0)]
    assert updates["shallow"].seq == updates["deep"].seq       # one seq per symbol
    # a change below the shallow view: an empty update keeps its seqs contiguous
    c = PlaceOrder(2, "", "BTC-USDT", "buy", price=97, qty=1)
    md.note(c, eng.submit(c))
    updates = {keys[0]: P.decode_server(frame[4:]) for frame, keys in md.publish()}
    assert updates["deep"].bids == [(97, 1)] and updates["shallow"].bids == []
    assert updates["shallow"].seq == updates["deep"].seq == 3


# ====================================================================== over the wire
def test_a_random_flow_keeps_every_subscriber_exact(tmp_path):
    """Three trading gateways send random bursts on two symbols (one of them
    subscribes on the connection it trades on); subscribers at depths 1, 5,
    20 and 1000.  After each burst every local book equals the server's
    depth(); trades seen == trades in the replies; seqs contiguous."""
    rng = random.Random(11)

    async def go():
        async with serving(tmp_path) as server:
            accounts = list(range(2, 8))
            await fund(server, *accounts)
            eng = server.state.engine
            admin = await connect(server, "admin")
            traders = [await connect(server, gateway_id=f"t{i}") for i in range(3)]
            subs = [await connect(server, gateway_id=f"s{i}") for i in range(3)]
            plan = {(traders[0], "BTC-USDT"): 5, (subs[0], "BTC-USDT"): 1,
                    (subs[0], "ETH-BTC"): 1, (subs[1], "BTC-USDT"): 20,
                    (subs[2], "BTC-USDT"): 1000, (subs[2], "ETH-BTC"): 1000}
            for (c, symbol), depth in plan.items():
                book = await c.subscribe(symbol, depth)
                assert book.synced and (book.bids, book.asks) == book_of(eng, symbol, depth)
            watchers = {c for c, _ in plan}
            seen = {key: [] for key in plan}        # (client, symbol) -> messages
            made = {s: [] for s in SYMBOLS}         # trades in the replies
            open_ids = []
            unsubscribed_at = None

            def random_command():
                account = rng.choice(accounts)
                r = rng.random()
                if r < 0.55 or not open_ids:
                    symbol = rng.choice(SYMBOLS)
                    return PlaceOrder(account, "", symbol, rng.choice(("buy", "sell")),
                                      tif=rng.choice(("gtc", "gtc", "gtc", "ioc")),
                                      price=MID[symbol] + rng.randrange(-30, 30),
                                      qty=rng.randrange(1, 20))
                oid, owner = rng.choice(open_ids)
                if r < 0.8:
                    return CancelOrder(owner, order_id=oid)
                return ReplaceOrder(owner, oid, qty=rng.randrange(1, 20))

            async def collect():
                for c in watchers:
                    await c.markets()               # a barrier: earlier updates are in
                    for msg in c.market_data_nowait():
                        seen[(c, msg.symbol)].append(msg)

            for burst in range(40):
                if burst == 12:                     # resubscribe at another depth
                    await subs[1].subscribe("BTC-USDT", 3)
                    plan[(subs[1], "BTC-USDT")] = 3
                if burst == 20:
                    await subs[0].unsubscribe("ETH-BTC")
                    unsubscribed_at = len(made["ETH-BTC"])
                    del plan[(subs[0], "ETH-BTC")]
                if burst == 25:
                    await admin.halt("ETH-BTC")
                if burst == 30:
                    await admin.resume("ETH-BTC")
                batches = await asyncio.gather(*(
                    t.request_many([random_command() for _ in range(rng.randrange(5, 60))])
                    for t in traders))
                for replies in batches:
                    for reply in replies:
                        for e in reply.events:
                            if type(e) is Accepted:
                                open_ids.append((e.order_id, e.account))
                            elif type(e) is Trade:
                                made[e.symbol].append((e.trade_id, e.price, e.qty, e.taker_side))
                open_ids[:] = [(o, a) for o, a in open_ids if eng.order(o) is not None]
                await collect()
                for (c, symbol), depth in plan.items():
                    book = c.book(symbol)
                    assert book.synced
                    assert (book.bids, book.asks) == book_of(eng, symbol, depth), (burst, symbol)
                    assert book.halted == eng.market(symbol).halted
                    assert book.seq == server.md.feeds[symbol].seq
            assert (await subs[2].depth("BTC-USDT", 1000)) == book_of(eng, "BTC-USDT", 1000)
            assert all(len(made[s]) > 20 for s in SYMBOLS), made
            for (c, symbol), messages in seen.items():
                # contiguous from each snapshot; resubscribes start again at theirs
                assert type(messages[0]) is P.BookSnapshot
                for before, after in zip(messages, messages[1:]):
                    assert type(after) is P.BookSnapshot or after.seq == before.seq + 1
                trades = [(t.trade_id, t.price, t.qty, t.taker_side) for m in messages
                          if type(m) is P.BookUpdate for t in m.trades]
                expected = made[symbol]
                if c is subs[0] and symbol == "ETH-BTC":
                    expected = expected[:unsubscribed_at]
                assert trades == expected, (c.gateway_id, symbol)
            assert any(m.halted for m in seen[(subs[2], "ETH-BTC")] if type(m) is P.BookUpdate)
            for c in {admin, *traders, *subs}:
                await c.close()
    run(go())


def test_one_turn_is_one_update_over_the_wire(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            trader = await connect(server)
            sub = await connect(server, gateway_id="sub")
            book = await sub.subscribe("BTC-USDT")
            await trader.request_many([
                PlaceOrder(2, "a", "BTC-USDT", "buy", price=100, qty=1),
                PlaceOrder(2, "b", "BTC-USDT", "buy", price=100, qty=2),
                CancelOrder(2, client_order_id="a"),
                ReplaceOrder(2, 2, qty=1)])            # order "b" is order id 2
            await sub.markets()
            snapshot, *updates = sub.market_data_nowait()
            assert type(snapshot) is P.BookSnapshot
            assert len(updates) == 1                # three changes to one level: one entry
            assert updates[0].bids == [(100, 1)] and updates[0].seq == snapshot.seq + 1
            assert book.bids == [(100, 1)]
            await sub.unsubscribe("BTC-USDT")
            assert sub.book("BTC-USDT") is None
            await trader.request(PlaceOrder(2, "", "BTC-USDT", "buy", price=101, qty=1))
            await sub.markets()
            assert sub.market_data_nowait() == []   # nothing after the unsubscribe
            assert not server.md.active
            for c in (trader, sub):
                await c.close()
    run(go())


def test_market_data_is_written_without_a_request_to_carry_it(tmp_path):
    """Under load market data leaves at most once per flush interval; what
    waits is written by the timer, not only with the next reply."""
    async def go():
        async with serving(tmp_path) as server:
            server.market_data_flush_interval_s = 0.2
            await fund(server, 2)
            trader = await connect(server)
            sub = await connect(server, gateway_id="sub")
            book = await sub.subscribe("BTC-USDT", 5)
            stream = sub.market_data()
            assert type(await stream.__anext__()) is P.BookSnapshot
            for i in range(3):
                await trader.place(account=2, client_order_id="", symbol="BTC-USDT", side="buy",
                                   price=100 + i, qty=1)
            updates = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(3)]
            assert [u.seq for u in updates] == [book.seq - 2, book.seq - 1, book.seq]
            assert book.bids == [(102, 1), (101, 1), (100, 1)]
            for c in (trader, sub):
                await c.close()
    run(go())


def test_a_halted_symbol(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            admin = await connect(server, "admin")
            trader = await connect(server)
            await trader.place(account=2, client_order_id="r", symbol="BTC-USDT", side="buy",
                               price=100, qty=3)
            sub = await connect(server, gateway_id="sub")
            book = await sub.subscribe("BTC-USDT", 5)
            assert not book.halted
            await admin.halt("BTC-USDT")
            late = await connect(server, gateway_id="late")
            assert (await late.subscribe("BTC-USDT", 5)).halted       # in the snapshot
            await trader.cancel(account=2, client_order_id="r")          # still changes the book
            await sub.markets()
            snapshot, halted, cancelled = sub.market_data_nowait()
            assert (halted.halted, halted.bids, halted.seq) == (True, [], snapshot.seq + 1)
            assert (cancelled.halted, cancelled.bids) == (True, [(100, 0)])
            assert book.bids == [] and book.halted
            await admin.resume("BTC-USDT")
            await sub.markets()
            [resumed] = sub.market_data_nowait()
            assert not resumed.halted and not book.halted
            await late.markets()
            assert [m.halted for m in late.market_data_nowait()] == [True, True, False]
            for c in (admin, trader, sub, late):
                await c.close()
    run(go())


def test_a_gap_gets_a_fresh_snapshot(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            trader = await connect(server)
            sub = await connect(server, gateway_id="sub")
            book = await sub.subscribe("BTC-USDT", 5)
            await trader.place(account=2, client_order_id="", symbol="BTC-USDT", side="buy",
                               price=100, qty=3)
            await sub.markets()
            # a message that skips a seq (one TCP connection never does): the
            # client drops the book and asks again
            sub._dispatch(P.BookUpdate("BTC-USDT", book.seq + 2, [(1, 1)], [], [], False))
            assert not book.synced
            await sub.markets()
            messages = sub.market_data_nowait()
            assert [type(m) for m in messages[-2:]] == [P.MarketDataResync, P.BookSnapshot]
            assert messages[-2].reason == P.RESYNC_GAP
            assert book.synced and book.bids == [(100, 3)]
            for c in (trader, sub):
                await c.close()
    run(go())


def test_bad_subscriptions_are_refused_and_the_connection_carries_on(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            c = await connect(server)
            for symbol, depth, reason in (
                    ("NOPE-USDT", 10, P.ERR_UNKNOWN_SYMBOL), ("BTC-USDT\x00", 10, P.ERR_UNKNOWN_SYMBOL),
                    ("", 10, P.ERR_UNKNOWN_SYMBOL), ("BTC-USDT", 0, P.ERR_BAD_DEPTH),
                    ("BTC-USDT", -5, P.ERR_BAD_DEPTH), ("BTC-USDT", 1001, P.ERR_BAD_DEPTH),
                    ("BTC-USDT", 2**64 - 1, P.ERR_BAD_DEPTH), ("BTC-USDT", "20", P.ERR_BAD_DEPTH),
                    ("BTC-USDT", 2.5, P.ERR_BAD_DEPTH), ("BTC-USDT", None, P.ERR_BAD_DEPTH),
                    ("BTC-USDT", True, P.ERR_BAD_DEPTH)):
                with pytest.raises(ClientError) as e:
                    await c.subscribe(symbol, depth)
                assert e.value.reason == reason, (symbol, depth)
                assert c.book(symbol) is None
            assert "1..1000" in str((await _refusal(c, "BTC-USDT", 0)))
            assert (await c.subscribe("BTC-USDT", 1000)).synced
            with pytest.raises(ClientError):            # a bad resubscribe keeps the old one
                await c.subscribe("BTC-USDT", 0)
            assert c.book("BTC-USDT") is not None and c.book("BTC-USDT").depth == 1000
            await c.unsubscribe("ETH-BTC")              # not subscribed: fine
            assert await c.balances(2) is not None
            await c.close()
    run(go())


async def _refusal(client, symbol, depth):
    try:
        await client.subscribe(symbol, depth)
    except ClientError as e:
        return e


_any = st.recursive(st.none() | st.booleans() | st.integers(min_value=-2**63, max_value=2**64 - 1)
                    | st.floats(allow_nan=False) | st.text(max_size=12) | st.binary(max_size=8),
                    lambda inner: st.lists(inner, max_size=3), max_leaves=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.lists(st.tuples(_any, _any, _any, st.booleans()), min_size=1, max_size=6))
def test_malformed_subscribe_fields_over_the_wire(tmp_path_factory, fields):
    folder = tmp_path_factory.mktemp("subscribe")

    async def go():
        async with serving(folder) as server:
            good = await connect(server, gateway_id="good")
            await good.subscribe("BTC-USDT", 3)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(P.encode_frame(P.Hello("raw", TOKENS["trading"], 1, 0)))
            assert type(P.decode_server(await read_frame(reader))) is P.Welcome
            for rid, symbol, depth, short in fields:
                body = ["Subscribe", rid, symbol] if short else ["Subscribe", rid, symbol, depth]
                writer.write(struct.pack("<I", len(body := msgspec.msgpack.encode(body))) + body)
                # depth: any scalar is the server's to refuse; a nested one is malformed
                malformed = type(rid) is not int or type(symbol) is not str or not (
                    -2**63 <= rid < 2**64) or (not short and type(depth) in (list, bytes))
                bad_rid = not malformed and not 0 < rid <= P.REQUEST_ID_MAX
                try:
                    msg = P.decode_server(await asyncio.wait_for(read_frame(reader), 5))
                except asyncio.IncompleteReadError:
                    raise AssertionError("closed without an Error frame")
                if malformed or bad_rid:
                    assert type(msg) is P.Error and msg.request_id == 0
                    assert msg.reason == (P.ERR_MALFORMED if malformed
                                          else P.ERR_INVALID_REQUEST_ID), (rid, depth, msg)
                    break
                if type(msg) is P.Error:
                    assert msg.request_id == rid
                    assert msg.reason in (P.ERR_UNKNOWN_SYMBOL, P.ERR_BAD_DEPTH)
                else:
                    assert type(msg) is P.BookSnapshot and msg.request_id == rid
            writer.close()
            assert (await good.depth("BTC-USDT")) == ([], [])      # the server carries on
            assert good.book("BTC-USDT").synced
            await good.close()
    run(go())


async def read_frame(reader) -> bytes:
    size = struct.unpack("<I", await reader.readexactly(4))[0]
    return await reader.readexactly(size)


def test_a_deeply_nested_depth_is_a_malformed_frame(tmp_path):
    """5,000 nested arrays fit in one frame: refused as malformed (an Error,
    then the close), never a recursion error in the server."""
    async def go():
        async with serving(tmp_path) as server:
            good = await connect(server, gateway_id="good")
            for depth in (b"\x91" * 5000 + b"\x01", b"\x91\x14", b"\xc4\x01\x14"):
                body = (b"\x94" + msgspec.msgpack.encode("Subscribe") + msgspec.msgpack.encode(7)
                        + msgspec.msgpack.encode("BTC-USDT") + depth)
                messages = await raw_session(server, hello("nested", False)
                                             + struct.pack("<I", len(body)) + body)
                assert [type(m) for m in messages] == [P.Welcome, P.Error]
                assert (messages[1].request_id, messages[1].reason) == (0, P.ERR_MALFORMED)
            assert await good.depth("BTC-USDT") == ([], [])       # the server carries on
            assert server.failure is None
            await good.close()
    run(go())


def test_market_data_request_ids_are_checked(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            for msg in (P.Subscribe(0, "BTC-USDT", 5), P.Subscribe(-1, "BTC-USDT", 5),
                        P.Subscribe(2**63, "BTC-USDT", 5), P.Unsubscribe(0, "BTC-USDT")):
                messages = await raw_session(server, hello("rid", False) + P.encode_frame(msg))
                assert [type(m) for m in messages] == [P.Welcome, P.Error], msg
                assert (messages[1].request_id, messages[1].reason) == (
                    0, P.ERR_INVALID_REQUEST_ID)
            assert not server.md.active
    run(go())


def test_every_subscribe_is_answered_once(tmp_path):
    """A Subscribe replaced in the turn it was read (by a second Subscribe of
    the symbol, or an Unsubscribe) is answered ``superseded``; the last one
    stands."""
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            trader = await connect(server)
            await trader.place(account=2, client_order_id="", symbol="ETH-BTC", side="buy",
                               price=6000, qty=1)
            c = await connect(server, gateway_id="c")
            first, second = await asyncio.wait_for(asyncio.gather(
                c.subscribe("ETH-BTC", 5), c.subscribe("ETH-BTC", 7), return_exceptions=True), 5)
            assert type(first) is ClientError and first.reason == P.ERR_SUPERSEDED
            assert second is c.book("ETH-BTC") and second.synced and second.depth == 7
            assert second.bids == [(6000, 1)]
            subscribed, unsubscribed = await asyncio.wait_for(asyncio.gather(
                c.subscribe("BTC-USDT", 5), c.unsubscribe("BTC-USDT"), return_exceptions=True), 5)
            assert type(subscribed) is ClientError and subscribed.reason == P.ERR_SUPERSEDED
            assert unsubscribed is None and c.book("BTC-USDT") is None
            [conn] = [x for x in server.connections if x.gateway_id.endswith(":c")]
            assert server.md.subscriptions[conn] == {"ETH-BTC": 7}
            await trader.place(account=2, client_order_id="", symbol="ETH-BTC", side="buy",
                               price=6001, qty=1)
            await c.markets()
            assert second.bids == book_of(server.state.engine, "ETH-BTC", 7)[0]
            for x in (trader, c):
                await x.close()
    run(go())


def test_depth_queries_have_the_subscriptions_cap(tmp_path):
    """``server.market_data_depth_max`` bounds a depth query as it bounds a
    subscription (both up to protocol.DEPTH_LEVELS_MAX)."""
    async def go():
        path = write_config(tmp_path)
        path.write_text(path.read_text().replace(
            "[server]\n", "[server]\nmarket_data_depth_max = 1200\n", 1))
        server = Server(load_config(path))
        await server.start()
        try:
            await fund(server, 2, 3)
            trader = await connect(server)
            for account in (2, 3):
                await trader.request_many([
                    PlaceOrder(account, "", "BTC-USDT", "buy", price=1000 + 2 * i + account, qty=1)
                    for i in range(700)])
            bids, _ = await trader.depth("BTC-USDT", 5000)
            assert len(bids) == 1200 and bids == book_of(server.state.engine, "BTC-USDT", 1200)[0]
            assert (await trader.subscribe("BTC-USDT", 1200)).bids == bids
            with pytest.raises(ClientError) as e:
                await trader.subscribe("BTC-USDT", 1201)
            assert e.value.reason == P.ERR_BAD_DEPTH
            await trader.close()
        finally:
            server.request_stop()
            await server.serve()
    run(go())


# ====================================================================== slow readers
def _slow_socket(server, gateway_id, symbol="BTC-USDT", depth=1000):
    """A raw subscriber that reads nothing (tiny buffers on both ends)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(P.encode_frame(P.Hello(gateway_id, TOKENS["trading"], 1, 0))
                 + P.encode_frame(P.Subscribe(1, symbol, depth)))
    sock.setblocking(False)
    return sock


async def _server_conn(server, gateway_id):
    for _ in range(200):
        for conn in server.connections:
            if conn.gateway_id and conn.gateway_id.endswith(":" + gateway_id) \
                    and server.md.subscriptions.get(conn):
                conn.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                return conn
        await asyncio.sleep(0.01)
    raise AssertionError(f"{gateway_id} never subscribed")


async def _churn(trader, rounds, *, until=None):
    """Bursts that move many levels of BTC-USDT (big updates)."""
    for r in range(rounds):
        await trader.request_many(
            [PlaceOrder(2, f"c{r}-{i}", "BTC-USDT", "buy", price=1000 + i, qty=1 + r % 3)
             for i in range(300)])
        await trader.request_many([CancelOrder(2, client_order_id=f"c{r}-{i}") for i in range(300)])
        if until is not None and until():
            return r
    return rounds


def _frames(data: bytes) -> list:
    out, pos = [], 0
    while len(data) - pos >= 4:
        size = struct.unpack_from("<I", data, pos)[0]
        if len(data) - pos - 4 < size:
            break
        out.append(P.decode_server(data[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return out, data[pos:]


def test_a_slow_subscriber_gets_a_resync_then_a_snapshot(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            server.market_data_buffer_bytes_max = 64 * 1024
            await fund(server, 2)
            trader = await connect(server)
            fast = await connect(server, gateway_id="fast")
            await fast.subscribe("BTC-USDT", 1000)
            sock = _slow_socket(server, "slow")
            conn = await _server_conn(server, "slow")
            rounds = await _churn(trader, 200, until=lambda: conn.md_stalled)
            assert conn.md_stalled and rounds < 200
            await _churn(trader, 3)                         # dropped for it, not for others
            await fast.markets()
            assert fast.book("BTC-USDT").bids == book_of(server.state.engine, "BTC-USDT", 1000)[0]
            assert not conn.closed and server.state.engine.seq > 0
            # it reads now: the backlog, one resync notice, then a fresh snapshot
            loop = asyncio.get_running_loop()
            data, messages = b"", []
            while not messages or type(messages[-1]) is not P.BookSnapshot \
                    or messages[-1].request_id != 0:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
                assert chunk
                got, data = _frames(data + chunk)
                messages += got
            kinds = [type(m) for m in messages]
            assert kinds.count(P.MarketDataResync) == 1
            resync = kinds.index(P.MarketDataResync)
            assert messages[resync].reason == P.RESYNC_SLOW_READER
            assert kinds[:2] == [P.Welcome, P.BookSnapshot]
            assert set(kinds[2:resync]) <= {P.BookUpdate}
            assert kinds[resync + 1:] == [P.BookSnapshot]
            snapshot = messages[-1]
            assert (snapshot.bids, snapshot.asks) == book_of(server.state.engine, "BTC-USDT", 1000)
            assert not conn.md_stalled
            # and it is back on the updates, from the snapshot's seq
            await trader.request(PlaceOrder(2, "x", "BTC-USDT", "buy", price=5000, qty=1))
            await fast.markets()
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
            [update], _ = _frames(data + chunk)
            assert update.seq == snapshot.seq + 1 and update.bids == [(5000, 1)]
            sock.close()
            for c in (trader, fast):
                await c.close()
    run(go())


def test_a_subscriber_that_never_reads_is_disconnected_and_nobody_waits(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            server.market_data_buffer_bytes_max = 64 * 1024
            server.market_data_stall_s = 0.3
            await fund(server, 2)
            trader = await connect(server)
            fast = await connect(server, gateway_id="fast")
            await fast.subscribe("BTC-USDT", 1000)
            socks = [_slow_socket(server, f"dead{i}") for i in range(3)]
            conns = [await _server_conn(server, f"dead{i}") for i in range(3)]
            await _churn(trader, 200, until=lambda: all(c.md_stalled for c in conns))
            assert all(c.md_stalled for c in conns)
            for _ in range(300):
                if all(c.closed for c in conns):
                    break
                await asyncio.sleep(0.01)
            assert all(c.closed for c in conns) and not (set(conns) & server.connections)
            assert not any(c in server.md.subscriptions for c in conns)
            # the others carry on
            seq = server.state.seq
            await _churn(trader, 2)
            await fast.markets()
            assert server.state.seq == seq + 1200
            assert fast.book("BTC-USDT").bids == book_of(server.state.engine, "BTC-USDT", 1000)[0]
            for s in socks:
                s.close()
            for c in (trader, fast):
                await c.close()
    run(go())


def test_subscribes_replaced_while_stalled_are_answered(tmp_path):
    """A stalled subscriber's Subscribe is answered by the snapshot after its
    resync; one replaced before then (by a Subscribe or an Unsubscribe of the
    symbol, in later turns) is answered ``superseded`` at once."""
    async def go():
        async with serving(tmp_path) as server:
            server.market_data_buffer_bytes_max = 64 * 1024
            await fund(server, 2)
            trader = await connect(server)
            sock = _slow_socket(server, "slow")
            conn = await _server_conn(server, "slow")
            await _churn(trader, 200, until=lambda: conn.md_stalled)
            assert conn.md_stalled
            loop = asyncio.get_running_loop()
            subscribed = lambda: server.md.subscriptions.get(conn, {})      # noqa: E731
            for msg, done in (
                    (P.Subscribe(2, "BTC-USDT", 5), lambda: conn.md_deferred.get("BTC-USDT") == 2),
                    (P.Subscribe(3, "BTC-USDT", 7), lambda: conn.md_deferred.get("BTC-USDT") == 3),
                    (P.Subscribe(4, "ETH-BTC", 3), lambda: conn.md_deferred.get("ETH-BTC") == 4),
                    (P.Unsubscribe(5, "ETH-BTC"), lambda: "ETH-BTC" not in subscribed())):
                await loop.sock_sendall(sock, P.encode_frame(msg))      # one turn each
                assert await until(done), msg
            assert conn.md_stalled
            data, messages = b"", []                # it reads now
            while not any(type(m) is P.BookSnapshot and m.request_id == 3 for m in messages):
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 5)
                assert chunk
                got, data = _frames(data + chunk)
                messages += got
            answers = [(type(m), m.request_id, getattr(m, "reason", "")) for m in messages
                       if type(m) in (P.Error, P.Unsubscribed)
                       or (type(m) is P.BookSnapshot and m.request_id)]
            assert answers == [(P.BookSnapshot, 1, ""), (P.Error, 2, P.ERR_SUPERSEDED),
                               (P.Error, 4, P.ERR_SUPERSEDED), (P.Unsubscribed, 5, ""),
                               (P.BookSnapshot, 3, "")]
            [snapshot] = [m for m in messages if type(m) is P.BookSnapshot and m.request_id == 3]
            assert (snapshot.bids, snapshot.asks) == book_of(server.state.engine, "BTC-USDT", 7)
            assert subscribed() == {"BTC-USDT": 7}
            sock.close()
            await trader.close()
    run(go())


def test_an_update_larger_than_the_limit_reaches_readers_that_keep_up(tmp_path):
    """The market-data limit counts what the reader has not taken (the
    socket's buffer, queued market data), not this turn's replies, and a
    frame never stalls a reader whose buffer is empty."""
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            trader = await connect(server)
            trader_book = await trader.subscribe("BTC-USDT", 1000)   # and trades on it
            sub = await connect(server, gateway_id="sub")
            book = await sub.subscribe("BTC-USDT", 1000)
            server.market_data_buffer_bytes_max = 512
            # one turn: 300 new levels (an update of some 2 KiB), 300 replies (far more)
            await trader.request_many([PlaceOrder(2, "", "BTC-USDT", "buy", price=1000 + i, qty=1)
                                       for i in range(300)])
            for c in (trader, sub):
                await c.markets()
                assert P.MarketDataResync not in [type(m) for m in c.market_data_nowait()]
            assert not any(c.md_stalled for c in server.connections)
            expected = book_of(server.state.engine, "BTC-USDT", 1000)
            assert len(expected[0]) == 300
            for b in (book, trader_book):
                assert b.synced and (b.bids, b.asks) == expected
            for c in (trader, sub):
                await c.close()
    run(go())


def test_the_flush_interval_runs_from_a_market_data_write(tmp_path):
    """Market data that left with a reply is no market-data write: it does
    not hold back another subscriber's next update for an interval."""
    async def go():
        async with serving(tmp_path) as server:
            server.market_data_flush_interval_s = 1.0
            await fund(server, 2)
            trader = await connect(server)
            await trader.subscribe("BTC-USDT", 5)
            sub = await connect(server, gateway_id="sub")
            await sub.subscribe("ETH-BTC", 5)
            stream = sub.market_data()
            assert type(await stream.__anext__()) is P.BookSnapshot
            await asyncio.sleep(1.1)                # an interval since any write
            await trader.place(account=2, client_order_id="", symbol="BTC-USDT", side="buy",
                               price=100, qty=1)    # its update leaves with the reply
            loop = asyncio.get_running_loop()
            started = loop.time()
            await trader.place(account=2, client_order_id="", symbol="ETH-BTC", side="buy",
                               price=6000, qty=1)
            update = await asyncio.wait_for(stream.__anext__(), 5)
            assert type(update) is P.BookUpdate and update.bids == [(6000, 1)]
            assert loop.time() - started < 0.5, "held back for the interval"
            for c in (trader, sub):
                await c.close()
    run(go())


def test_a_full_client_queue_restarts_each_symbol_from_a_snapshot(tmp_path, monkeypatch):
    """Nobody reads market_data(): past its bound the unread messages go and
    each symbol restarts with a resync, then a snapshot of the local book; a
    consumer of market_data() alone ends with exact books."""
    monkeypatch.setattr(engine.client, "MARKET_DATA_QUEUE_MAX", 7)

    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            eng = server.state.engine
            trader = await connect(server)
            sub = await connect(server, gateway_id="sub")
            await sub.subscribe("BTC-USDT", 5)
            await sub.subscribe("ETH-BTC", 5)
            await trader.place(account=2, client_order_id="", symbol="ETH-BTC", side="buy",
                               price=6000, qty=1)
            for i in range(20):
                await trader.place(account=2, client_order_id="", symbol="BTC-USDT", side="buy",
                                   price=100 + i, qty=1)
            await sub.markets()
            messages = sub.market_data_nowait()
            assert len(messages) <= 7
            assert P.MarketDataResync(
                "ETH-BTC", P.RESYNC_CLIENT_QUEUE_FULL) in messages
            books: dict[str, LocalBook] = {}      # what a consumer rebuilds
            for m in messages:
                if type(m) is P.BookSnapshot:
                    books[m.symbol] = LocalBook(m.symbol, 5)
                    books[m.symbol]._reset(m)
                elif type(m) is P.MarketDataResync:
                    books.pop(m.symbol, None)
                elif m.symbol in books:
                    assert m.seq == books[m.symbol].seq + 1
                    books[m.symbol]._apply(m)
            assert sorted(books) == sorted(SYMBOLS)
            for symbol, b in books.items():
                assert (b.bids, b.asks) == book_of(eng, symbol, 5), symbol
                assert b.seq == sub.book(symbol).seq
            for c in (trader, sub):
                await c.close()
    run(go())


# ====================================================================== cancel on disconnect
_KILLED_CLIENT = """
import asyncio, sys
from engine.client import Client

async def main(port):
    c = await Client.connect("127.0.0.1", port, token="tok-trading", gateway_id="cod",
                             cancel_on_disconnect=True)
    ids = []
    for i in range(4):
        events = await c.place(account=2, client_order_id=f"k{i}", symbol="BTC-USDT",
                               side="buy", price=100 + i, qty=1)
        ids.append(events[0].order_id)
    events = await c.place(account=3, client_order_id="stop", symbol="BTC-USDT", side="sell",
                           type="stop_limit", price=90, stop_price=95, qty=1)
    ids.append(events[0].order_id)
    print(" ".join(map(str, ids)), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(int(sys.argv[1])))
"""


def test_cancel_on_disconnect_when_the_client_process_is_killed(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2, 3)
            other = await connect(server, gateway_id="other")       # same account, other gateway
            kept = (await other.place(account=2, client_order_id="keep", symbol="BTC-USDT",
                                      side="buy", price=50, qty=1))[0].order_id
            sub = await connect(server, gateway_id="watcher")
            book = await sub.subscribe("BTC-USDT", 10)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _KILLED_CLIENT, str(server.port),
                stdout=asyncio.subprocess.PIPE)
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            ids = [int(x) for x in line.split()]
            assert len(ids) == 5 and all(server.state.engine.order(i) for i in ids)
            await sub.markets()
            assert len(book.bids) == 5
            proc.kill()                                                  # SIGKILL
            await proc.wait()
            for _ in range(500):
                if not any(server.state.engine.order(i) for i in ids):
                    break
                await asyncio.sleep(0.01)
            assert not any(server.state.engine.order(i) for i in ids)
            assert server.state.engine.order(kept) is not None
            assert server.state.engine.balance(2, "USDT")[1] > 0         # kept's lock only
            await sub.markets()
            assert book.bids == [(50, 1)]                                # market data saw it
            await other.close()
            await sub.close()
        async with serving(tmp_path) as server:          # recovered: the reports wait for it
            again = await connect(server, gateway_id="cod")
            assert again.welcome.report_seq == 5 and not again.welcome.reports_lost
            cancelled = []
            async for report in again.reports():
                cancelled += [e.order_id for e in report.events if type(e) is Cancelled]
                if report.report_seq == 5:
                    break
            assert sorted(cancelled) == sorted(ids)
            await again.close()
        # journaled like any command: a fresh replay shows the cancels
        config = load_config(write_config(tmp_path))
        journal = open_journal(config)
        records = [r for r in journal.read(from_seq=1)
                   if r.gateway_id == CANCEL_ON_DISCONNECT_GATEWAY]
        assert sorted(r.command.order_id for r in records) == sorted(ids)
        assert all(type(r.command) is CancelOrder for r in records)
        fresh = ServiceState(config.new_engine(book="python"), config_hash=config.config_hash())
        replayed = {}
        replay(fresh, journal, on_events=replayed.__setitem__)
        journal.close()
        assert all(type(replayed[r.seq][0]) is Cancelled for r in records)
        assert fresh.engine.order(kept) is not None
    run(go())


def test_cancel_on_disconnect_on_close_unless_keep_orders(tmp_path):
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            eng = server.state.engine

            async def place(c, cid):
                return (await c.place(account=2, client_order_id=cid, symbol="BTC-USDT",
                                      side="buy", price=100, qty=1))[0].order_id
            a = await connect(server, gateway_id="a", cancel_on_disconnect=True)
            oid = await place(a, "a")
            await a.close(keep_orders=True)
            await asyncio.sleep(0.1)
            assert eng.order(oid) is not None                # a Bye that says keep them
            b = await connect(server, gateway_id="b", cancel_on_disconnect=True)
            oid_b = await place(b, "b")
            b2 = await connect(server, gateway_id="b", cancel_on_disconnect=True)   # replaces it
            await asyncio.sleep(0.1)
            assert eng.order(oid_b) is not None              # the session went on
            await b2.close()                                 # a plain Bye cancels
            for _ in range(200):
                if eng.order(oid_b) is None:
                    break
                await asyncio.sleep(0.01)
            assert eng.order(oid_b) is None
            plain = await connect(server, gateway_id="plain")
            oid_p = await place(plain, "p")
            plain.abort()                                    # no cancel-on-disconnect asked
            await asyncio.sleep(0.1)
            assert eng.order(oid_p) is not None
    run(go())


def test_cancel_on_disconnect_after_a_protocol_error_in_the_same_turn(tmp_path):
    """A PlaceOrder, then a bad request id, in one write: the connection is
    closed while the turn is planned and the order is applied after that;
    it is cancelled all the same (its orders are listed in the next turn)."""
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            eng = server.state.engine
            messages = await raw_session(server, hello("cod-rid") + place(1, 100)
                                         + P.encode_frame(P.Request(0, CancelOrder(2, 1))))
            assert (messages[-1].request_id, messages[-1].reason) == (0, P.ERR_INVALID_REQUEST_ID)
            gid = gateway_id_of(server, "cod-rid")
            assert server.state.gateways[gid].last_request_id == 1     # the order was applied
            assert await until(lambda: not eng.open_orders(2))
            assert server.state.open_orders_of(gid) == []
    run(go())


def test_frames_after_a_bye_are_dropped(tmp_path):
    """PlaceOrder, Bye, PlaceOrder in one write: the first order is answered
    and then cancelled by the plain Bye (or kept, ``keep_orders``); the
    second is never journaled nor applied."""
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2, 3)
            eng = server.state.engine
            for name, account, keep in (("bye", 2, False), ("bye-keep", 3, True)):
                messages = await raw_session(server, hello(name) + place(1, 100, account)
                                             + P.encode_frame(P.Bye(keep))
                                             + place(2, 101, account))
                assert [m.request_id for m in messages if type(m) is P.Reply] == [1]
                assert server.state.gateways[gateway_id_of(server, name)].last_request_id == 1
            assert await until(lambda: not eng.open_orders(2))
            await asyncio.sleep(0.1)
            assert [(o["price"], o["client_order_id"]) for o in eng.open_orders(3)] == [(100, "r1")]
    run(go())


def test_cancel_on_disconnect_after_a_reply_overflow_in_the_same_turn(tmp_path):
    """A turn's replies pass the outbound limit half way through a write of
    ten orders: the connection is aborted, the rest of the turn's orders are
    still applied (they are journaled), and all ten are cancelled."""
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            eng = server.state.engine
            server.outbound_bytes_max = 600
            await raw_session(server, hello("cod-overflow")
                              + b"".join(place(rid, 100 + rid) for rid in range(1, 11)))
            gid = gateway_id_of(server, "cod-overflow")
            assert server.state.gateways[gid].last_request_id == 10    # all applied
            assert await until(lambda: not eng.open_orders(2))
            cancels = server.state.gateways[CANCEL_ON_DISCONNECT_GATEWAY]
            assert cancels.last_request_id == 10 and not cancels.window   # no reply window kept
    run(go())


def test_cancel_on_disconnect_is_retried_after_a_journal_write_error(tmp_path):
    """The journal refuses the cancels once (a full disk, say) and stays
    usable: they are journaled and applied on the retry, without any other
    traffic, once."""
    async def go():
        async with serving(tmp_path) as server:
            await fund(server, 2)
            eng = server.state.engine
            c = await connect(server, gateway_id="cod-j", cancel_on_disconnect=True)
            oid = (await c.place(account=2, client_order_id="j", symbol="BTC-USDT", side="buy",
                                 price=100, qty=1))[0].order_id
            append, refused = server.journal.append, []

            def append_but_once(records):
                if not refused:
                    refused.append(records)
                    raise JournalWriteError("no space left on device (test)")
                return append(records)
            server.journal.append = append_but_once
            c.abort()
            assert await until(lambda: eng.order(oid) is None)
            assert [r.command for r in refused[0]] == [CancelOrder(2, oid)]
            assert not server.journal.failed and server.failure is None
            server.journal.append = append
        config = load_config(write_config(tmp_path))
        journal = open_journal(config)
        records = [r for r in journal.read(from_seq=1)
                   if r.gateway_id == CANCEL_ON_DISCONNECT_GATEWAY]
        journal.close()
        assert [(r.request_id, r.command) for r in records] == [(1, CancelOrder(2, oid))]
    run(go())


@pytest.mark.parametrize("seed", [1, 2])
def test_open_orders_are_indexed_per_gateway(seed):
    """The per-gateway index of open orders against a slow model (who placed
    each order, which orders the engine still has) through a flow split
    over gateways; a restored snapshot derives the same index; the server's
    own gateway keeps no reply window."""
    rng = random.Random(seed)
    eng = new_engine("cross")
    state = ServiceState(eng)
    flow = Flow("ledger", seed, engine=eng, prefill=300)
    gateways = ["a", "b", "c"]
    placed: dict[int, str] = {}
    rids = dict.fromkeys(gateways, 0)

    def check(s: ServiceState):
        for g in gateways:
            expected = sorted(oid for oid, by in placed.items()
                              if by == g and s.engine.order(oid) is not None)
            assert s.open_orders_of(g) == expected, g
        assert {(oid, g) for g, oids in s.gateway_orders.items() for oid in oids} \
            == set(s.order_gateway.items())
        assert all(s.gateway_orders.values())               # no empty sets kept

    for n, command in enumerate(flow.commands(flow.setup_count + 3000)):
        g = rng.choice(gateways)
        rids[g] += 1
        events, _, _ = state.apply(g, rids[g], command, replaying=True)
        flow.observe(events)
        placed.update((e.order_id, g) for e in events if type(e) is Accepted)
        if n % 250 == 0:
            check(state)
    check(state)
    assert all(state.open_orders_of(g) for g in gateways)
    # the server's cancels: request ids counted, no replies kept
    victim = state.open_orders_of("a")
    for rid, oid in enumerate(victim, 1):
        state.apply(CANCEL_ON_DISCONNECT_GATEWAY, rid, CancelOrder(eng.order(oid)["account"], oid))
    internal = state.gateways[CANCEL_ON_DISCONNECT_GATEWAY]
    assert internal.last_request_id == len(victim) and not internal.window
    assert state.open_orders_of("a") == []
    check(state)
    restored = ServiceState.restore(state.snapshot(), type(eng), book="python")
    check(restored)
    assert restored.gateway_orders == {g: set(state.open_orders_of(g)) for g in gateways
                                       if state.open_orders_of(g)}
