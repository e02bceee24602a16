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
trades, ``Adjusted`` (an adjustment's money) and ``AdminAction`` (an admin
act) -> audit_log, in the transaction of the command's transfers;
``Accepted``, ``Trade``, ``Cancelled``, ``Replaced`` and ``Triggered`` ->
orders.  ``Rejected``, ``Halted``, ``Resumed``, ``Clocked``,
``AdjustmentPending`` and the ``Withdrawal*`` events write no row (the money a
withdrawal moves is in its transfers; the admin acts are in their
``AdminAction``); their seq still counts.  ``has_ref_keys`` says whether a
transfer of the batch carries an idempotency key (``settlement.refs``).

Numbers stay Python ints; ids of value 0 ("none" in the engine) become NULL.
Anything the mapping cannot express (an unknown asset, a bucket that is not
available/locked, events of two commands in one list, a gap in seq) raises
``MappingError``; after that the builder must be discarded.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

from engine.ledger import AVAILABLE, KIND_TRADE, LOCKED
from engine.messages import (Accepted, AdjustmentPending, Adjusted, AdminAction, Cancelled,
                             Clocked, Halted, Rejected, Replaced, Resumed, Trade, Transfer,
                             Triggered, WithdrawalCompleted, WithdrawalRejected,
                             WithdrawalRequested)
from engine.reasons import ACTION_ADJUST, ACTION_ADJUST_APPROVE, ADMIN_ACTIONS

AUDITED_BY_ADJUSTED = (ACTION_ADJUST, ACTION_ADJUST_APPROVE)   # AdminActions whose Adjusted row audits them

from .refs import REF_KINDS

__all__ = ["BatchBuilder", "MappingError", "TRANSFER_COLUMNS", "TRADE_COLUMNS", "AUDIT_COLUMNS",
           "ORDER_COLUMNS", "ORDER_UPDATE_COLUMNS", "BALANCE_COLUMNS", "STATUS_OPEN",
           "STATUS_FILLED", "STATUS_CANCELLED"]

STATUS_OPEN, STATUS_FILLED, STATUS_CANCELLED = "open", "filled", "cancelled"

TRANSFER_COLUMNS = ("seq", "event_index", "asset_id", "amount", "source_account",
                    "source_bucket", "target_account", "target_bucket", "kind", "ref",
                    "order_id", "trade_id", "source_balance", "target_balance")
TRADE_COLUMNS = ("trade_id", "seq", "event_index", "symbol", "price_ticks", "qty_lots",
                 "base_asset_id", "quote_asset_id", "base_amount", "quote_amount",
                 "maker_order_id", "taker_order_id", "maker_account", "taker_account",
                 "taker_side", "maker_fee", "taker_fee", "maker_remaining_lots",
                 "taker_remaining_lots")
# a money row (Adjusted) fills asset_id..available_after; an action row
# (AdminAction) leaves them NULL and fills target, before, after
AUDIT_COLUMNS = ("seq", "event_index", "account_id", "asset_id", "amount", "admin", "reason",
                 "available_before", "available_after", "action", "target", "before", "after",
                 "adjustment_id", "approved_by")
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

# Rows stay plain tuples (what COPY takes fastest); code that reads a field
# names its position with one of these.
T_SEQ = TRANSFER_COLUMNS.index("seq")
T_EVENT_INDEX = TRANSFER_COLUMNS.index("event_index")
T_ASSET_ID = TRANSFER_COLUMNS.index("asset_id")
T_AMOUNT = TRANSFER_COLUMNS.index("amount")
T_SOURCE_ACCOUNT = TRANSFER_COLUMNS.index("source_account")
T_SOURCE_BUCKET = TRANSFER_COLUMNS.index("source_bucket")
T_TARGET_ACCOUNT = TRANSFER_COLUMNS.index("target_account")
T_TARGET_BUCKET = TRANSFER_COLUMNS.index("target_bucket")
T_KIND = TRANSFER_COLUMNS.index("kind")
T_REF = TRANSFER_COLUMNS.index("ref")
B_ACCOUNT_ID = BALANCE_COLUMNS.index("account_id")
B_ASSET_ID = BALANCE_COLUMNS.index("asset_id")
B_UPDATED_SEQ = BALANCE_COLUMNS.index("updated_seq")

_NO_ROW = (Rejected, Halted, Resumed, Clocked, AdjustmentPending, WithdrawalRequested,
           WithdrawalCompleted, WithdrawalRejected)

