"""The engine server: one asyncio loop (uvloop when installed), one thread,
owning the engine, the journal and the settlement writer.

Per loop turn: the bytes every connection received are cut into frames and
decoded; the turn's commands are checked (role, accounts, request ids),
journaled in one write (and fsynced per policy), applied in order, and each
connection's replies leave in one write -- only after the journal holds their
commands.  Execution reports go to the gateways whose resting orders were
touched, or wait for their next hello.  Market data (engine.service.
market_data) is published after the turn's commands, and only to connections
whose unsent bytes are below a limit: a slow reader loses market data first
(a resync notice, then a fresh snapshot once it drains), never replies.  A
session that asked for cancel-on-disconnect has its open orders cancelled,
through the journal, when its connection drops.  Events go to the settlement
writer through a bounded backlog; while it is full the server stops reading
sockets.
Recovery is the newest snapshot plus the journal's tail (engine.service.
recovery).  This module owns sockets and the loop; the bookkeeping is
engine.service.state, the formats engine.service.protocol and .journal.
"""
from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import logging
import signal
import sys
import time
from collections import Counter, deque

import msgspec

from ..messages import (Adjust, ApproveAdjustment, ApproveWithdrawal, CancelAll, CancelOrder, Clock,
                        Deposit, FreezeAccount, Halt, PlaceOrder, RejectWithdrawal, ReplaceOrder,
                        RequestWithdrawal, Resume, SetAccountTier, UnfreezeAccount, Withdraw)
from . import protocol as P
from .config import ROLES
from .journal import JournalRecord, JournalWriteError
from .market_data import MarketData
from .recovery import Recovered, newest_at_or_below, recover
from .state import INTERNAL_GATEWAY_PREFIX, REUSED

log = logging.getLogger("engine.service.server")

_TRADING = (PlaceOrder, CancelOrder, ReplaceOrder, CancelAll)
_TREASURY = (Deposit, Withdraw, RequestWithdrawal, ApproveWithdrawal, RejectWithdrawal)
# no role sends Clock: the server does (time enters the engine only as a journaled command)
ROLE_COMMANDS = {
    "trading": _TRADING,
    "treasury": _TREASURY,
    "admin": _TRADING + _TREASURY + (Adjust, ApproveAdjustment, Halt, Resume, FreezeAccount,
                                     UnfreezeAccount, SetAccountTier),
}
# commands that name no account: the session's accounts are checked against the
# account of the withdrawal or adjustment they name, or not at all (a symbol)
_NO_ACCOUNT = (Halt, Resume, ApproveWithdrawal, RejectWithdrawal, ApproveAdjustment)
assert tuple(ROLE_COMMANDS) == ROLES, "every role the configuration accepts has its commands here"
SETTLE_BACKLOG_MAX = 50_000             # commands waiting for the settlement writer: reading pauses
PENDING_MAX = 20_000                    # frames read but not yet processed: reading pauses
GC_THRESHOLD_YOUNG = 50_000             # allocations between young collections (Python: 700)
CONNECTIONS_MAX = 1_000                 # open connections; more are closed at once
GATEWAYS_MAX = 10_000                   # gateway ids with state (replies, reports) kept
HELLO_TIMEOUT_S = 10.0                  # a connection that has not said hello by then is closed
MD_DRAIN_POLL_S = 0.05                  # how often a resynced subscriber's buffer is looked at
CLOSE_LINGER_S = 5.0                    # a closed slow reader's last bytes wait this long, then abort
COD_RETRY_S = 0.1                       # cancels the journal refused are tried again after this
# the journal's gateway id of the cancels the server sends for a dropped session
# (a real gateway id is "<12 hex digits>:<name>", so this one can never be claimed)
CANCEL_ON_DISCONNECT_GATEWAY = "server:cancel_on_disconnect"
assert CANCEL_ON_DISCONNECT_GATEWAY.startswith(INTERNAL_GATEWAY_PREFIX), "no reply window for it"

# the journal's gateway id of the Clock commands the server sends
CLOCK_GATEWAY = "server:clock"
assert CLOCK_GATEWAY.startswith(INTERNAL_GATEWAY_PREFIX), "no reply window for it"
DAY_NS = 86_400 * 1_000_000_000         # UTC days: a Clock at every midnight, flowing or not

_KIND_COMMAND, _KIND_FRAME, _KIND_QUERY, _KIND_BYE, _KIND_INTERNAL, _KIND_MARKET_DATA = range(6)


class _CancelOnDisconnect:
    """A pending item: cancel the open orders of a gateway whose connection
    dropped.  ``order_ids`` is None until the turn that plans it resolves
    them (every command read before the drop is applied by then); a retry
    after a failed journal write keeps them."""
    __slots__ = ("gateway_id", "order_ids")

    def __init__(self, gateway_id: str):
        self.gateway_id = gateway_id
        self.order_ids: list[int] | None = None


