"""The gateway's library: talk to an engine server over TCP.

::

    client = await Client.connect("127.0.0.1", 7001, token="...", gateway_id="gw-1")
    events = await client.place(account=2, client_order_id="a1", symbol="BTC-USDT",
                                side="buy", price="20000.00", qty="0.5")
    async for report in client.reports(): ...
    book = await client.subscribe("BTC-USDT", depth=20)     # market data: a local L2 book
    async for message in client.market_data(): ...          # snapshots, updates, resyncs
    await client.close()

Every command method returns the engine's events for that command (a reject
is a ``Rejected`` event); a refusal by the server (role, account) or a lost
connection raises ``ClientError``.  Prices, quantities and amounts are taken
as ``Decimal`` or ``str`` (converted through the instruments and assets the
server sent in its welcome) or as exact ints (ticks, lots, minor units);
floats are refused.  Requests are pipelined: many may be in flight on one
connection, and replies resolve them by request id.  Market data keeps a
``LocalBook`` per subscribed symbol from the snapshot and the updates, checks
that sequence numbers are contiguous and asks for a fresh snapshot when they
are not (or after the server's resync).  This module never imports the
server; it shares only ``engine.service.protocol``.
"""
from __future__ import annotations

import asyncio
from decimal import Decimal

from .messages import (Adjust, ApproveAdjustment, ApproveWithdrawal, CancelAll, CancelOrder,
                       Deposit, FreezeAccount, Halt, PlaceOrder, RejectWithdrawal, ReplaceOrder,
                       RequestWithdrawal, Resume, SetAccountTier, UnfreezeAccount, Withdraw)
from .service import protocol as P

__all__ = ["Client", "ClientError", "LocalBook"]

REPORT_QUEUE_MAX = 100_000      # reports buffered while nobody iterates reports()
# market-data messages buffered for market_data(); past it the unread ones are
# dropped and each symbol starts again from a resync and a snapshot
MARKET_DATA_QUEUE_MAX = 10_000


