"""Commands the engine accepts and events it emits.

Every message is a tagged ``msgspec.Struct`` (the tag is the class name), so one
encoder/decoder serves the wire, the journal and the tests.  All numbers are
exact integers: prices in ticks, quantities in lots, amounts in minor units of
the asset.  ``None`` means "not given".

This module owns the shapes only; it never validates.  A command built in
Python with a wrong type (a float price, an unknown side) is answered by the
engine with a ``Rejected`` event, never an exception.
"""
from __future__ import annotations

import msgspec

__all__ = [
    # commands
    "Command", "PlaceOrder", "CancelOrder", "ReplaceOrder", "Deposit", "Withdraw",
    "Adjust", "Halt", "Resume",
    "RequestWithdrawal", "ApproveWithdrawal", "RejectWithdrawal", "SetAccountTier", "Clock",
    "FreezeAccount", "UnfreezeAccount", "CancelAll", "ApproveAdjustment",
    # events
    "Event", "Accepted", "Rejected", "Trade", "Cancelled", "Replaced", "Triggered",
    "Transfer", "Adjusted", "Halted", "Resumed",
    "WithdrawalRequested", "WithdrawalCompleted", "WithdrawalRejected", "AdjustmentPending",
    "AdminAction", "Clocked",
    # query results (Engine.pending_withdrawals / pending_adjustments; not events)
    "PendingWithdrawal", "PendingAdjustment",
    # codecs
    "encode", "decode_command", "decode_event", "decode_events",
]


class _Message(msgspec.Struct, tag=True, tag_field="message", array_like=True, frozen=True,
               gc=False):
    """Base: tagged by class name (the first element of the encoded array;
    ``message`` when a map encoding is used), encoded as a compact array."""


# ---------------------------------------------------------------- commands
class PlaceOrder(_Message):
    account: int
    client_order_id: str
    symbol: str
    side: str                      # "buy" | "sell"
    type: str = "limit"            # "limit" | "market" | "stop_limit" | "stop_market"
    tif: str = "gtc"               # "gtc" | "ioc" | "fok"
    price: int | None = None       # limit price, or a market order's protection cap, in ticks
    qty: int = 0                   # lots
    quote_qty: int | None = None   # a market buy's budget in quote minor units, fees included
    stop_price: int | None = None  # ticks; stop orders only
    post_only: bool = False
    stp: str = "cancel_newest"     # "cancel_newest" | "cancel_oldest" | "cancel_both" | "decrement"


class CancelOrder(_Message):
    """Cancel one open order.  ``admin`` non-empty: an operator's cancel (the
    admin role), reason ``admin``, audited; ``account`` must still own it."""
    account: int
    order_id: int | None = None
    client_order_id: str | None = None
    admin: str = ""


class ReplaceOrder(_Message):
    """Amend a resting order.  ``qty`` is the new *open* quantity in lots."""
    account: int
    order_id: int
    price: int | None = None
    qty: int | None = None


class Deposit(_Message):
    """Credit from the outside world.  A non-empty ``ref`` is idempotent: the
    same (deposit, account, asset, ref) again is rejected ``duplicate_ref``."""
    account: int
    asset: str
    amount: int
    ref: str = ""


class Withdraw(_Message):
    """Immediate withdrawal, for system use (no hold, no approval, no limit).
    ``ref`` shares the withdrawal namespace with RequestWithdrawal."""
    account: int
    asset: str
    amount: int
    ref: str = ""


class Adjust(_Message):
    """Admin correction: ``amount`` is signed (credit > 0, debit < 0)."""
    account: int
    asset: str
    amount: int
    admin: str
    reason: str


class Halt(_Message):
    symbol: str
    admin: str = ""


class Resume(_Message):
    symbol: str
    admin: str = ""


class RequestWithdrawal(_Message):
    """available -> locked (``withdraw_hold``) until approved or rejected; at or
    under the account tier's auto-approval amount it completes at once."""
    account: int
    asset: str
    amount: int
    ref: str = ""


class ApproveWithdrawal(_Message):
    """locked -> account 0 (``withdraw``)."""
    withdrawal_id: int
    admin: str


class RejectWithdrawal(_Message):
    """locked -> available (``withdraw_release``)."""
    withdrawal_id: int
    admin: str
    reason: str


class SetAccountTier(_Message):
    account: int
    tier: str
    admin: str


class Clock(_Message):
    """The engine's "now" in nanoseconds since the Unix epoch (UTC); never
    earlier than the last one.  The only way time enters the engine."""
    ts_ns: int


class FreezeAccount(_Message):
    account: int
    admin: str
    reason: str
    cancel_orders: bool = True


class UnfreezeAccount(_Message):
    account: int
    admin: str
    reason: str


class CancelAll(_Message):
    """Cancel every open order of ``account`` (on ``symbol`` only, when given).
    ``admin`` non-empty: an operator's cancel, reason ``admin``, audited."""
    account: int
    symbol: str | None = None
    admin: str = ""


class ApproveAdjustment(_Message):
    """A second admin (not the one who asked) releases a pending large Adjust."""
    adjustment_id: int
    admin: str


Command = (PlaceOrder | CancelOrder | ReplaceOrder | Deposit | Withdraw | Adjust | Halt | Resume
           | RequestWithdrawal | ApproveWithdrawal | RejectWithdrawal | SetAccountTier | Clock
           | FreezeAccount | UnfreezeAccount | CancelAll | ApproveAdjustment)


# ------------------------------------------------------------------ events
class Accepted(_Message):
    seq: int
    order_id: int
    account: int
    client_order_id: str
    symbol: str
    side: str
    price: int | None      # limit price or market cap (ticks); None for an uncapped market order
    qty: int               # lots; 0 for a market buy sized only by quote_qty


