"""Every reason string the engine can put in a ``Rejected`` or ``Cancelled``.

One place, stable strings, grouped by the stage that decides them.  Clients
may match on these values; changing one is a breaking change.
"""
from __future__ import annotations

# ---- validation: the command itself is malformed or names nothing we know
INVALID_COMMAND = "invalid_command"                # not a known command type
INVALID_ACCOUNT = "invalid_account"                # not an int, or a system account (0, 1) placing orders
INVALID_CLIENT_ORDER_ID = "invalid_client_order_id"  # not a str, or longer than 64 characters
UNKNOWN_SYMBOL = "unknown_symbol"
UNKNOWN_ASSET = "unknown_asset"
INVALID_SIDE = "invalid_side"                      # side not in buy/sell
INVALID_TYPE = "invalid_type"                      # type not in limit/market/stop_limit/stop_market
INVALID_TIF = "invalid_tif"                        # tif not in gtc/ioc/fok
INVALID_STP = "invalid_stp"                        # stp not a known self-trade prevention mode
INVALID_COMBINATION = "invalid_combination"        # fields that do not go together (see README)
MARKET_BUY_WITHOUT_LIMIT = "market_buy_without_limit"  # market buy with neither quote_qty nor price
PRICE_OUT_OF_RANGE = "price_out_of_range"          # not an int in 1..max_price
STOP_PRICE_OUT_OF_RANGE = "stop_price_out_of_range"
QTY_OUT_OF_RANGE = "qty_out_of_range"              # not an int in min_qty..max_qty
QUOTE_QTY_OUT_OF_RANGE = "quote_qty_out_of_range"  # not an int in 1..int64 max
BELOW_MIN_NOTIONAL = "below_min_notional"
INVALID_AMOUNT = "invalid_amount"                  # deposit/withdraw not > 0, adjust 0, or not an int
INVALID_REF = "invalid_ref"                        # ref/admin/reason not a str of the allowed length
DUPLICATE_CLIENT_ORDER_ID = "duplicate_client_order_id"  # an open order of the account already has it
TOO_MANY_OPEN_ORDERS = "too_many_open_orders"

# ---- money controls
DUPLICATE_REF = "duplicate_ref"                    # a non-empty ref already used for (kind, account, asset)
ACCOUNT_FROZEN = "account_frozen"                  # a frozen account may not trade, request or be withdrawn from
ALREADY_FROZEN = "already_frozen"
NOT_FROZEN = "not_frozen"
UNKNOWN_TIER = "unknown_tier"
WITHDRAWAL_LIMIT_EXCEEDED = "withdrawal_limit_exceeded"  # over the tier's daily (UTC) limit for the asset
UNKNOWN_WITHDRAWAL = "unknown_withdrawal"          # no pending withdrawal with that id
UNKNOWN_ADJUSTMENT = "unknown_adjustment"          # no pending adjustment with that id
SAME_ADMIN = "same_admin"                          # a large adjustment's approver must be another admin
CLOCK_BACKWARDS = "clock_backwards"                # a Clock earlier than the engine's now
INVALID_TIME = "invalid_time"                      # a Clock's ts_ns not an int in 0..int64 max

# ---- instrument state
HALTED = "halted"
ALREADY_HALTED = "already_halted"
NOT_HALTED = "not_halted"

# ---- risk: balances
INSUFFICIENT_FUNDS = "insufficient_funds"
AMOUNT_OVERFLOW = "amount_overflow"                # an asset's total supply would exceed int64

# ---- matching
UNKNOWN_ORDER = "unknown_order"                    # no open order with that id for this account
ORDER_NOT_REPLACEABLE = "order_not_replaceable"    # pending stop orders cannot be amended
POST_ONLY_WOULD_TRADE = "post_only_would_trade"
FOK_UNFILLABLE = "fok_unfillable"

REJECT_REASONS = frozenset({
    INVALID_COMMAND, INVALID_ACCOUNT, INVALID_CLIENT_ORDER_ID, UNKNOWN_SYMBOL, UNKNOWN_ASSET,
    INVALID_SIDE, INVALID_TYPE, INVALID_TIF, INVALID_STP, INVALID_COMBINATION,
    MARKET_BUY_WITHOUT_LIMIT, PRICE_OUT_OF_RANGE, STOP_PRICE_OUT_OF_RANGE, QTY_OUT_OF_RANGE,
    QUOTE_QTY_OUT_OF_RANGE, BELOW_MIN_NOTIONAL, INVALID_AMOUNT, INVALID_REF,
    DUPLICATE_CLIENT_ORDER_ID, TOO_MANY_OPEN_ORDERS, HALTED, ALREADY_HALTED, NOT_HALTED,
    INSUFFICIENT_FUNDS, AMOUNT_OVERFLOW, UNKNOWN_ORDER, ORDER_NOT_REPLACEABLE,
    POST_ONLY_WOULD_TRADE, FOK_UNFILLABLE,
    DUPLICATE_REF, ACCOUNT_FROZEN, ALREADY_FROZEN, NOT_FROZEN, UNKNOWN_TIER,
    WITHDRAWAL_LIMIT_EXCEEDED, UNKNOWN_WITHDRAWAL, UNKNOWN_ADJUSTMENT, SAME_ADMIN,
    CLOCK_BACKWARDS, INVALID_TIME,
})

# ---- why an accepted order stopped being open without trading all of it
CANCEL_USER = "user"            # CancelOrder
CANCEL_IOC = "ioc"              # IOC or market order remainder (no more liquidity, cap or budget reached)
CANCEL_FOK = "fok_unfillable"   # a triggered FOK stop that could not fill entirely
CANCEL_STP = "stp"              # self-trade prevention
CANCEL_ADMIN = "admin"          # an operator's CancelOrder/CancelAll, or FreezeAccount with cancel_orders

CANCEL_REASONS = frozenset({CANCEL_USER, CANCEL_IOC, CANCEL_FOK, CANCEL_STP, CANCEL_ADMIN})

# ---- what an AdminAction records (the audit_log's action column)
ACTION_ADJUST = "adjust"                        # an Adjust that moved money
ACTION_ADJUST_REQUEST = "adjust_request"        # an Adjust over the threshold, now pending
ACTION_ADJUST_APPROVE = "adjust_approve"        # ApproveAdjustment (the money moves with it)
ACTION_HALT = "halt"
ACTION_RESUME = "resume"
ACTION_FREEZE = "freeze"
ACTION_UNFREEZE = "unfreeze"
ACTION_SET_TIER = "set_tier"
ACTION_WITHDRAWAL_APPROVE = "withdrawal_approve"
ACTION_WITHDRAWAL_REJECT = "withdrawal_reject"
ACTION_CANCEL_ORDER = "cancel_order"
ACTION_CANCEL_ALL = "cancel_all"

ADMIN_ACTIONS = (ACTION_ADJUST, ACTION_ADJUST_REQUEST, ACTION_ADJUST_APPROVE, ACTION_HALT,
                 ACTION_RESUME, ACTION_FREEZE, ACTION_UNFREEZE, ACTION_SET_TIER,
                 ACTION_WITHDRAWAL_APPROVE, ACTION_WITHDRAWAL_REJECT, ACTION_CANCEL_ORDER,
                 ACTION_CANCEL_ALL)
