"""The service's state beside the engine: what each gateway is owed.

``ServiceState.apply(record)`` applies one journaled command to the engine
and updates, deterministically from the journal alone, what the server keeps
per gateway: the replies it may have to send again (a bounded window of
request ids), the highest request id seen, and the execution reports for its
resting orders (numbered per gateway, retained up to a bound until the
gateway acknowledges them in its next hello), and which gateway placed each
open order (for cancel-on-disconnect).  Live serving and recovery run
the same function, so a restarted server owes exactly what the crashed one
owed.  No I/O here: the server sends the frames, the journal stores the
records, ``snapshot()`` gives bytes for the snapshot store.
"""
from __future__ import annotations

from collections import OrderedDict, deque

import msgspec

from ..messages import (Accepted, Cancelled, Command, PlaceOrder, Replaced, Trade, Transfer,
                        Triggered)
from .protocol import Report, Reply, encode_frame

SNAPSHOT_VERSION = 2     # 2: the reply window keeps each request's command
# gateway ids the server itself journals under (a client's is "<hex>:<name>"):
# nobody can resend to them, so no reply window is kept for them
INTERNAL_GATEWAY_PREFIX = "server:"
REQUEST_WINDOW_DEFAULT = 10_000
REPORT_RETENTION_MAX_DEFAULT = 100_000


class GatewayState:
    """What one gateway (by gateway_id) is owed."""
    __slots__ = ("gateway_id", "internal", "last_request_id", "window", "report_seq", "reports",
                 "reports_dropped_seq")

    def __init__(self, gateway_id: str):
        self.gateway_id = gateway_id
        self.internal = gateway_id.startswith(INTERNAL_GATEWAY_PREFIX)     # no reply window
        self.last_request_id = 0
        # request_id -> [command, reply frame or None, seq, events or None]: a reply is
        # encoded when it is first needed (see reply()); the command says whether a
        # resend is the same request
        self.window: OrderedDict[int, list] = OrderedDict()
        self.report_seq = 0                 # the last report numbered for this gateway
        self.reports: deque[tuple[int, bytes]] = deque()       # (report_seq, frame), oldest first
        self.reports_dropped_seq = 0        # reports up to here were dropped unacknowledged

    def reply(self, request_id: int, command=None):
        """The remembered reply frame of ``request_id`` (None if not
        remembered), or ``REUSED`` when ``command`` is given and is not the
        command that request carried."""
        entry = self.window.get(request_id)
        if entry is None:
            return None
        if command is not None and command != entry[0]:
            return REUSED
        if entry[1] is None:
            entry[1] = encode_frame(Reply(request_id, entry[2], entry[3]))
            entry[3] = None
        return entry[1]

    def acknowledge(self, last_report_seq: int) -> None:
        reports = self.reports
        while reports and reports[0][0] <= last_report_seq:
            reports.popleft()

    def reports_after(self, last_report_seq: int) -> tuple[list[bytes], bool]:
        """The retained report frames after ``last_report_seq``, and whether
        some after it were dropped (retention bound)."""
        lost = self.reports_dropped_seq > last_report_seq
        return [frame for n, frame in self.reports if n > last_report_seq], lost


REUSED = object()       # GatewayState.reply: the request id carried another command


class _GatewaySnap(msgspec.Struct, array_like=True):
    gateway_id: str
    last_request_id: int
    window: list[tuple[int, bytes, Command]]
    report_seq: int
    reports: list[tuple[int, bytes]]
    reports_dropped_seq: int


class _Snap(msgspec.Struct, array_like=True):
    version: int
    config_hash: str
    seq: int
    engine: bytes
    gateways: list[_GatewaySnap]
    order_gateway: list[tuple[int, str]]


class SnapshotMismatch(ValueError):
    """A snapshot that does not belong to this configuration or version."""