# the slots of the lists the builder keeps while a batch is built: an order's
# state (ORDER_COLUMNS), a trade waiting for its two transfers (TRADE_COLUMNS),
# and the per-(account, asset) balance change (BALANCE_COLUMNS after the key)
_O_PRICE = ORDER_COLUMNS.index("price_ticks")
_O_OPEN = ORDER_COLUMNS.index("open_qty_lots")
_O_FILLED = ORDER_COLUMNS.index("filled_qty_lots")
_O_STATUS = ORDER_COLUMNS.index("status")
_O_REASON = ORDER_COLUMNS.index("cancel_reason")
_O_UPDATED_SEQ = ORDER_COLUMNS.index("updated_seq")
_TR_BASE_ASSET = TRADE_COLUMNS.index("base_asset_id")
_TR_QUOTE_ASSET = TRADE_COLUMNS.index("quote_asset_id")
_TR_BASE_AMOUNT = TRADE_COLUMNS.index("base_amount")
_TR_QUOTE_AMOUNT = TRADE_COLUMNS.index("quote_amount")
_TR_MAKER_ACCOUNT = TRADE_COLUMNS.index("maker_account")
_TR_TAKER_ACCOUNT = TRADE_COLUMNS.index("taker_account")
_TR_TAKER_SIDE = TRADE_COLUMNS.index("taker_side")
_B_AVAILABLE_DELTA, _B_LOCKED_DELTA, _B_AVAILABLE_AFTER, _B_LOCKED_AFTER, _B_UPDATED_SEQ = range(5)
assert BALANCE_COLUMNS[2:] == ("available_delta", "locked_delta", "available_after",
                               "locked_after", "updated_seq")


class MappingError(ValueError):
    """Events the settlement mapping cannot express; an engine or configuration bug."""

    def __init__(self, message: str, events: Sequence = ()):
        super().__init__(message)
        self.events = list(events)


class BatchBuilder:
    """Accumulates the rows of one settlement batch; see the module docstring."""

    __slots__ = ("asset_ids", "first_seq", "last_seq", "n_commands", "n_events", "transfers",
                 "trades", "audit", "has_ref_keys", "_balances", "_orders", "_accepted")

    def __init__(self, asset_ids: Mapping[str, int]):
        self.asset_ids = asset_ids
        self.first_seq = 0          # 0: empty
        self.last_seq = 0
        self.n_commands = 0
        self.n_events = 0
        self.transfers: list[tuple] = []
        self.trades: list[tuple] = []
        self.audit: list[tuple] = []
        self.has_ref_keys = False   # a transfer with a non-empty ref of a REF_KINDS kind
        # (account, asset_id) -> [available_delta, locked_delta, available_after,
        #                         locked_after, updated_seq] (the _B_* slots)
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
                    row[_B_AVAILABLE_DELTA] -= amount
                    row[_B_AVAILABLE_AFTER] = ev.source_balance
                elif ev.source_bucket == LOCKED:
                    row[_B_LOCKED_DELTA] -= amount
                    row[_B_LOCKED_AFTER] = ev.source_balance
                else:
                    raise MappingError(f"bad source_bucket {ev.source_bucket!r}", events)
                row[_B_UPDATED_SEQ] = seq
                row = balances.get((target, asset_id))
                if row is None:
                    row = balances[(target, asset_id)] = [0, 0, None, None, seq]
                if ev.target_bucket == AVAILABLE:
                    row[_B_AVAILABLE_DELTA] += amount
                    row[_B_AVAILABLE_AFTER] = ev.target_balance
                elif ev.target_bucket == LOCKED:
                    row[_B_LOCKED_DELTA] += amount
                    row[_B_LOCKED_AFTER] = ev.target_balance
                else:
                    raise MappingError(f"bad target_bucket {ev.target_bucket!r}", events)
                row[_B_UPDATED_SEQ] = seq
                if ev.ref and ev.kind in REF_KINDS:
                    self.has_ref_keys = True
                if ev.kind == KIND_TRADE:
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
                action = ACTION_ADJUST_APPROVE if ev.adjustment_id else ACTION_ADJUST
                self.audit.append((seq, index, ev.account, asset_id, ev.amount, ev.admin, ev.reason,
                                   ev.available_before, ev.available_after, action, "", "", "",
                                   ev.adjustment_id or None, ev.approved_by))
            elif t is AdminAction:
                if ev.action not in ADMIN_ACTIONS:
                    raise MappingError(f"unknown admin action {ev.action!r}", events)
                if ev.action in AUDITED_BY_ADJUSTED:
                    continue        # its Adjusted event's row says it all, with the money columns
                # account 0: the act names no account
                self.audit.append((seq, index, ev.account or None, None, None, ev.admin, ev.reason,
                                   None, None, ev.action, ev.target, ev.before, ev.after, None,
                                   ""))
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
        maker, taker = row[_TR_MAKER_ACCOUNT], row[_TR_TAKER_ACCOUNT]
        buyer, seller = (taker, maker) if row[_TR_TAKER_SIDE] == "buy" else (maker, taker)
        if row[_TR_BASE_ASSET] is None:
            if ev.source_account != seller or ev.target_account != buyer:
                raise MappingError(f"trade {ev.trade_id}: first leg is not seller -> buyer", events)
            row[_TR_BASE_ASSET], row[_TR_BASE_AMOUNT] = asset_id, ev.amount
        else:
            if ev.source_account != buyer or ev.target_account != seller:
                raise MappingError(f"trade {ev.trade_id}: second leg is not buyer -> seller", events)
            row[_TR_QUOTE_ASSET], row[_TR_QUOTE_AMOUNT] = asset_id, ev.amount
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
        return [(account, asset_id, *r) for (account, asset_id), r in self._balances.items()]

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