class _Connection(asyncio.Protocol):
    """One gateway connection: frames in, frames out; no engine logic."""

    def __init__(self, server: "Server"):
        self.server = server
        self.transport = None
        self.reader = P.FrameReader(server.frame_bytes_max)
        self.session = None             # the SessionConfig, after a good hello
        self.gateway_id = None
        self.closed = False
        self.lost = False               # the transport is gone
        self.said_bye = False           # a Bye was read: nothing after it is read
        self.out: list[bytes] = []      # frames of the current turn
        self.out_bytes = 0
        self.md_out: list[bytes] = []   # market data not yet written (written before ``out``)
        self.md_out_bytes = 0
        self.cancel_on_disconnect = False   # armed by the hello; disarmed by a Bye(keep_orders)
        self.md_stalled = False         # market data stopped (resync sent) until the buffer drains
        self.md_stalled_at = 0.0        # loop time of the stall
        self.md_timer = None            # the stall's drain poll
        self.md_deferred: dict[str, int] = {}   # symbol -> subscribe request id, while stalled

    def connection_made(self, transport) -> None:
        self.transport = transport
        server = self.server
        if len(server.connections) >= CONNECTIONS_MAX:
            self.closed = True
            transport.write(P.encode_frame(P.Error(0, P.ERR_TOO_MANY_CONNECTIONS)))
            transport.close()
            return
        server.connections.add(self)
        if server.reading_paused:
            transport.pause_reading()
        md_max = server.market_data_buffer_bytes_max
        transport.set_write_buffer_limits(high=md_max, low=md_max // 4)
        asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self._hello_due)

    def _hello_due(self) -> None:
        if self.session is None and not self.closed:
            self.fail(P.ERR_HELLO_REQUIRED, f"no hello within {HELLO_TIMEOUT_S:g} s")

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.lost = True
        self.server.connections.discard(self)
        if self.gateway_id is not None and self.server.gateway_conn.get(self.gateway_id) is self:
            del self.server.gateway_conn[self.gateway_id]
        self._gone()

    def _gone(self) -> None:
        """The session ends: its subscriptions go; cancel-on-disconnect fires once."""
        server = self.server
        server.md.drop(self)
        if self.cancel_on_disconnect:
            self.cancel_on_disconnect = False
            server.cancel_on_disconnect(self.gateway_id)

    def resume_writing(self) -> None:
        """The buffer drained below the low-water mark: market data again
        (in a callback of its own: snapshots are taken between turns)."""
        if self.md_stalled and not self.closed:
            asyncio.get_running_loop().call_soon(self.server.md_resume, self)

    def data_received(self, data: bytes) -> None:
        if self.closed or self.said_bye:
            return
        try:
            bodies = self.reader.feed(data)
        except P.FrameTooLarge as exc:
            return self.fail(P.ERR_FRAME_TOO_LARGE, str(exc))
        now = time.time_ns()
        server = self.server
        for body in bodies:
            try:
                msg = P.decode_client(body)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
                return self.fail(P.ERR_MALFORMED, str(exc)[:200])
            if self.session is None:
                if type(msg) is not P.Hello:
                    return self.fail(P.ERR_HELLO_REQUIRED, "the first frame must be a Hello")
                if not server.hello(self, msg):
                    return
                continue
            if type(msg) is P.Hello:
                return self.fail(P.ERR_HELLO_REQUIRED, "a second Hello on one connection")
            server.pending.append((self, msg, now))
            if type(msg) is P.Bye:      # the frames after it are dropped, never applied
                self.said_bye = True
                break
        server.schedule_turn()

    def send(self, frame: bytes) -> None:
        if self.closed:
            return
        self.out.append(frame)
        self.out_bytes += len(frame)
        if self.out_bytes > self.server.outbound_bytes_max:     # one turn's answers alone
            self.out, self.out_bytes = [], 0
            self.fail(P.ERR_SLOW_READER, "a turn's replies exceed the outbound limit", abort=True)

    def flush(self) -> None:
        out, self.out, self.out_bytes = self.out, [], 0
        if self.md_out:                 # earlier turns' market data goes first
            out = self.md_out + out
            self.md_out, self.md_out_bytes = [], 0
            self.server._md_waiting.discard(self)
        if out and not self.closed:
            self.transport.write(b"".join(out) if len(out) > 1 else out[0])
            if self.transport.get_write_buffer_size() > self.server.outbound_bytes_max:
                self.fail(P.ERR_SLOW_READER, "replies not read: outbound buffer full",
                          abort=True)

    def fail(self, reason: str, detail: str = "", *, abort: bool = False,
             linger_s: float | None = None) -> None:
        """A protocol error: an Error frame, then close; nothing else is read.
        ``linger_s``: abort if the peer has not read up to the close by then."""
        if self.closed:
            return
        self.closed = True
        log.info("closing connection (%s): %s", reason, detail)
        if abort:
            self.transport.abort()
        else:
            self.transport.write(P.encode_frame(P.Error(0, reason, detail)))
            self.transport.close()
            if linger_s is not None:
                asyncio.get_running_loop().call_later(linger_s, self._abort_if_open)
        self.server.connections.discard(self)
        if self.gateway_id is not None and self.server.gateway_conn.get(self.gateway_id) is self:
            del self.server.gateway_conn[self.gateway_id]
        self._gone()

    def _abort_if_open(self) -> None:
        if not self.lost:
            self.transport.abort()


