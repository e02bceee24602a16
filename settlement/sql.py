"""The SQL text the settlement writer sends about the ledger.

Owns the statements of a batch transaction, of the diagnostics after a
refusal and of the writer's start-up claim on ``settlement_state``, and the
planner settings they are written for.  It is text only: it never executes
anything, and it never restates a ledger rule that ``engine.ledger`` or
``settlement.rows`` defines (values are built from their constants).
"""
from __future__ import annotations

from engine.ledger import FIRST_USER_ACCOUNT

from .rows import BALANCE_COLUMNS, ORDER_UPDATE_COLUMNS, STATUS_OPEN

# Per-batch inputs that are not ledger rows (order updates, balance deltas)
# travel as arrays through unnest(): one round trip, no temp table, and a plan
# that looks each row up by primary key (unnest is estimated small), so a batch
# costs the same however large orders and balances grow.
_ORDER_UPDATES = """
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],
                         $6::text[], $7::bigint[])
        AS s(order_id, price_ticks, open_qty_lots, filled_qty_lots, status, cancel_reason,
             updated_seq)"""
_BALANCE_DELTAS = """
    SELECT * FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[])
        AS s(account_id, asset_id, available_delta, locked_delta, available_after,
             locked_after, updated_seq)"""

# the unnest() column lists above follow settlement.rows
assert ORDER_UPDATE_COLUMNS == ("order_id", "price_ticks", "open_qty_lots", "filled_qty_lots",
                                "status", "cancel_reason", "updated_seq")
assert BALANCE_COLUMNS == ("account_id", "asset_id", "available_delta", "locked_delta",
                           "available_after", "locked_after", "updated_seq")

# Every statement of the writer looks rows up by key.  Without these settings
# the planner may hash-join a batch's order updates against a full scan of
# `orders` (few open orders look cheap to filter), so a batch would cost more
# the longer the exchange runs.
KEYED_PLANS = {"enable_seqscan": "off", "enable_hashjoin": "off", "enable_mergejoin": "off"}

# ---------------------------------------------------------------- start-up
# check-then-insert under a table lock that conflicts with itself: two writers
# of different engines starting at once cannot both pass
SQL_LOCK_STATE_TABLE = "LOCK TABLE settlement_state IN EXCLUSIVE MODE"
SQL_OTHER_ENGINES = "SELECT engine_id, last_seq FROM settlement_state WHERE engine_id <> $1"
SQL_CLAIM_ENGINE = ("INSERT INTO settlement_state (engine_id) VALUES ($1) "
                    "ON CONFLICT (engine_id) DO NOTHING")
SQL_LAST_SEQ = "SELECT last_seq FROM settlement_state WHERE engine_id = $1"

# ---------------------------------------------------------------- one batch
SQL_LOCK_STATE = SQL_LAST_SEQ + " FOR UPDATE"
SQL_ADVANCE = ("UPDATE settlement_state SET last_seq = $2, updated_at = now() "
               "WHERE engine_id = $1")

# Only open orders change: an update to a filled or cancelled order is an engine
# bug (the count check catches it).
SQL_UPDATE_ORDERS = f"""
WITH s AS ({_ORDER_UPDATES}),
updated AS (
    UPDATE orders o SET
        price_ticks     = COALESCE(s.price_ticks, o.price_ticks),
        open_qty_lots   = COALESCE(s.open_qty_lots, o.open_qty_lots),
        filled_qty_lots = o.filled_qty_lots + s.filled_qty_lots,
        status          = COALESCE(s.status, o.status),
        cancel_reason   = COALESCE(s.cancel_reason, o.cancel_reason),
        updated_seq     = s.updated_seq,
        updated_at      = now()
    FROM s
    WHERE o.order_id = s.order_id AND o.status = '{STATUS_OPEN}'
    RETURNING o.order_id)
SELECT count(*) FROM updated
"""
SQL_ORDERS_NOT_UPDATED = f"""
WITH s AS ({_ORDER_UPDATES})
SELECT s.*, o.status AS current_status
FROM s LEFT JOIN orders o USING (order_id)
WHERE o.order_id IS NULL OR o.updated_seq <> s.updated_seq
"""
# Accounts and zero balance rows for the (account, asset) pairs a batch touches
# first.  (The deltas cannot go in through INSERT ... ON CONFLICT DO UPDATE:
# PostgreSQL checks the proposed row -- a negative delta -- against the CHECKs
# before it finds the conflict.)
SQL_NEW_ACCOUNTS = f"""
INSERT INTO accounts (id, kind)
SELECT DISTINCT a, CASE WHEN a < {FIRST_USER_ACCOUNT} THEN 'system' ELSE 'user' END
FROM unnest($1::bigint[]) AS a
ON CONFLICT (id) DO NOTHING
"""
SQL_NEW_BALANCES = """
INSERT INTO balances (account_id, asset_id, available, locked, updated_seq)
SELECT account_id, asset_id, 0, 0, 0 FROM unnest($1::bigint[], $2::integer[]) AS s(account_id, asset_id)
ON CONFLICT (account_id, asset_id) DO NOTHING
"""
# One aggregated update for every touched (account, asset).  Returns how many
# rows it updated and the buckets whose result differs from the balance the
# engine reported after its last transfer.
SQL_APPLY_BALANCES = f"""
WITH s AS ({_BALANCE_DELTAS}),
applied AS (
    UPDATE balances b
    SET available   = b.available + s.available_delta,
        locked      = b.locked + s.locked_delta,
        updated_seq = s.updated_seq
    FROM s
    WHERE b.account_id = s.account_id AND b.asset_id = s.asset_id
    RETURNING b.account_id, b.asset_id, b.available, b.locked, s.available_delta, s.locked_delta,
              s.available_after, s.locked_after)
SELECT count(*) AS updated,
       coalesce(jsonb_agg(applied) FILTER (
           WHERE available <> coalesce(available_after, available)
              OR locked <> coalesce(locked_after, locked)), '[]')::text AS mismatched
FROM applied
"""

# ---------------------------------------------------------------- diagnostics
# The touched buckets before the batch, beside the batch's deltas (every
# balance column but updated_seq).
SQL_BALANCES_OF = """
SELECT s.account_id, s.asset_id, b.available, b.locked, s.available_delta, s.locked_delta,
       s.available_after, s.locked_after
FROM unnest($1::bigint[], $2::integer[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
     AS s(account_id, asset_id, available_delta, locked_delta, available_after, locked_after)
LEFT JOIN balances b USING (account_id, asset_id)
"""
# The ledger's transfers of some accounts that carry one of some refs, by
# the account index of the side the ref belongs to (settlement.refs): who
# used a ref first.  The target arm leaves out transfers within one account,
# as the partial index transfers_target_account_time does.
_REF_HOLDERS = """
SELECT seq, event_index, kind, source_account, source_bucket, target_account, asset_id, ref
FROM transfers WHERE {where} AND ref = ANY($2::text[])
"""
SQL_REF_HOLDERS = {
    "source": _REF_HOLDERS.format(where="source_account = ANY($1::bigint[])"),
    "target": _REF_HOLDERS.format(where="target_account = ANY($1::bigint[]) "
                                        "AND target_account <> source_account"),
}