class ServiceState:
    """The engine plus the per-gateway bookkeeping; see the module docstring."""

    def __init__(self, engine, *, config_hash: str = "",
                 request_window: int = REQUEST_WINDOW_DEFAULT,
                 report_retention_max: int = REPORT_RETENTION_MAX_DEFAULT):
        self.engine = engine
        self.config_hash = config_hash
        self.request_window = request_window
        self.report_retention_max = report_retention_max
        self.gateways: dict[str, GatewayState] = {}
        self.order_gateway: dict[int, str] = {}     # open order id -> the gateway that placed it
        self.gateway_orders: dict[str, set[int]] = {}   # the same pairs, by gateway (no empty sets)

    @property
    def seq(self) -> int:
        return self.engine.seq

    def gateway(self, gateway_id: str) -> GatewayState:
        g = self.gateways.get(gateway_id)
        if g is None:
            g = self.gateways[gateway_id] = GatewayState(gateway_id)
        return g

    def open_orders_of(self, gateway_id: str) -> list[int]:
        """The open orders ``gateway_id`` placed, by order id (the resting
        ones and the waiting stops)."""
        engine = self.engine
        return sorted(oid for oid in self.gateway_orders.get(gateway_id, ())
                      if engine.order(oid) is not None)

    def _own(self, order_id: int, gateway_id: str) -> None:
        assert order_id not in self.order_gateway, order_id     # order ids are never reused
        self.order_gateway[order_id] = gateway_id
        orders = self.gateway_orders.get(gateway_id)
        if orders is None:
            orders = self.gateway_orders[gateway_id] = set()
        orders.add(order_id)

    def _disown(self, order_id: int) -> None:
        gateway_id = self.order_gateway.pop(order_id, None)
        if gateway_id is None:
            return
        orders = self.gateway_orders[gateway_id]
        orders.discard(order_id)
        if not orders:
            del self.gateway_orders[gateway_id]

    # ------------------------------------------------------------------ apply
    def apply(self, gateway_id: str, request_id: int, command, *, replaying: bool = False):
        """Apply one journaled command.  Returns (events, reply frame,
        [(gateway_id, report frame), ...]); the frames are also remembered
        (reply window, retained reports) for resends.  ``replaying``: no
        reply is sent, so it is kept as (seq, events) and encoded only if it
        is ever asked for again (most fall out of the window first)."""
        events = self.engine.submit(command)
        seq = self.engine.seq
        g = self.gateways.get(gateway_id)
        if g is None:
            g = self.gateway(gateway_id)
        if replaying:
            reply = None
            entry = [command, None, seq, events]
        else:
            reply = encode_frame(Reply(request_id, seq, events))
            entry = [command, reply, seq, None]
        if request_id > g.last_request_id:
            g.last_request_id = request_id
        if not g.internal:
            window = g.window
            window[request_id] = entry
            if len(window) > self.request_window:
                window.popitem(last=False)
        reports = self._route(gateway_id, command, events, seq)
        return events, reply, reports

    def _route(self, gateway_id: str, command, events, seq: int):
        """Track which gateway owns each open order; give every other owner
        gateway the events of this command that touch its orders: their
        trades, cancels, amends and triggers, the transfers naming them, and a
        trade's transfers to or from their account, in the command's order."""
        owners = self.order_gateway
        others = None           # order_id -> (owner, account) of orders of other gateways
        closed = []
        for e in events:        # first pass: ownership only (transfers never change it)
            t = type(e)
            if t is Transfer:
                continue
            if t is Accepted:
                self._own(e.order_id, gateway_id)
            elif t is Trade:
                for order_id, account, left in (
                        (e.maker_order_id, e.maker_account, e.maker_remaining),
                        (e.taker_order_id, e.taker_account, e.taker_remaining)):
                    owner = owners.get(order_id)
                    if owner is None:
                        continue
                    if not left:
                        closed.append(order_id)
                    if owner != gateway_id:
                        if others is None:
                            others = {}
                        others[order_id] = (owner, account)
            elif t is Cancelled or t is Replaced or t is Triggered:
                owner = owners.get(e.order_id)
                if t is Cancelled:
                    closed.append(e.order_id)
                if owner is not None and owner != gateway_id:
                    if others is None:
                        others = {}
                    others.setdefault(e.order_id, (owner, 0))     # a Trade's entry knows the account
        for order_id in closed:
            self._disown(order_id)
        if type(command) is PlaceOrder and events and type(events[0]) is Accepted:
            # an order that cannot rest (IOC, FOK, market) has ended with its command
            if not (command.type != "market" and (command.tif == "gtc"
                                                   or command.type != "limit")):
                self._disown(events[0].order_id)
        if others is None:
            return ()
        return self._reports(events, others, seq)

    def _reports(self, events, others: dict, seq: int):
        """Second pass, only when other gateways' orders were touched."""
        per_gateway: dict[str, list] = {}
        trade_parties: dict[int, list] = {}     # trade_id -> [(gateway, account)]
        for e in events:
            t = type(e)
            if t is Transfer:
                if e.trade_id:
                    for owner, account in trade_parties.get(e.trade_id, ()):
                        if account == e.source_account or account == e.target_account:
                            per_gateway[owner].append(e)
                    continue
                hit = others.get(e.order_id) if e.order_id else None
                if hit is not None:
                    per_gateway.setdefault(hit[0], []).append(e)
            elif t is Trade:
                for order_id in (e.maker_order_id, e.taker_order_id):
                    hit = others.get(order_id)
                    if hit is not None:
                        per_gateway.setdefault(hit[0], []).append(e)
                        trade_parties.setdefault(e.trade_id, []).append(hit)
            elif t is Cancelled or t is Replaced or t is Triggered:
                hit = others.get(e.order_id)
                if hit is not None:
                    per_gateway.setdefault(hit[0], []).append(e)
        out = []
        for owner, evs in per_gateway.items():
            g = self.gateway(owner)
            g.report_seq += 1
            frame = encode_frame(Report(g.report_seq, seq, evs))
            g.reports.append((g.report_seq, frame))
            if len(g.reports) > self.report_retention_max:
                g.reports_dropped_seq = g.reports.popleft()[0]
            out.append((owner, frame))
        return out

    # ------------------------------------------------------------------ snapshots
    def snapshot(self) -> bytes:
        """Engine state and gateway bookkeeping as bytes (deterministic)."""
        gateways = [_GatewaySnap(g.gateway_id, g.last_request_id,
                                 [(rid, g.reply(rid), g.window[rid][0]) for rid in list(g.window)],
                                 g.report_seq, list(g.reports), g.reports_dropped_seq)
                    for _, g in sorted(self.gateways.items())]
        open_owners = sorted((oid, gid) for oid, gid in self.order_gateway.items()
                             if self.engine.order(oid) is not None)
        return msgspec.msgpack.encode(_Snap(SNAPSHOT_VERSION, self.config_hash, self.engine.seq,
                                            self.engine.snapshot(), gateways, open_owners))

    @classmethod
    def restore(cls, data: bytes, engine_class, *, config_hash: str = "", book: str = "auto",
                request_window: int = REQUEST_WINDOW_DEFAULT,
                report_retention_max: int = REPORT_RETENTION_MAX_DEFAULT) -> "ServiceState":
        try:
            snap = msgspec.msgpack.decode(data, type=_Snap)
        except msgspec.DecodeError as exc:
            raise SnapshotMismatch(f"not a service snapshot of this version: {exc}") from None
        if snap.version != SNAPSHOT_VERSION:
            raise SnapshotMismatch(f"service snapshot version {snap.version}, "
                                   f"expected {SNAPSHOT_VERSION}")
        if config_hash and snap.config_hash != config_hash:
            raise SnapshotMismatch("snapshot was written under another configuration "
                                   "(assets, instruments or engine options differ)")
        engine = engine_class.restore(snap.engine, book=book)
        if engine.seq != snap.seq:
            raise SnapshotMismatch(f"snapshot says seq {snap.seq}, its engine {engine.seq}")
        state = cls(engine, config_hash=snap.config_hash, request_window=request_window,
                    report_retention_max=report_retention_max)
        for gs in snap.gateways:
            g = state.gateway(gs.gateway_id)
            g.last_request_id = gs.last_request_id
            if not g.internal:
                g.window = OrderedDict((rid, [command, frame, 0, None])
                                       for rid, frame, command in gs.window)
            while len(g.window) > request_window:
                g.window.popitem(last=False)
            g.report_seq = gs.report_seq
            g.reports = deque(gs.reports)
            g.reports_dropped_seq = gs.reports_dropped_seq
        for order_id, gateway_id in snap.order_gateway:
            state._own(order_id, gateway_id)
        return state