class ClientError(Exception):
    """The server refused a request (``reason`` is one of the protocol's
    error reasons) or the connection was lost."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class _Protocol(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.client = client
        self.reader = P.FrameReader(2**31 - 1)      # the server is trusted to frame sanely

    def connection_made(self, transport) -> None:
        self.client._transport = transport

    def data_received(self, data: bytes) -> None:
        client = self.client
        for body in self.reader.feed(data):
            client._dispatch(P.decode_server(body))

    def connection_lost(self, exc) -> None:
        self.client._lost(exc)
        if not self.client._gone.done():
            self.client._gone.set_result(None)


class LocalBook:
    """One symbol's book as this client's market data has it: ``bids`` and
    ``asks`` as [(price ticks, qty lots)] best first, up to ``depth`` levels,
    at market-data ``seq``.  ``synced`` is False between a resync or a gap
    and the fresh snapshot (the levels are then the last good ones)."""
    __slots__ = ("symbol", "depth", "seq", "halted", "synced", "_bids", "_asks")

    def __init__(self, symbol: str, depth: int):
        self.symbol = symbol
        self.depth = depth
        self.seq = 0
        self.halted = False
        self.synced = False
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}

    @property
    def bids(self) -> list[tuple[int, int]]:
        return sorted(self._bids.items(), reverse=True)

    @property
    def asks(self) -> list[tuple[int, int]]:
        return sorted(self._asks.items())

    def _reset(self, msg) -> None:
        self._bids = dict(msg.bids)
        self._asks = dict(msg.asks)
        self.seq, self.halted, self.synced = msg.seq, msg.halted, True

    def _apply(self, msg) -> None:
        for side, changes in ((self._bids, msg.bids), (self._asks, msg.asks)):
            for price, qty in changes:
                if qty:
                    side[price] = qty
                else:
                    side.pop(price, None)
        self.seq, self.halted = msg.seq, msg.halted

    def __repr__(self) -> str:
        return (f"LocalBook({self.symbol!r}, seq={self.seq}, synced={self.synced}, "
                f"bids={self.bids[:3]}..., asks={self.asks[:3]}...)")


class _Collector:
    """Stands where a future would, for the replies of one ``request_many``:
    resolves its future with all of them, in order, once the last arrives."""
    __slots__ = ("future", "replies", "left")

    def __init__(self, future: asyncio.Future, n: int):
        self.future = future
        self.replies = []
        self.left = n

    def done(self) -> bool:
        return self.future.done()

    def set_result(self, reply) -> None:
        self.replies.append(reply)
        self.left -= 1
        if not self.left:
            self.future.set_result(self.replies)

    def set_exception(self, exc) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Client:
    """A gateway session; create with ``await Client.connect(...)``."""

    def __init__(self):
        self._transport = None
        self._outbox: list[bytes] = []      # frames of this loop iteration, written once
        self._pending: dict[int, asyncio.Future] = {}
        self._welcome: asyncio.Future | None = None
        self._reports: asyncio.Queue = asyncio.Queue()     # bounded by pausing the socket
        self._next_id = 1
        self._closed_error: ClientError | None = None
        self._gone: asyncio.Future = asyncio.get_running_loop().create_future()
        self._want_reports = True
        self._reading_paused = False
        self._books: dict[str, LocalBook] = {}
        self._market_data: asyncio.Queue = asyncio.Queue()
        self._subscribing: dict[str, int] = {}     # symbol -> the request id of its Subscribe
        self.gateway_id = ""
        self.last_request_id = 0        # the id of the last request sent (for resend())
        self.last_report_seq = 0        # the last report reports() handed to the application
        self.welcome: P.Welcome | None = None
        self.assets: dict = {}
        self.instruments: dict = {}

    # ------------------------------------------------------------------ session
    @classmethod
    async def connect(cls, host: str = "127.0.0.1", port: int = 7001, *, token: str,
                      gateway_id: str, last_report_seq: int = 0, reports: bool = True,
                      cancel_on_disconnect: bool = False, timeout_s: float = 10.0) -> "Client":
        """Connect and say hello.  ``last_report_seq``: the last execution
        report this gateway processed (the server sends the later ones
        again).  ``reports``: the application consumes ``reports()``; while
        ``REPORT_QUEUE_MAX`` reports wait unread the connection stops reading
        (replies wait too).  ``reports=False``: reports are not kept and
        count as processed on arrival.  ``cancel_on_disconnect``: when this
        connection drops (or closes without ``keep_orders``), the server
        cancels every open order this gateway placed; the cancels come as
        reports."""
        self = cls()
        self.gateway_id = gateway_id
        self.last_report_seq = last_report_seq
        self._want_reports = reports
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        await asyncio.wait_for(loop.create_connection(lambda: _Protocol(self), host, port),
                               timeout_s)
        self._transport.write(P.encode_frame(P.Hello(gateway_id, token, P.PROTOCOL_VERSION,
                                                     last_report_seq, cancel_on_disconnect)))
        welcome = await asyncio.wait_for(self._welcome, timeout_s)
        self.welcome = welcome
        self._next_id = welcome.last_request_id + 1
        self.last_request_id = welcome.last_request_id
        self.assets = {a.name: a for a in welcome.assets}
        self.instruments = {i.symbol: i for i in welcome.instruments}
        return self

    async def close(self, timeout_s: float = 10.0, *, keep_orders: bool = False) -> None:
        """A clean close: the server answers everything sent before it, then
        closes the connection; requests still unanswered after ``timeout_s``
        fail with ClientError.  ``keep_orders``: a cancel-on-disconnect
        session keeps its open orders (without it they are cancelled)."""
        if self._transport is not None and not self._transport.is_closing():
            self._flush()
            self._transport.write(P.encode_frame(P.Bye(keep_orders)))
            if self._reading_paused:
                self._transport.resume_reading()
            try:
                await asyncio.wait_for(asyncio.shield(self._gone), timeout_s)
            except asyncio.TimeoutError:
                self._transport.abort()
        self._lost(None)

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------------ plumbing
    def _dispatch(self, msg) -> None:
        t = type(msg)
        if t is P.BookUpdate or t is P.BookSnapshot or t is P.MarketDataResync:
            self._market(msg, t)
            if t is not P.BookSnapshot or not msg.request_id:
                return
        if t is P.Report:
            if not self._want_reports:
                self.last_report_seq = msg.report_seq
                return
            self._reports.put_nowait(msg)       # bounded below: reading stops first
            if self._reports.qsize() >= REPORT_QUEUE_MAX and not self._reading_paused:
                self._reading_paused = True
                self._transport.pause_reading()
            return
        if t is P.Welcome:
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(msg)
            return
        if t is P.Error and msg.request_id == 0:
            self._lost(ClientError(msg.reason, msg.detail))
            return
        fut = self._pending.pop(msg.request_id, None)
        if fut is None or fut.done():
            return
        if t is P.Error:
            fut.set_exception(ClientError(msg.reason, msg.detail))
        else:
            fut.set_result(msg)

    def _lost(self, exc) -> None:
        if self._closed_error is None:
            self._closed_error = exc if isinstance(exc, ClientError) else ClientError(
                "connection_lost", str(exc) if exc else "closed")
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(self._closed_error)
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(self._closed_error)
        self._reports.put_nowait(None)          # ends reports()
        self._market_data.put_nowait(None)      # ends market_data()

    def _market(self, msg, t) -> None:
        """Keep the local book; queue the message for market_data()."""
        book = self._books.get(msg.symbol)
        if book is None:
            return                              # unsubscribed: late messages
        if t is P.BookUpdate:
            if not book.synced:
                return                          # a snapshot is on its way
            if msg.seq != book.seq + 1:
                book.synced = False
                self._resubscribe(book)
                msg = P.MarketDataResync(book.symbol, P.RESYNC_GAP)
            else:
                book._apply(msg)
        elif t is P.BookSnapshot:
            waiting = self._subscribing.get(msg.symbol)
            if waiting is not None:
                if msg.request_id != waiting:
                    return                      # not the answer to the latest Subscribe
                del self._subscribing[msg.symbol]
            book._reset(msg)
        else:
            book.synced = False                 # the server sends a snapshot once we read
        queue = self._market_data
        if queue.qsize() >= MARKET_DATA_QUEUE_MAX:  # nobody reads market_data(): drop, say so
            self._market_data_restart()             # ``msg`` is in the books already
            return
        queue.put_nowait(msg)

    def _market_data_restart(self) -> None:
        """The queue is full: drop what is unread; per subscribed symbol a
        ``MarketDataResync(client_queue_full)``, then, for a book in sync, a
        ``BookSnapshot`` (request id 0) of it, which is exact: the local
        books never miss a message.  A book out of sync gets its snapshot
        from the server, as after any resync.  Two messages a subscribed
        symbol: far below the bound."""
        queue = self._market_data
        while not queue.empty():
            queue.get_nowait()
        for symbol, book in self._books.items():
            queue.put_nowait(P.MarketDataResync(symbol, P.RESYNC_CLIENT_QUEUE_FULL))
            if book.synced:
                queue.put_nowait(P.BookSnapshot(0, symbol, book.seq, book.bids, book.asks,
                                                book.halted))

    def _resubscribe(self, book: LocalBook) -> None:
        if self._closed_error is not None:
            return
        fut = self._send(lambda rid: P.Subscribe(rid, book.symbol, book.depth))
        self._subscribing[book.symbol] = self.last_request_id
        fut.add_done_callback(_ignore_result)

    def _write(self, frame: bytes) -> None:
        """Queue a frame; the frames of one loop iteration leave in one write."""
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(frame)

    def _flush(self) -> None:
        out, self._outbox = self._outbox, []
        if out and self._closed_error is None:
            self._transport.write(b"".join(out))

    def _send(self, make) -> asyncio.Future:
        if self._closed_error is not None:
            raise self._closed_error
        rid = self._next_id
        self._next_id = rid + 1
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._write(P.encode_frame(make(rid)))
        self.last_request_id = rid
        return fut

    async def request_many(self, commands) -> list:
        """Send many commands at once (pipelined, one write); their Replies,
        in order.  Cheaper than one ``request`` each when throughput counts."""
        if self._closed_error is not None:
            raise self._closed_error
        commands = list(commands)
        if not commands:
            return []
        fut = asyncio.get_running_loop().create_future()
        collector = _Collector(fut, len(commands))
        rid = self._next_id
        self._next_id = rid + len(commands)
        pending = self._pending
        frames = []
        for cmd in commands:
            pending[rid] = collector
            frames.append(P.Request(rid, cmd))
            rid += 1
        self.last_request_id = rid - 1
        self._write(P.encode_frames(frames))
        return await fut

    async def request(self, command) -> list:
        """Send one engine command; its events."""
        reply = await self._send(lambda rid: P.Request(rid, command))
        return reply.events

    def request_nowait(self, command) -> asyncio.Future:
        """Send one engine command without waiting; a future of its Reply
        (pipelining: ``await asyncio.gather(*futures)``)."""
        return self._send(lambda rid: P.Request(rid, command))

    async def resend(self, request_id: int, command) -> list:
        """Send a command again under an earlier request id (after a lost
        connection): the server answers with the original reply and never
        applies it twice."""
        if self._closed_error is not None:
            raise self._closed_error
        fut = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self._write(P.encode_frame(P.Request(request_id, command)))
        return (await fut).events

    # ------------------------------------------------------------------ market data
    async def subscribe(self, symbol: str, depth: int = 20) -> LocalBook:
        """Subscribe to ``symbol``'s market data, up to ``depth`` levels a
        side; returns its ``LocalBook`` once the snapshot is in (then kept
        current from the updates).  Subscribing again replaces the
        subscription.  Refusals (``unknown_symbol``, ``bad_depth``) raise
        ClientError."""
        book = LocalBook(symbol, depth)
        previous = self._books.get(symbol)
        self._books[symbol] = book
        fut = self._send(lambda rid: P.Subscribe(rid, symbol, depth))
        self._subscribing[symbol] = self.last_request_id
        try:
            await fut
        except ClientError:
            if self._books.get(symbol) is book:
                if previous is not None and self._closed_error is None:
                    self._books[symbol] = previous      # the old subscription stands
                    previous.synced = False
                    self._resubscribe(previous)
                else:
                    self._books.pop(symbol, None)
                    self._subscribing.pop(symbol, None)
            raise
        return book

    async def unsubscribe(self, symbol: str) -> None:
        """No more market data for ``symbol``; its local book goes."""
        self._books.pop(symbol, None)
        self._subscribing.pop(symbol, None)
        await self._send(lambda rid: P.Unsubscribe(rid, symbol))

    def book(self, symbol: str) -> LocalBook | None:
        """The local book of a subscribed symbol (None when not subscribed)."""
        return self._books.get(symbol)

    async def market_data(self):
        """Market-data messages as they arrive, until the connection closes:
        ``BookSnapshot``, ``BookUpdate`` and ``MarketDataResync`` (from the
        server, or made here for a gap or a full queue).  The local books
        are kept whether or not this is read.  At most
        ``MARKET_DATA_QUEUE_MAX`` (10,000) messages wait unread; past it they
        are dropped and each symbol restarts with a ``MarketDataResync
        ("client_queue_full")`` and a ``BookSnapshot`` (request id 0) of its
        local book."""
        while True:
            msg = await self._market_data.get()
            if msg is None:
                self._market_data.put_nowait(None)
                return
            yield msg

    def market_data_nowait(self) -> list:
        """The market-data messages that have arrived and not been read."""
        out = []
        queue = self._market_data
        while not queue.empty():
            msg = queue.get_nowait()
            if msg is None:
                queue.put_nowait(None)
                break
            out.append(msg)
        return out

    async def reports(self):
        """Execution reports (``protocol.Report``) as they arrive, until the
        connection closes."""
        while True:
            report = await self._reports.get()
            if report is None:
                return
            if self._reading_paused and self._reports.qsize() < REPORT_QUEUE_MAX // 2:
                self._reading_paused = False
                self._transport.resume_reading()
            self.last_report_seq = report.report_seq
            yield report

    # ------------------------------------------------------------------ conversions
    def _instrument(self, symbol: str):
        ins = self.instruments.get(symbol)
        if ins is None:
            raise ValueError(f"unknown symbol {symbol!r}")
        return ins

    @staticmethod
    def _count(value, convert, what: str):
        if value is None or type(value) is int:
            return value
        if isinstance(value, float):
            raise TypeError(f"{what} must be a Decimal, a str or an int, not a float")
        if isinstance(value, (str, Decimal)):
            if convert is None:
                raise ValueError(f"a decimal {what} needs its symbol or asset; or give an int")
            return convert(value)
        raise TypeError(f"{what} must be a Decimal, a str or an int, not {type(value).__name__}")

    def price_ticks(self, symbol: str, price):
        return self._count(price, self._instrument(symbol).price_to_ticks, "price")

    def qty_lots(self, symbol: str, qty):
        return self._count(qty, self._instrument(symbol).qty_to_lots, "qty")

    def amount_minor(self, asset: str, amount):
        a = self.assets.get(asset)
        if a is None and not (amount is None or type(amount) is int):
            raise ValueError(f"unknown asset {asset!r}")
        return self._count(amount, a.to_minor if a else None, "amount")

    def _quote_minor(self, symbol: str, amount):
        return self.amount_minor(self._instrument(symbol).quote, amount)

    # ------------------------------------------------------------------ commands
    async def place(self, *, account: int, client_order_id: str, symbol: str, side: str,
                    price=None, qty=0, type: str = "limit", tif: str = "gtc", quote_qty=None,
                    stop_price=None, post_only: bool = False,
                    stp: str = "cancel_newest") -> list:
        return await self.request(PlaceOrder(
            account, client_order_id, symbol, side, type, tif,
            self.price_ticks(symbol, price), self.qty_lots(symbol, qty),
            self._quote_minor(symbol, quote_qty), self.price_ticks(symbol, stop_price),
            post_only, stp))

    async def cancel(self, *, account: int, order_id: int | None = None,
                     client_order_id: str | None = None, admin: str = "") -> list:
        """Cancel one open order; with ``admin``, as an operator (admin sessions only)."""
        return await self.request(CancelOrder(account, order_id, client_order_id, admin))

    async def replace(self, *, account: int, order_id: int, symbol: str | None = None,
                      price=None, qty=None) -> list:
        """Amend a resting order.  Decimal/str prices and quantities need the
        order's ``symbol``; ints are ticks and lots."""
        if symbol is not None:
            price, qty = self.price_ticks(symbol, price), self.qty_lots(symbol, qty)
        else:
            price = self._count(price, None, "price") if price is not None else None
            qty = self._count(qty, None, "qty") if qty is not None else None
        return await self.request(ReplaceOrder(account, order_id, price, qty))

    async def deposit(self, *, account: int, asset: str, amount, ref: str = "") -> list:
        return await self.request(Deposit(account, asset, self.amount_minor(asset, amount), ref))

    async def withdraw(self, *, account: int, asset: str, amount, ref: str = "") -> list:
        return await self.request(Withdraw(account, asset, self.amount_minor(asset, amount), ref))

    async def adjust(self, *, account: int, asset: str, amount, admin: str, reason: str) -> list:
        return await self.request(Adjust(account, asset, self.amount_minor(asset, amount),
                                         admin, reason))

    async def halt(self, symbol: str, admin: str = "") -> list:
        return await self.request(Halt(symbol, admin))

    async def resume(self, symbol: str, admin: str = "") -> list:
        return await self.request(Resume(symbol, admin))

    # ------------------------------------------------------------------ money controls
    async def request_withdrawal(self, *, account: int, asset: str, amount, ref: str = "") -> list:
        """Hold ``amount`` for withdrawal (treasury or admin sessions): a
        ``WithdrawalRequested`` event, and ``WithdrawalCompleted`` too when
        the account's tier approves it automatically."""
        return await self.request(RequestWithdrawal(account, asset,
                                                    self.amount_minor(asset, amount), ref))

    async def approve_withdrawal(self, withdrawal_id: int, *, admin: str) -> list:
        return await self.request(ApproveWithdrawal(withdrawal_id, admin))

    async def reject_withdrawal(self, withdrawal_id: int, *, admin: str, reason: str) -> list:
        return await self.request(RejectWithdrawal(withdrawal_id, admin, reason))

    async def set_account_tier(self, account: int, tier: str, *, admin: str) -> list:
        return await self.request(SetAccountTier(account, tier, admin))

    async def freeze(self, account: int, *, admin: str, reason: str,
                     cancel_orders: bool = True) -> list:
        return await self.request(FreezeAccount(account, admin, reason, cancel_orders))

    async def unfreeze(self, account: int, *, admin: str, reason: str) -> list:
        return await self.request(UnfreezeAccount(account, admin, reason))

    async def cancel_all(self, account: int, symbol: str | None = None, *, admin: str = "") -> list:
        """Cancel the account's open orders (on ``symbol`` only, when given);
        with ``admin``, as an operator (admin sessions only)."""
        return await self.request(CancelAll(account, symbol, admin))

    async def approve_adjustment(self, adjustment_id: int, *, admin: str) -> list:
        return await self.request(ApproveAdjustment(adjustment_id, admin))

    # ------------------------------------------------------------------ queries
    async def balances(self, account: int) -> dict:
        """{asset: (available, locked)} in minor units."""
        reply = await self._send(lambda rid: P.QueryBalances(rid, account))
        return {b.asset: (b.available, b.locked) for b in reply.balances}

    async def open_orders(self, account: int) -> list:
        """The account's open orders (``protocol.OrderInfo``), by order id."""
        return (await self._send(lambda rid: P.QueryOpenOrders(rid, account))).orders

    async def order(self, order_id: int):
        """One open order (``protocol.OrderInfo``), or None."""
        orders = (await self._send(lambda rid: P.QueryOrder(rid, order_id))).orders
        return orders[0] if orders else None

    async def depth(self, symbol: str, levels: int = 10):
        """(bids, asks): lists of (price ticks, qty lots), best first."""
        reply = await self._send(lambda rid: P.QueryDepth(rid, symbol, levels))
        return [tuple(x) for x in reply.bids], [tuple(x) for x in reply.asks]

    async def pending(self, account: int | None = None):
        """(withdrawals, adjustments) waiting for approval: ``PendingWithdrawal``
        and (admin sessions only) ``PendingAdjustment`` lists, by id."""
        reply = await self._send(lambda rid: P.QueryPending(rid, account))
        return reply.withdrawals, reply.adjustments

    async def markets(self):
        """(assets, instruments) as the server has them."""
        reply = await self._send(lambda rid: P.QueryMarkets(rid))
        return reply.assets, reply.instruments


def _ignore_result(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