class Rejected(_Message):
    seq: int
    account: int
    client_order_id: str
    reason: str            # one of engine.reasons.REJECT_REASONS
    order_id: int = 0      # the order a cancel/replace named, when it named one


class Trade(_Message):
    seq: int
    trade_id: int
    symbol: str
    price: int             # ticks, always the maker's price
    qty: int               # lots
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int
    taker_side: str
    maker_fee: int         # quote minor units
    taker_fee: int
    maker_remaining: int = 0   # open lots of each order after this fill
    taker_remaining: int = 0   # (0 for a market buy sized only by quote_qty)


class Cancelled(_Message):
    seq: int
    order_id: int
    account: int
    remaining_qty: int     # lots that will never trade
    reason: str            # one of engine.reasons.CANCEL_REASONS


class Replaced(_Message):
    seq: int
    order_id: int
    account: int
    price: int
    qty: int               # new open quantity in lots
    priority_kept: bool


class Triggered(_Message):
    seq: int
    order_id: int
    account: int


class Transfer(_Message):
    """One balance movement.  Double entry by construction: ``amount`` (> 0)
    leaves source_account/source_bucket and arrives at target_account/target_bucket.

    ``source_balance``/``target_balance`` are the two buckets' balances right
    after this transfer (account 0, the outside world, goes negative).
    ``ref`` is the command's external reference (deposits, withdrawals, the
    reason of an adjustment); ``order_id``/``trade_id`` say which order or trade
    a lock, unlock, trade or fee transfer belongs to (0 when none).  A trade's
    base leg names the sell order, its quote leg and the buyer's fee the buy
    order, the seller's fee the sell order: every transfer that touches an
    order's lock or proceeds carries that order's id.
    """
    seq: int
    asset: str
    amount: int
    source_account: int
    source_bucket: str     # "available" | "locked"
    target_account: int
    target_bucket: str
    kind: str              # one of engine.ledger.TRANSFER_KINDS
    ref: str = ""
    order_id: int = 0
    trade_id: int = 0
    source_balance: int = 0
    target_balance: int = 0


class Adjusted(_Message):
    """Audit record of an admin adjustment; its Transfer follows in the same
    command.  A large one comes from ApproveAdjustment: ``adjustment_id`` and
    ``approved_by`` name the pending request and its second admin."""
    seq: int
    account: int
    asset: str
    amount: int            # signed
    admin: str
    reason: str
    available_before: int
    available_after: int
    adjustment_id: int = 0
    approved_by: str = ""


class Halted(_Message):
    seq: int
    symbol: str


class Resumed(_Message):
    seq: int
    symbol: str


class WithdrawalRequested(_Message):
    """A withdrawal is held (its ``withdraw_hold`` Transfer follows)."""
    seq: int
    withdrawal_id: int
    account: int
    asset: str
    amount: int
    ref: str


class WithdrawalCompleted(_Message):
    """A held withdrawal left for the outside world.  ``admin`` "": approved
    automatically (at or under the tier's auto-approval amount)."""
    seq: int
    withdrawal_id: int
    account: int
    asset: str
    amount: int
    ref: str
    admin: str


class WithdrawalRejected(_Message):
    seq: int
    withdrawal_id: int
    account: int
    asset: str
    amount: int
    ref: str
    admin: str
    reason: str


class AdjustmentPending(_Message):
    """An Adjust over the configured threshold waits for ApproveAdjustment."""
    seq: int
    adjustment_id: int
    account: int
    asset: str
    amount: int            # signed
    admin: str
    reason: str


class AdminAction(_Message):
    """The audit record of an operator's act, one per admin command that took
    effect; settlement writes it to ``audit_log``.  ``action`` is one of
    engine.reasons.ADMIN_ACTIONS; ``target`` what it acted on (a symbol, an
    asset, an order or withdrawal id as text); ``before``/``after`` the state
    it changed, as text ("" where none applies)."""
    seq: int
    admin: str
    action: str
    account: int = 0
    target: str = ""
    reason: str = ""
    before: str = ""
    after: str = ""


class Clocked(_Message):
    seq: int
    ts_ns: int


Event = (Accepted | Rejected | Trade | Cancelled | Replaced | Triggered | Transfer
         | Adjusted | Halted | Resumed | WithdrawalRequested | WithdrawalCompleted
         | WithdrawalRejected | AdjustmentPending | AdminAction | Clocked)


# ------------------------------------------------------------------ query results
class PendingWithdrawal(_Message):
    """A requested withdrawal waiting for ApproveWithdrawal/RejectWithdrawal
    (its amount held in the account's locked bucket); ``requested_ts_ns`` is
    the engine's now (the last Clock) when it was requested."""
    withdrawal_id: int
    account: int
    asset: str
    amount: int
    ref: str
    requested_seq: int
    requested_ts_ns: int


class PendingAdjustment(_Message):
    """An Adjust over the approval threshold waiting for ApproveAdjustment by
    an admin other than ``admin``; nothing has moved yet."""
    adjustment_id: int
    account: int
    asset: str
    amount: int            # signed
    admin: str
    reason: str
    requested_seq: int

# ------------------------------------------------------------------ codecs
_encoder = msgspec.msgpack.Encoder()
encode = _encoder.encode
_command_decoder = msgspec.msgpack.Decoder(Command)
_event_decoder = msgspec.msgpack.Decoder(Event)
_events_decoder = msgspec.msgpack.Decoder(list[Event])
decode_command = _command_decoder.decode
decode_event = _event_decoder.decode
decode_events = _events_decoder.decode