class Server:
    """See the module docstring.  ``await start()``, then ``await serve()``
    until ``request_stop()`` (SIGINT/SIGTERM under ``run``)."""

    def __init__(self, config, *, book: str | None = None, database_url: str | None = None):
        self.config = config
        self.book = book
        self.database_url = database_url
        s = config.server
        self.frame_bytes_max = s.frame_bytes_max
        self.outbound_bytes_max = s.outbound_bytes_max
        self.market_data_buffer_bytes_max = s.market_data_buffer_bytes_max
        self.market_data_stall_s = s.market_data_stall_ms_max / 1000
        self.market_data_flush_interval_s = s.market_data_flush_interval_ms / 1000
        self._md_waiting: set[_Connection] = set()     # connections with market data unwritten
        self._md_flushed_at = 0.0
        self._md_timer = None
        self.md: MarketData | None = None
        self.sessions = s.sessions
        self.state = None
        self.journal = None
        self.snapshots = None
        self.writer = None
        self.connections: set[_Connection] = set()
        self.gateway_conn: dict[str, _Connection] = {}
        self.pending: list = []
        # refused requests by (role, command, reason): a trading session trying
        # money or admin commands shows here (and in the log)
        self.refusals: Counter = Counter()
        self._midnight_timer = None
        self._clock_interval_ns = 0     # from the configuration at start()
        self.reading_paused = False
        self.settle_backlog_max = SETTLE_BACKLOG_MAX
        self.pending_max = PENDING_MAX
        self._turn_scheduled = False
        self._listener = None
        self._stop = asyncio.Event()
        self._settle_backlog: deque = deque()
        self._settle_wake = asyncio.Event()
        self._settler = None
        self._sync_task = None
        self._last_snapshot_seq = 0
        self.recovered: Recovered | None = None
        self.failure: str | None = None
        self.port = None
        # a session's gateway ids live in its own namespace: another credential
        # can never resume (or read the replies of) this one's gateway
        self._namespace = {id(sess): hashlib.sha256(sess.token.encode()).hexdigest()[:12]
                           for sess in self.sessions}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.recovered = rec = await recover(self.config, book=self.book,
                                             database_url=self.database_url)
        self.state, self.journal, self.snapshots, self.writer = (
            rec.state, rec.journal, rec.snapshots, rec.writer)
        self.md = MarketData(self.state.engine, depth_max=self.config.server.market_data_depth_max)
        self._last_snapshot_seq = rec.snapshot_seq
        _settle_garbage_collector()
        if self.writer is not None:
            self._settler = asyncio.create_task(self._settle_loop(), name="settler")
            self._settler.add_done_callback(self._settler_ended)
        if self.config.journal.fsync == "batch":
            self._sync_task = asyncio.create_task(self._sync_loop(), name="journal-sync")
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Connection(self),
                                                  self.config.server.host,
                                                  self.config.server.port)
        self.port = self._listener.sockets[0].getsockname()[1]
        self._clock_interval_ns = self.config.server.clock_interval_ms * 1_000_000
        if self._clock_interval_ns:
            self._arm_midnight()
        log.info("serving on %s:%s at seq %s", self.config.server.host, self.port,
                 self.state.seq)

    async def serve(self) -> None:
        await self._stop.wait()
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def fail(self, why: str) -> None:
        """An error the server cannot serve through: stop, and exit non-zero
        (``failure``).  What was acknowledged is journaled; a restart recovers."""
        if self.failure is None:
            self.failure = why
            log.critical("stopping: %s", why)
        self.request_stop()

    def _settler_ended(self, task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.fail(f"settlement writer failed: {task.exception()}")

    async def stop(self) -> None:
        """Graceful: stop accepting, answer what was read, flush the journal
        and settlement, write a snapshot."""
        if self._listener is None:
            return
        self._listener.close()
        self._listener = None
        if self._midnight_timer is not None:
            self._midnight_timer.cancel()
        if self.failure is None:
            self._turn()                        # the commands already read
        if self._md_timer is not None:
            self._md_timer.cancel()
        for conn in list(self.connections):
            conn.flush()
            conn.transport.close()
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self.failure is not None:
            await self.abort()
            return
        self.journal.sync()
        if self.writer is not None:
            await self.settle_backlog()
            self._settler.cancel()
            try:
                await self._settler
            except asyncio.CancelledError:
                pass
            await self.writer.close()
        self._snapshot()
        self.journal.close()

    async def settle_backlog(self) -> None:
        """Return when every applied command has been given to the settlement
        writer and the writer has committed it."""
        if self.writer is None:
            return
        self._settle_wake.set()
        while self._settle_backlog and not self._settler.done():
            await asyncio.sleep(0.001)
        await self.writer.flush()

    async def abort(self) -> None:
        """Stop at once, as a crash would (tests): nothing flushed, no snapshot."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self.connections):
            conn.transport.abort()
        for task in (self._settler, self._sync_task):
            if task is not None:
                task.cancel()
        if self.writer is not None:
            await self.writer.abort()
        self.journal.close()

    # ------------------------------------------------------------------ sessions
    def hello(self, conn: _Connection, msg: P.Hello) -> bool:
        if msg.version != P.PROTOCOL_VERSION:
            conn.fail(P.ERR_BAD_VERSION, f"server speaks version {P.PROTOCOL_VERSION}")
            return False
        session = None
        token = msg.token.encode() if type(msg.token) is str else b""
        for s in self.sessions:         # every token compared, in constant time
            if hmac.compare_digest(s.token.encode(), token) and session is None:
                session = s
        if session is None:
            conn.fail(P.ERR_BAD_TOKEN, "unknown token")
            return False
        gid = msg.gateway_id
        if (not gid or len(gid) > P.GATEWAY_ID_MAX or "\x00" in gid
                or (session.gateway_id is not None and gid != session.gateway_id)):
            conn.fail(P.ERR_BAD_GATEWAY_ID, "gateway_id empty, too long, or not this token's")
            return False
        gid = f"{self._namespace[id(session)]}:{gid}"
        if gid not in self.state.gateways and len(self.state.gateways) >= GATEWAYS_MAX:
            conn.fail(P.ERR_TOO_MANY_GATEWAYS, f"{GATEWAYS_MAX} gateway ids are known")
            return False
        old = self.gateway_conn.get(gid)
        if old is not None:
            old.cancel_on_disconnect = False        # the session goes on, on the new connection
            old.fail(P.ERR_BAD_GATEWAY_ID, "the same gateway_id connected again")
        conn.session, conn.gateway_id = session, gid
        conn.cancel_on_disconnect = msg.cancel_on_disconnect is True
        self.gateway_conn[gid] = conn
        g = self.state.gateway(gid)
        g.acknowledge(msg.last_report_seq)
        frames, lost = g.reports_after(msg.last_report_seq)
        engine = self.state.engine
        conn.transport.write(P.encode_frame(P.Welcome(
            P.PROTOCOL_VERSION, engine.seq, g.last_request_id, g.report_seq, lost,
            list(engine.assets), list(engine.instruments))) + b"".join(frames))
        return True

    # ------------------------------------------------------------------ the turn
    def schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)
        if len(self.pending) > self.pending_max:
            self._pause_reading()

    def _turn(self) -> None:
        try:
            self._run_turn()
        except Exception:
            log.exception("a loop turn failed")
            self.fail("a loop turn failed (a bug): see the log; a restart recovers from the journal")
            raise

    def _run_turn(self) -> None:
        self._turn_scheduled = False
        items, self.pending = self.pending, []
        state = self.state
        clock = self._clock_due(state.engine.now, bool(items))
        if not items and clock is None:
            return
        seq = state.seq
        records = []
        plan = []               # (conn, kind, payload) in arrival order
        if clock is not None:   # first: the turn's commands happen at this time
            seq += 1
            rid = state.gateway(CLOCK_GATEWAY).last_request_id + 1
            records.append(JournalRecord(seq, CLOCK_GATEWAY, rid, clock.ts_ns, clock))
            plan.append((None, _KIND_INTERNAL, (CLOCK_GATEWAY, rid, clock)))
        in_turn: set[tuple[str, int]] = set()      # (gateway, request id) journaled this turn
        cod_rid = None          # the last request id given to a cancel-on-disconnect command
        cod_items = []          # this turn's cancel-on-disconnect items (retried if not journaled)
        for item in items:
            conn, msg, received_ns = item
            if conn is None:                            # a dropped session's cancels
                if cod_rid is None:
                    cod_rid = state.gateway(CANCEL_ON_DISCONNECT_GATEWAY).last_request_id
                if msg.order_ids is None:
                    # the commands read before the drop are all applied by now;
                    # a reconnected session's come after this item
                    msg.order_ids = state.open_orders_of(msg.gateway_id)
                    log.info("cancel on disconnect: %s, %d open orders", msg.gateway_id,
                             len(msg.order_ids))
                if msg.order_ids:
                    cod_items.append(item)
                for order_id in msg.order_ids:
                    order = state.engine.order(order_id)
                    if order is None:
                        continue
                    seq += 1
                    cod_rid += 1
                    command = CancelOrder(order["account"], order_id)
                    records.append(JournalRecord(seq, CANCEL_ON_DISCONNECT_GATEWAY, cod_rid,
                                                 received_ns, command))
                    plan.append((None, _KIND_INTERNAL,
                                 (CANCEL_ON_DISCONNECT_GATEWAY, cod_rid, command)))
                continue
            if conn.closed:
                continue
            t = type(msg)
            if t is P.Request:
                rid = msg.request_id
                if not 0 < rid <= P.REQUEST_ID_MAX:
                    conn.fail(P.ERR_INVALID_REQUEST_ID, f"request_id {rid}")
                    continue
                refusal = self._refuse(conn.session, msg.command)
                if refusal is not None:
                    self._refused(conn, msg.command, refusal)
                    plan.append((conn, _KIND_FRAME, P.encode_frame(P.Error(rid, *refusal))))
                    continue
                g = state.gateway(conn.gateway_id)
                old = g.reply(rid, msg.command)
                if old is not None:                     # a resend: the original reply
                    plan.append((conn, _KIND_FRAME, old if old is not REUSED else P.encode_frame(
                        P.Error(rid, P.ERR_REQUEST_ID_REUSED,
                                "this request id carried another command: nothing applied"))))
                    continue
                if rid <= g.last_request_id or (conn.gateway_id, rid) in in_turn:
                    plan.append((conn, _KIND_FRAME, P.encode_frame(P.Error(
                        rid, P.ERR_STALE_REQUEST_ID,
                        f"request ids must increase; last was {g.last_request_id}"))))
                    continue
                seq += 1
                in_turn.add((conn.gateway_id, rid))
                records.append(JournalRecord(seq, conn.gateway_id, rid, received_ns, msg.command))
                plan.append((conn, _KIND_COMMAND, msg))
            elif t is P.Bye:
                plan.append((conn, _KIND_BYE, msg))
            elif t is P.Subscribe or t is P.Unsubscribe:
                if not 0 < msg.request_id <= P.REQUEST_ID_MAX:
                    conn.fail(P.ERR_INVALID_REQUEST_ID, f"request_id {msg.request_id}")
                    continue
                plan.append((conn, _KIND_MARKET_DATA, msg))
            else:
                plan.append((conn, _KIND_QUERY, msg))
        journaled, journal_error = True, P.ERR_JOURNAL_WRITE_FAILED
        if records:
            try:
                self.journal.append(records)
            except JournalWriteError as exc:
                log.error("journal write failed: %s", exc)
                journaled = False
                if self.journal.failed:
                    # the batch may be on disk after all: its outcome is unknown
                    journal_error = P.ERR_OUTCOME_UNKNOWN
                    self.fail(f"the journal can no longer be written: {exc}")
                elif cod_items:
                    self._retry_cancels(cod_items)
        reports_out = []
        backlog = self._settle_backlog if self.writer is not None else None
        md = self.md
        md_note = md.note if md.active else None    # no subscriber: market data costs nothing
        md_subscribe = {}       # (conn, symbol) -> (depth, request id): snapshots after the turn
        touched = set()
        for conn, kind, payload in plan:
            if kind == _KIND_COMMAND:
                touched.add(conn)
                rid = payload.request_id
                if not journaled:
                    conn.send(P.encode_frame(P.Error(rid, journal_error, (
                        "command not applied" if journal_error == P.ERR_JOURNAL_WRITE_FAILED
                        else "resend the same request id once the server is back"))))
                    continue
                events, reply, reports = state.apply(conn.gateway_id, rid, payload.command)
                conn.send(reply)
                if backlog is not None:
                    backlog.append(events)
                if reports:
                    reports_out.extend(reports)
                if md_note is not None:
                    md_note(payload.command, events)
            elif kind == _KIND_FRAME:
                touched.add(conn)
                conn.send(payload)
            elif kind == _KIND_QUERY:
                touched.add(conn)
                conn.send(self._answer(conn.session, payload))
            elif kind == _KIND_MARKET_DATA:
                touched.add(conn)
                self._market_data_request(conn, payload, md_subscribe)
            elif kind == _KIND_INTERNAL:       # the server's own: a Clock, a dropped session's cancels
                if not journaled:               # cancels: retried (_retry_cancels); a Clock: next turn
                    continue
                events, _, reports = state.apply(*payload)
                if backlog is not None:
                    backlog.append(events)
                if reports:
                    reports_out.extend(reports)
                if md_note is not None:
                    md_note(payload[2], events)
            else:
                touched.discard(conn)
                if payload.keep_orders:
                    conn.cancel_on_disconnect = False
                conn.flush()
                conn.closed = True
                conn.transport.close()
                conn._gone()
        for gid, frame in reports_out:
            target = self.gateway_conn.get(gid)
            if target is not None:
                target.send(frame)
                touched.add(target)
        if md_note is not None or md_subscribe:
            self._publish_market_data(md_subscribe, touched)
        for conn in touched:
            conn.flush()
        if self._md_waiting:
            self._md_flush_due()
        if backlog is not None and records and journaled:
            self._settle_wake.set()
            if len(backlog) > self.settle_backlog_max:
                self._pause_reading()
        if self.reading_paused:
            self._maybe_resume_reading()
        if state.seq - self._last_snapshot_seq >= self.config.journal.snapshot_every:
            self._snapshot()

    # ------------------------------------------------------------------ market data
    def _market_data_request(self, conn, msg, md_subscribe: dict) -> None:
        """A Subscribe is checked now and answered after the turn's updates
        (its snapshot then shows the state its seq names); an Unsubscribe at once."""
        md = self.md
        if type(msg) is P.Unsubscribe:
            planned = md_subscribe.pop((conn, msg.symbol), None)
            if planned is not None:
                self._supersede(conn, planned[1])
            self._supersede(conn, conn.md_deferred.pop(msg.symbol, None))
            md.unsubscribe(conn, msg.symbol)
            conn.send(P.encode_frame(P.Unsubscribed(msg.request_id, msg.symbol)))
            return
        refusal = md.check(msg.symbol, msg.depth)
        if refusal is not None:
            conn.send(P.encode_frame(P.Error(msg.request_id, *refusal)))
            return
        md.unsubscribe(conn, msg.symbol)        # no update of the old depth this turn
        planned = md_subscribe.pop((conn, msg.symbol), None)
        if planned is not None:
            self._supersede(conn, planned[1])
        md_subscribe[(conn, msg.symbol)] = (msg.depth, msg.request_id)

    @staticmethod
    def _supersede(conn, rid: int | None) -> None:
        """The Subscribe ``rid``, not yet answered, was replaced (by a later
        Subscribe or an Unsubscribe of its symbol): it is answered
        ``superseded``, so every request gets one answer."""
        if rid is None:
            return
        conn.send(P.encode_frame(P.Error(rid, P.ERR_SUPERSEDED,
                                         "a later Subscribe or Unsubscribe of the symbol")))

    def _publish_market_data(self, md_subscribe: dict, touched: set) -> None:
        """The turn's updates go to each subscriber's market-data queue unless
        it is behind (then a resync notice, and nothing more until it
        drains); new subscriptions get their snapshots."""
        md = self.md
        limit = self.market_data_buffer_bytes_max
        waiting = self._md_waiting
        for frame, subscribers in md.publish():
            size = len(frame)
            for conn in subscribers:
                if conn.md_stalled or conn.closed:
                    continue
                # what the reader has not taken yet; this turn's replies do not
                # count, and a frame larger than the limit still goes to a
                # reader that is keeping up
                unread = conn.transport.get_write_buffer_size() + conn.md_out_bytes
                if unread and unread + size > limit:
                    self._md_stall(conn)
                    continue
                conn.md_out.append(frame)
                conn.md_out_bytes += size
                waiting.add(conn)
        for (conn, symbol), (depth, rid) in md_subscribe.items():
            if conn.closed:
                continue
            snapshot = md.subscribe(conn, symbol, depth, rid)
            if conn.md_stalled:                 # it follows the resync's snapshots
                self._supersede(conn, conn.md_deferred.get(symbol))
                conn.md_deferred[symbol] = rid
                touched.add(conn)
                continue
            conn.send(snapshot)
            touched.add(conn)

    def _md_flush_due(self) -> None:
        """Write the queued market data now, or, if the last write was less
        than ``market_data_flush_interval_ms`` ago, then: under load each
        subscriber costs one write per interval, not one per turn."""
        loop = asyncio.get_running_loop()
        due = self._md_flushed_at + self.market_data_flush_interval_s
        if loop.time() >= due:
            self._md_flush()
        elif self._md_timer is None:
            self._md_timer = loop.call_at(due, self._md_flush)

    def _md_flush(self) -> None:
        if self._md_timer is not None:
            self._md_timer.cancel()
            self._md_timer = None
        waiting, self._md_waiting = self._md_waiting, set()
        written = False
        for conn in waiting:
            if conn.md_out and not conn.closed:
                conn.flush()
                written = True
        if written:         # the interval runs from a write, not from a flush with nothing left
            self._md_flushed_at = asyncio.get_running_loop().time()

    def _md_stall(self, conn) -> None:
        conn.md_stalled = True
        loop = asyncio.get_running_loop()
        conn.md_stalled_at = loop.time()
        for symbol in self.md.subscriptions.get(conn, ()):
            frame = P.encode_frame(P.MarketDataResync(symbol, P.RESYNC_SLOW_READER))
            conn.md_out.append(frame)
            conn.md_out_bytes += len(frame)
        self._md_waiting.add(conn)
        log.info("market data to %s stopped: %d bytes unsent", conn.gateway_id,
                 conn.transport.get_write_buffer_size())
        conn.md_timer = loop.call_later(MD_DRAIN_POLL_S, self._md_poll, conn)

    def _md_poll(self, conn) -> None:
        """A stalled subscriber: fresh snapshots once drained; disconnected
        if it stays behind for ``market_data_stall_ms_max``."""
        if conn.closed or not conn.md_stalled:
            return
        if conn.transport.get_write_buffer_size() <= self.market_data_buffer_bytes_max // 4:
            self.md_resume(conn)
            return
        loop = asyncio.get_running_loop()
        if loop.time() - conn.md_stalled_at > self.market_data_stall_s:
            conn.fail(P.ERR_SLOW_READER, f"market data not read for "
                      f"{self.market_data_stall_s * 1000:.0f} ms", linger_s=CLOSE_LINGER_S)
            return
        conn.md_timer = loop.call_later(MD_DRAIN_POLL_S, self._md_poll, conn)

    def md_resume(self, conn) -> None:
        """Between turns (every published view is the engine's state): a
        fresh snapshot of each subscription instead of the backlog."""
        if not conn.md_stalled or conn.closed:
            return
        conn.md_stalled = False
        if conn.md_timer is not None:
            conn.md_timer.cancel()
            conn.md_timer = None
        md = self.md
        deferred, conn.md_deferred = conn.md_deferred, {}
        frames = [md.snapshot(conn, symbol, deferred.get(symbol, 0))
                  for symbol in md.subscriptions.get(conn, ())]
        if frames:
            conn.md_out.extend(frames)
            conn.md_out_bytes += sum(map(len, frames))
            conn.flush()

    # ------------------------------------------------------------------ cancel on disconnect
    def cancel_on_disconnect(self, gateway_id: str) -> None:
        """The connection of a session that asked for it dropped: cancel the
        open orders its gateway placed, as commands of a later turn.  Only
        the gateway id is queued: the drop may come in the middle of a turn
        whose planned commands are applied after it, so its orders are
        listed when the item is planned.  Not when the server itself stops:
        orders outlive a restart."""
        if self._listener is None or self.failure is not None:
            return
        self.pending.append((None, _CancelOnDisconnect(gateway_id), time.time_ns()))
        self.schedule_turn()

    def _retry_cancels(self, items: list) -> None:
        """The journal refused a turn's cancels (and is still usable): they
        go back to the head of the queue, with the orders they resolved,
        and are tried again by the next turn (at the latest in
        ``COD_RETRY_S``)."""
        log.error("cancel-on-disconnect of %d gateways not journaled: retrying", len(items))
        self.pending[:0] = items
        asyncio.get_running_loop().call_later(COD_RETRY_S, self._retry_turn)

    def _retry_turn(self) -> None:
        if self._listener is not None and self.failure is None and self.pending:
            self.schedule_turn()

    # ------------------------------------------------------------------ time
    def _clock_due(self, engine_now: int, flowing: bool):
        """The Clock this turn starts with, or None: when commands flow and the
        wall clock has moved on by ``server.clock_interval_ms`` since the
        engine's now, and at every UTC midnight (a timer wakes an idle server
        for it); never with the interval 0.  A wall clock behind the engine's
        now (stepped back) sends nothing: the engine's time never moves
        backwards."""
        interval = self._clock_interval_ns
        if not interval:
            return None
        now_ns = time.time_ns()
        if now_ns <= engine_now:
            return None
        if (flowing and now_ns - engine_now >= interval) \
                or now_ns // DAY_NS != engine_now // DAY_NS:
            return Clock(now_ns)
        return None

    def _midnight(self) -> None:
        """A turn at each UTC midnight, so the engine's day moves on even
        when no command flows (daily withdrawal limits reset)."""
        if self._listener is None or self.failure is not None:
            return
        self.schedule_turn()
        self._arm_midnight()

    def _arm_midnight(self) -> None:
        wait_s = (DAY_NS - time.time_ns() % DAY_NS) / 1e9 + 0.001
        self._midnight_timer = asyncio.get_running_loop().call_later(wait_s, self._midnight)

    # ------------------------------------------------------------------ permissions
    def _refuse(self, session, command):
        """(reason, detail) when the session may not send this command, else None."""
        t = type(command)
        if t not in ROLE_COMMANDS[session.role]:
            return P.ERR_NOT_PERMITTED, f"role {session.role} may not send {t.__name__}"
        admin = getattr(command, "admin", None)
        if admin and session.role != "admin" and t in _TRADING:
            return P.ERR_NOT_PERMITTED, f"only an admin session cancels as admin ({t.__name__})"
        if session.name is not None and admin is not None and admin != session.name \
                and not (admin == "" and t in _TRADING):
            return P.ERR_NOT_PERMITTED, (f"{t.__name__}: admin must be this session's name "
                                         f"{session.name!r}, not {admin!r}")
        if session.accounts is not None:
            if t in _NO_ACCOUNT:
                account = self._named_account(command)
                if account is None:
                    return None         # a symbol, or an id the engine will answer unknown
            else:
                account = command.account
            if type(account) is not int or account not in session.accounts:
                return P.ERR_ACCOUNT_NOT_PERMITTED, f"account {account!r}"
        return None

    def _named_account(self, command):
        """The account of the pending withdrawal or adjustment a command names."""
        engine = self.state.engine
        t = type(command)
        if t is ApproveWithdrawal or t is RejectWithdrawal:
            for w in engine.pending_withdrawals():
                if w.withdrawal_id == command.withdrawal_id:
                    return w.account
        elif t is ApproveAdjustment:
            for a in engine.pending_adjustments():
                if a.adjustment_id == command.adjustment_id:
                    return a.account
        return None

    def _refused(self, conn, command, refusal) -> None:
        """Count a refused request (``Server.refusals``, by role, command and
        reason) and log it: a trading session's attempt at money or admin
        commands is something an operator wants to see."""
        key = (conn.session.role, type(command).__name__, refusal[0])
        self.refusals[key] += 1
        log.warning("refused %s from gateway %s (role %s): %s: %s", key[1], conn.gateway_id,
                    key[0], refusal[0], refusal[1])

    def _answer(self, session, q) -> bytes:
        engine = self.state.engine
        t = type(q)
        if t is P.QueryBalances or t is P.QueryOpenOrders:
            if not session.may_act_for(q.account):
                return P.encode_frame(P.Error(q.request_id, P.ERR_ACCOUNT_NOT_PERMITTED,
                                              f"account {q.account}"))
            if t is P.QueryBalances:
                rows = [P.Balance(a.name, *engine.balance(q.account, a.name))
                        for a in engine.assets]
                return P.encode_frame(P.BalancesReply(q.request_id, q.account, rows))
            return P.encode_frame(P.OrdersReply(
                q.request_id, [_order_info(o) for o in engine.open_orders(q.account)]))
        if t is P.QueryOrder:
            o = engine.order(q.order_id) if type(q.order_id) is int else None
            if o is None or not session.may_act_for(o["account"]):
                return P.encode_frame(P.OrdersReply(q.request_id, []))
            return P.encode_frame(P.OrdersReply(q.request_id, [_order_info(o)]))
        if t is P.QueryDepth:
            try:
                engine.market(q.symbol)
            except KeyError:
                return P.encode_frame(P.Error(q.request_id, P.ERR_UNKNOWN_SYMBOL, q.symbol))
            levels = min(max(int(q.levels), 1), self.md.depth_max)    # the subscriptions' cap
            bids, asks = engine.depth(q.symbol, levels)
            return P.encode_frame(P.DepthReply(q.request_id, q.symbol, engine.seq,
                                               list(bids), list(asks)))
        if t is P.QueryPending:
            if q.account is not None and not session.may_act_for(q.account):
                return P.encode_frame(P.Error(q.request_id, P.ERR_ACCOUNT_NOT_PERMITTED,
                                              f"account {q.account}"))
            withdrawals = [w for w in engine.pending_withdrawals(q.account)
                           if session.may_act_for(w.account)]
            adjustments = ([a for a in engine.pending_adjustments()
                            if q.account in (None, a.account) and session.may_act_for(a.account)]
                           if session.role == "admin" else [])
            return P.encode_frame(P.PendingReply(q.request_id, withdrawals, adjustments))
        return P.encode_frame(P.MarketsReply(q.request_id, list(engine.assets),
                                             list(engine.instruments)))

    # ------------------------------------------------------------------ flow control
    def _pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            for conn in self.connections:
                if not conn.closed:
                    conn.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        """Resume once both queues are below their low-water marks."""
        if (len(self.pending) < self.pending_max // 2
                and len(self._settle_backlog) < self.settle_backlog_max // 2):
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            for conn in self.connections:
                if not conn.closed:
                    conn.transport.resume_reading()

    async def _settle_loop(self) -> None:
        backlog, writer = self._settle_backlog, self.writer
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            while backlog:
                # under fsync=batch the journal may trail the replies: settle
                # only what is on disk, so PostgreSQL is never ahead of it
                if backlog[0][0].seq > self.journal.durable_seq:
                    await asyncio.sleep(self.config.journal.fsync_interval_ms / 1000)
                    if backlog[0][0].seq > self.journal.durable_seq:
                        self.journal.sync()
                    continue
                await writer.put(backlog.popleft())
                if self.reading_paused:
                    self._maybe_resume_reading()

    async def _sync_loop(self) -> None:
        interval = self.config.journal.fsync_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            if self.journal.sync_due():
                self.journal.sync()

    # ------------------------------------------------------------------ snapshots
    def _snapshot(self) -> None:
        """Write a snapshot; prune what neither recovery nor settlement needs."""
        seq = self.state.seq
        self.journal.sync()
        if not (self.snapshots.list() and self.snapshots.list()[-1].seq == seq):
            self.snapshots.write(seq, self.state.snapshot())
        self._last_snapshot_seq = seq
        settled = self.writer.committed_seq if self.writer is not None else seq
        found = newest_at_or_below(self.snapshots, settled)
        base = found[0] if found is not None else 0
        self.snapshots.prune(keep=2, keep_from_seq=base)
        self.journal.prune(base + 1)


def _settle_garbage_collector() -> None:
    """Move everything recovery built out of the collector's sight and make
    young collections rarer: a full collection over a large engine state
    stalls the loop for tens of milliseconds, the replies with it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD_YOUNG, *gc.get_threshold()[1:])


def _order_info(o: dict) -> P.OrderInfo:
    return P.OrderInfo(o["order_id"], o["status"], o["account"], o["symbol"], o["side"],
                       o["type"], o["tif"], o["price"], o["qty"], o.get("stop_price"),
                       o.get("client_order_id", ""), o["reserved"])


# ---------------------------------------------------------------------- entry
def new_event_loop():
    try:
        import uvloop
    except ImportError:     # pragma: no cover - uvloop is a dependency where it builds
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _main(config, ready=None) -> int:
    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)
    print(f"exchange: serving on {config.server.host}:{server.port} at seq {server.state.seq}",
          flush=True)
    if ready is not None:
        ready(server)
    await server.serve()
    if server.failure is not None:
        print(f"exchange: error: {server.failure}", file=sys.stderr, flush=True)
        return 2
    print(f"exchange: stopped at seq {server.state.seq}", flush=True)
    return 0


def run(config) -> int:
    """``exchange serve``: serve until SIGINT/SIGTERM; 0 after a clean stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)    # its pg_ctl chatter
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_main(config))
