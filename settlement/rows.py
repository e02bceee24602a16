"""Engine events -> settlement rows: the pure mapping (no I/O, no clock).

A ``BatchBuilder`` takes the event lists of whole commands (each the list one
``Engine.submit`` returned), in seq order with no gap, and accumulates what
one settlement transaction writes:

- ``transfers``, ``trades``, ``audit``: tuples for COPY into the ledger tables,
  in the column order of ``TRANSFER_COLUMNS``, ``TRADE_COLUMNS``,
  ``AUDIT_COLUMNS``;
- ``order_rows()``: the latest state of every order the batch touched, split
  into orders accepted in this batch (inserted whole) and updates to orders
  accepted earlier (applied as deltas);
- ``balance_rows()``: one row per touched (account, asset): the summed delta of
  each bucket, and each touched bucket's balance after the batch as the engine
  reported it (``Transfer.source_balance``/``target_balance``), so the writer
  can check "balance before + deltas == engine's balance after".

Which events become rows: ``Transfer`` -> transfers (+ balances), ``Trade`` ->
trades, ``Adjusted`` -> audit_log; ``Accepted``, ``Trade``, ``Cancelled``,
``Replaced`` and ``Triggered`` -> orders.  ``Rejected``, ``Halted`` and
``Resumed`` move no money and write no row; their seq still counts.

Numbers stay Python ints; ids of value 0 ("none" in the engine) become NULL.
Anything the mapping cannot express (an unknown asset, a bucket that is not
available/locked, events of two commands in one list, a gap in seq) raises
``MappingError``; after that the builder must be discarded.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from engine.messages import (Accepted, Adjusted, Cancelled, Halted, Rejected, Replaced, Resumed,
                             Trade, Transfer, Triggered)

__all__ = ["BatchBuilder", "MappingError", "TRANSFER_COLUMNS", "TRADE_COLUMNS", "AUDIT_COLUMNS",
           "ORDER_COLUMNS", "ORDER_UPDATE_COLUMNS", "BALANCE_COLUMNS", "AVAILABLE", "LOCKED",
           "STATUS_OPEN", "STATUS_FILLED", "STATUS_CANCELLED"]

AVAILABLE, LOCKED = "available", "locked"
STATUS_OPEN, STATUS_FILLED, STATUS_CANCELLED = "open", "filled", "cancelled"

TRANSFER_COLUMNS = ("seq", "event_index", "asset_id", "amount", "source_account",
                    "source_bucket", "target_account", "target_bucket", "kind", "ref",
                    "order_id", "trade_id", "source_balance", "target_balance")
TRADE_COLUMNS = ("trade_id", "seq", "event_index", "symbol", "price_ticks", "qty_lots",
                 "base_asset_id", "quote_asset_id", "base_amount", "quote_amount",
                 "maker_order_id", "taker_order_id", "maker_account", "taker_account",
                 "taker_side", "maker_fee", "taker_fee", "maker_remaining_lots",
                 "taker_remaining_lots")
AUDIT_COLUMNS = ("seq", "event_index", "account_id", "asset_id", "amount", "admin", "reason",
                 "available_before", "available_after")
ORDER_COLUMNS = ("order_id", "account_id", "client_order_id", "symbol", "side", "price_ticks",
                 "qty_lots", "open_qty_lots", "filled_qty_lots", "status", "cancel_reason",
                 "accepted_seq", "updated_seq")
# an update to an order accepted in an earlier batch: NULL = unchanged,
# filled_qty_lots is the increase
ORDER_UPDATE_COLUMNS = ("order_id", "price_ticks", "open_qty_lots", "filled_qty_lots", "status",
                        "cancel_reason", "updated_seq")
# available_after/locked_after: NULL when the batch did not touch that bucket
BALANCE_COLUMNS = ("account_id", "asset_id", "available_delta", "locked_delta",
                   "available_after", "locked_after", "updated_seq")

_NO_ROW = (Rejected, Halted, Resumed)

# order state slots (a list per order while the batch is built)
_O_ID, _O_ACCOUNT, _O_CID, _O_SYMBOL, _O_SIDE, _O_PRICE, _O_QTY, _O_OPEN, _O_FILLED, \
    _O_STATUS, _O_REASON, _O_ACCEPTED_SEQ, _O_UPDATED_SEQ = range(13)


class MappingError(ValueError):
    """Events the settlement mapping cannot express; an engine or configuration bug."""

    def __init__(self, message: str, events: Sequence = ()):
        super().__init__(message)
        self.events = list(events)


class BatchBuilder:
    """Accumulates the rows of one settlement batch; see the module docstring."""

    __slots__ = ("asset_ids", "first_seq", "last_seq", "n_commands", "n_events", "transfers",
                 "trades", "audit", "_balances", "_orders", "_accepted")

    def __init__(self, asset_ids: Mapping[str, int]):
        self.asset_ids = asset_ids
        self.first_seq = 0          # 0: empty
        self.last_seq = 0
        self.n_commands = 0
        self.n_events = 0
        self.transfers: list[tuple] = []
        self.trades: list[tuple] = []
        self.audit: list[tuple] = []
        # (account, asset_id) -> [available_delta, locked_delta, available_after,
        #                         locked_after, updated_seq]
        self._balances: dict[tuple[int, int], list] = {}
        self._orders: dict[int, list] = {}      # order_id -> state slots
        self._accepted: set[int] = set()        # orders accepted in this batch

    @property
    def n_rows(self) -> int:
        """Ledger rows (transfers + trades + audit) accumulated so far."""
        return len(self.transfers) + len(self.trades) + len(self.audit)

    # ------------------------------------------------------------------ input
    def add(self, events: Sequence) -> None:
        """Map the events of one command (all with the same seq, the next one)."""
        if not events:
            raise MappingError("a command has at least one event; got none")
        seq = events[0].seq
        if type(seq) is not int or seq < 1:
            raise MappingError(f"bad seq {seq!r}", events)
        if self.last_seq and seq != self.last_seq + 1:
            raise MappingError(f"seq {seq} does not follow {self.last_seq}: a gap or a reorder",
                               events)
        for ev in events:
            if ev.seq != seq:
                raise MappingError(f"events of seq {seq} and {ev.seq} in one command", events)
        asset_ids = self.asset_ids
        balances = self._balances
        transfers = self.transfers
        trades_open: dict[int, list] | None = None
        for index, ev in enumerate(events):
            t = type(ev)
            if t is Transfer:
                asset_id = asset_ids.get(ev.asset)
                if asset_id is None:
                    raise MappingError(f"unknown asset {ev.asset!r} (register the engine's assets "
                                       "with the writer or register_assets())", events)
                amount = ev.amount
                source, target = ev.source_account, ev.target_account
                transfers.append((seq, index, asset_id, amount, source, ev.source_bucket, target,
                                  ev.target_bucket, ev.kind, ev.ref, ev.order_id or None,
                                  ev.trade_id or None, ev.source_balance, ev.target_balance))
                row = balances.get((source, asset_id))
                if row is None:
                    row = balances[(source, asset_id)] = [0, 0, None, None, seq]
                if ev.source_bucket == AVAILABLE:
                    row[0] -= amount
                    row[2] = ev.source_balance
                elif ev.source_bucket == LOCKED:
                    row[1] -= amount
                    row[3] = ev.source_balance
                else:
                    raise MappingError(f"bad source_bucket {ev.source_bucket!r}", events)
                row[4] = seq
                row = balances.get((target, asset_id))
                if row is None:
                    row = balances[(target, asset_id)] = [0, 0, None, None, seq]
                if ev.target_bucket == AVAILABLE:
                    row[0] += amount
                    row[2] = ev.target_balance
                elif ev.target_bucket == LOCKED:
                    row[1] += amount
                    row[3] = ev.target_balance
                else:
                    raise MappingError(f"bad target_bucket {ev.target_bucket!r}", events)
                row[4] = seq
                if ev.kind == "trade":
                    if trades_open is None or ev.trade_id not in trades_open:
                        raise MappingError(f"trade transfer for trade {ev.trade_id} without its "
                                           "Trade event before it", events)
                    self._trade_leg(trades_open, ev, asset_id, events)
            elif t is Trade:
                if trades_open is None:
                    trades_open = {}
                if ev.trade_id in trades_open:
                    raise MappingError(f"trade {ev.trade_id} twice", events)
                trades_open[ev.trade_id] = [
                    ev.trade_id, seq, index, ev.symbol, ev.price, ev.qty, None, None, None, None,
                    ev.maker_order_id, ev.taker_order_id, ev.maker_account, ev.taker_account,
                    ev.taker_side, ev.maker_fee, ev.taker_fee, ev.maker_remaining,
                    ev.taker_remaining]
                o = self._order(ev.maker_order_id, seq)
                o[_O_OPEN] = ev.maker_remaining
                o[_O_FILLED] += ev.qty
                o[_O_STATUS] = STATUS_OPEN if ev.maker_remaining else STATUS_FILLED
                o = self._order(ev.taker_order_id, seq)
                o[_O_OPEN] = ev.taker_remaining
                o[_O_FILLED] += ev.qty
                # a market buy sized by quote_qty reports 0 remaining on every fill;
                # if its budget is not used up a Cancelled follows in this command
                o[_O_STATUS] = STATUS_OPEN if ev.taker_remaining else STATUS_FILLED
            elif t is Accepted:
                oid = ev.order_id
                if oid in self._orders:
                    raise MappingError(f"order {oid} accepted after it was already seen", events)
                self._orders[oid] = [oid, ev.account, ev.client_order_id, ev.symbol, ev.side,
                                     ev.price, ev.qty, ev.qty, 0, STATUS_OPEN, None, seq, seq]
                self._accepted.add(oid)
            elif t is Cancelled:
                o = self._order(ev.order_id, seq)
                o[_O_OPEN] = 0
                o[_O_STATUS] = STATUS_CANCELLED
                o[_O_REASON] = ev.reason
            elif t is Replaced:
                o = self._order(ev.order_id, seq)
                if ev.price:      # 0: a market order decremented by self-trade prevention
                    o[_O_PRICE] = ev.price
                o[_O_OPEN] = ev.qty
                o[_O_STATUS] = STATUS_OPEN
            elif t is Triggered:
                o = self._order(ev.order_id, seq)
                o[_O_STATUS] = STATUS_OPEN
            elif t is Adjusted:
                asset_id = asset_ids.get(ev.asset)
                if asset_id is None:
                    raise MappingError(f"unknown asset {ev.asset!r}", events)
                self.audit.append((seq, index, ev.account, asset_id, ev.amount, ev.admin, ev.reason,
                                   ev.available_before, ev.available_after))
            elif t in _NO_ROW:
                pass
            else:
                raise MappingError(f"unknown event type {t.__name__}", events)
        if trades_open:
            raise MappingError(f"trades {sorted(trades_open)} without both trade transfers", events)
        if not self.first_seq:
            self.first_seq = seq
        self.last_seq = seq
        self.n_commands += 1
        self.n_events += len(events)

    def _trade_leg(self, trades_open: dict, ev: Transfer, asset_id: int, events) -> None:
        """The engine books a trade as two transfers right after its Trade
        event: base from seller to buyer, then quote from buyer to seller."""
        row = trades_open[ev.trade_id]
        taker_buys = row[14] == "buy"
        buyer, seller = (row[13], row[12]) if taker_buys else (row[12], row[13])
        if row[6] is None:
            if ev.source_account != seller or ev.target_account != buyer:
                raise MappingError(f"trade {ev.trade_id}: first leg is not seller -> buyer", events)
            row[6], row[8] = asset_id, ev.amount
        else:
            if ev.source_account != buyer or ev.target_account != seller:
                raise MappingError(f"trade {ev.trade_id}: second leg is not buyer -> seller", events)
            row[7], row[9] = asset_id, ev.amount
            self.trades.append(tuple(row))
            del trades_open[ev.trade_id]

    def _order(self, order_id: int, seq: int) -> list:
        o = self._orders.get(order_id)
        if o is None:   # accepted in an earlier batch: only what changes is known
            o = self._orders[order_id] = [order_id, None, None, None, None, None, None, None, 0,
                                          None, None, None, seq]
        o[_O_UPDATED_SEQ] = seq
        return o

    # ------------------------------------------------------------------ output
    def balance_rows(self) -> list[tuple]:
        """Rows in ``BALANCE_COLUMNS`` order, one per touched (account, asset)."""
        return [(account, asset_id, r[0], r[1], r[2], r[3], r[4])
                for (account, asset_id), r in self._balances.items()]

    def order_rows(self) -> tuple[list[tuple], list[tuple]]:
        """(new orders in ``ORDER_COLUMNS`` order, updates in ``ORDER_UPDATE_COLUMNS`` order)."""
        new: list[tuple] = []
        updates: list[tuple] = []
        accepted = self._accepted
        for oid, o in self._orders.items():
            if oid in accepted:
                new.append(tuple(o))
            else:
                updates.append((oid, o[_O_PRICE], o[_O_OPEN], o[_O_FILLED], o[_O_STATUS],
                                o[_O_REASON], o[_O_UPDATED_SEQ]))
        return new, updates


def build(commands: Iterable[Sequence], asset_ids: Mapping[str, int]) -> BatchBuilder:
    """A builder holding ``commands`` (each one command's event list)."""
    b = BatchBuilder(asset_ids)
    for events in commands:
        b.add(events)
    return b
