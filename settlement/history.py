"""The ledger read back for operators: an account's balances at a seq or a
time, its movements (the transaction log), the daily balance snapshots, and
the per-asset overview (does the money add up?).

Every balance here comes from the post-transfer balances the ledger stores
(``transfers.source_balance`` / ``target_balance``): an account's bucket at
seq S is the balance after the last transfer touching it at or before S.
Time is the ledger's own clock, ``transfers.created_at``: when settlement
booked the transfer (the batch's transaction time, a flush interval or so
after the server received the command; the journal's received time is not in
the database).  A day is a UTC calendar day of that clock.

Amounts are ``int`` minor units; ``to_decimal`` makes the exact decimal of an
asset's scale.  This module only reads the ledger; ``snapshot_balances`` is
its one write, to ``daily_balances`` (0002).  It never imports the service
layer.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import NamedTuple

import asyncpg

from engine.domain import INT64_MAX
from engine.ledger import FIRST_USER_ACCOUNT, SYSTEM_FEES, SYSTEM_OUTSIDE, TRANSFER_KINDS

from .errors import SettlementError

__all__ = ["LedgerQueryError", "Point", "parse_point", "to_decimal", "format_minor", "connect", "AssetInfo",
           "Balance", "Movement", "Snapshot", "AssetOverview", "assets", "last_seq",
           "check_account", "balances_now", "balances_at", "history", "snapshot_balances",
           "overview", "CONNECT_TIMEOUT_S"]

CONNECT_TIMEOUT_S = 10
Point = int | dt.datetime          # a seq, or a time (aware, UTC)


class LedgerQueryError(SettlementError):
    """An operator's query cannot be answered: an unreachable or unmigrated
    database, an unknown account or asset, a bad seq or time.  One line."""


# ================================================================ pure helpers
def to_decimal(amount_minor: int, scale: int) -> Decimal:
    """``amount_minor`` minor units as an exact Decimal with ``scale`` places."""
    return Decimal(int(amount_minor)).scaleb(-scale)


def format_minor(amount_minor: int, scale: int) -> str:
    """``amount_minor`` as exact decimal text with ``scale`` places (``0.00000000``, never ``0E-8``)."""
    return f"{to_decimal(amount_minor, scale):f}"


def whole_number(text: str, *, what: str) -> int:
    """``text`` as an id or a seq: ASCII digits, at most int64 (what the ledger
    stores); anything else is one LedgerQueryError line."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > INT64_MAX:
        raise LedgerQueryError(f"{what} must be a whole number 0..{INT64_MAX}, not {text!r}")
    return int(text)


def parse_point(text: str, *, what: str = "value") -> Point:
    """A seq (digits) or a time: ISO 8601 (``2026-12-03``, ``2026-12-03T17:00``,
    ``...+02:00``); a time without a zone is UTC."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return whole_number(text, what=what)
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise LedgerQueryError(f"{what} {text!r} is neither a seq (a whole number) nor an "
                               "ISO time (2026-12-03 or 2026-12-03T17:00:00+00:00)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)


# ================================================================ connection
async def connect(url: str) -> asyncpg.Connection:
    """A connection to the ledger; any failure is one LedgerQueryError line."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as e:
        raise LedgerQueryError(f"cannot reach the settlement database ({_host(url)}): "
                               f"{type(e).__name__}: {e}") from None


def _host(url: str) -> str:
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:              # a port out of range: the URL as given
        return url
    return f"{parts.hostname or 'local socket '}{':%d' % port if port else ''}{parts.path}"


async def _require_schema(conn: asyncpg.Connection) -> None:
    if not await conn.fetchval("SELECT to_regclass('transfers') IS NOT NULL"):
        raise LedgerQueryError("the settlement database has no ledger (not migrated: "
                               "run `exchange db migrate` or `python -m settlement migrate`)")


async def _has_snapshots(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT to_regclass('daily_balances') IS NOT NULL")


# ================================================================ reference data
class AssetInfo(NamedTuple):
    asset_id: int
    name: str
    scale: int


async def assets(conn: asyncpg.Connection) -> dict[int, AssetInfo]:
    await _require_schema(conn)
    rows = await conn.fetch("SELECT asset_id, name, scale FROM assets ORDER BY name")
    return {r["asset_id"]: AssetInfo(r["asset_id"], r["name"], r["scale"]) for r in rows}


async def last_seq(conn: asyncpg.Connection) -> int:
    """The seq everything is settled through (0 for an empty ledger)."""
    return await conn.fetchval("SELECT coalesce(max(last_seq), 0) FROM settlement_state")


async def check_account(conn: asyncpg.Connection, account: int) -> None:
    await _require_schema(conn)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE id = $1)", account):
        raise LedgerQueryError(f"account {account} is not in the ledger")


# ================================================================ balances
class Balance(NamedTuple):
    asset: AssetInfo
    available: int
    locked: int


async def balances_now(conn: asyncpg.Connection, account: int) -> list[Balance]:
    """The account's current balances (the ``balances`` table), by asset name."""
    await check_account(conn, account)
    info = await assets(conn)
    rows = await conn.fetch("SELECT asset_id, available, locked FROM balances WHERE account_id = $1",
                            account)
    return sorted((Balance(info[r["asset_id"]], r["available"], r["locked"]) for r in rows),
                  key=lambda b: b.asset.name)


# An account's legs: one row per bucket a transfer touched in it.  The target
# arm leaves out transfers within the account, which the source arm has (the
# partial index transfers_target_account_time is built that way).
_LEGS = """
    WITH mine AS (
        SELECT * FROM transfers WHERE source_account = $1 AND {where}
        UNION ALL
        SELECT * FROM transfers WHERE target_account = $1 AND target_account <> source_account
                                  AND {where}
    )
    SELECT seq, event_index, 0 AS leg, asset_id, source_bucket AS bucket,
           -amount AS change, source_balance AS balance, kind,
           target_account AS other_account, target_bucket AS other_bucket,
           order_id, trade_id, ref, created_at
    FROM mine WHERE source_account = $1
    UNION ALL
    SELECT seq, event_index, 1 AS leg, asset_id, target_bucket AS bucket,
           amount AS change, target_balance AS balance, kind,
           source_account AS other_account, source_bucket AS other_bucket,
           order_id, trade_id, ref, created_at
    FROM mine WHERE target_account = $1
"""


async def _snapshot_before(conn, *, seq: int | None = None, time: dt.datetime | None = None):
    """(day, through_seq) of the latest snapshot at or before seq / wholly before time."""
    if not await _has_snapshots(conn):
        return None
    if seq is not None:
        return await conn.fetchrow("SELECT day, through_seq FROM daily_balance_snapshots "
                                   "WHERE through_seq <= $1 ORDER BY through_seq DESC, day DESC "
                                   "LIMIT 1", seq)
    return await conn.fetchrow("SELECT day, through_seq FROM daily_balance_snapshots "
                               "WHERE day + 1 <= ($1::timestamptz AT TIME ZONE 'UTC')::date "
                               "ORDER BY day DESC LIMIT 1", time)


async def balances_at(conn: asyncpg.Connection, account: int, at: Point) -> tuple[list[Balance], dict]:
    """The account's balances right after seq ``at`` (an int), or after every
    transfer booked at or before time ``at``: the latest daily snapshot at or
    before that point, then the account's transfers after it.  Returns the
    balances (assets the account ever touched by then) and how they were found
    (``snapshot_day``, ``snapshot_seq``, ``through_seq``: the last seq seen)."""
    await check_account(conn, account)
    info = await assets(conn)
    if isinstance(at, int):
        snap = await _snapshot_before(conn, seq=at)
        where, params = "seq > $2 AND seq <= $3", [at]
    else:
        snap = await _snapshot_before(conn, time=at)
        where, params = "seq > $2 AND created_at <= $3", [at]
    base_seq = snap["through_seq"] if snap else 0
    state: dict[int, list[int]] = {}
    if snap:
        for r in await conn.fetch("SELECT asset_id, available, locked FROM daily_balances "
                                  "WHERE day = $1 AND account_id = $2", snap["day"], account):
            state[r["asset_id"]] = [r["available"], r["locked"]]
    rows = await conn.fetch(
        f"SELECT DISTINCT ON (asset_id, bucket) asset_id, bucket, balance, seq "
        f"FROM ({_LEGS.format(where=where)}) legs "
        f"ORDER BY asset_id, bucket, seq DESC, event_index DESC, leg DESC",
        account, base_seq, *params)
    through = base_seq
    for r in rows:
        pair = state.setdefault(r["asset_id"], [0, 0])
        pair[0 if r["bucket"] == "available" else 1] = r["balance"]
        through = max(through, r["seq"])
    found = {"snapshot_day": snap["day"] if snap else None, "snapshot_seq": base_seq if snap else None,
             "through_seq": through}
    result = [Balance(info[a], av, lk) for a, (av, lk) in state.items()]
    return sorted(result, key=lambda b: b.asset.name), found


# ================================================================ history
class Movement(NamedTuple):
    """One bucket of the account changed by one transfer."""
    seq: int
    event_index: int
    time: dt.datetime
    kind: str
    asset: AssetInfo
    bucket: str
    change: int             # signed minor units: + into this bucket, - out of it
    before: int
    after: int
    other_account: int      # where it came from / went to
    other_bucket: str
    order_id: int | None
    trade_id: int | None
    ref: str


async def history(conn: asyncpg.Connection, account: int, *, since: Point | None = None,
                  until: Point | None = None, kind: str | None = None) -> list[Movement]:
    """The account's movements in seq order (a transfer within the account,
    a lock or unlock, is two: the bucket it leaves first).  ``since``/``until``:
    seqs (both inclusive) or times (``since`` inclusive, ``until`` exclusive)."""
    if kind is not None and kind not in TRANSFER_KINDS:
        raise LedgerQueryError(f"unknown transfer kind {kind!r} (one of {', '.join(TRANSFER_KINDS)})")
    await check_account(conn, account)
    info = await assets(conn)
    clauses, params = ["TRUE"], []
    for point, op_seq, op_time in ((since, ">=", ">="), (until, "<=", "<")):
        if point is None:
            continue
        params.append(point)
        n = len(params) + 1
        clauses.append(f"seq {op_seq} ${n}" if isinstance(point, int)
                       else f"created_at {op_time} ${n}")
    if kind is not None:
        params.append(kind)
        clauses.append(f"kind = ${len(params) + 1}")
    rows = await conn.fetch(f"SELECT * FROM ({_LEGS.format(where=' AND '.join(clauses))}) legs "
                            "ORDER BY seq, event_index, leg", account, *params)
    return [Movement(r["seq"], r["event_index"], r["created_at"], r["kind"], info[r["asset_id"]],
                     r["bucket"], r["change"], r["balance"] - r["change"], r["balance"],
                     r["other_account"], r["other_bucket"], r["order_id"], r["trade_id"], r["ref"])
            for r in rows]


# ================================================================ daily snapshots
class Snapshot(NamedTuple):
    day: dt.date
    through_seq: int
    rows: int
    written: bool           # False: the day had been snapshotted before, nothing changed


async def today_utc(conn: asyncpg.Connection) -> dt.date:
    """Today's date in UTC by the database's clock (the ledger's clock)."""
    return await conn.fetchval("SELECT (now() AT TIME ZONE 'UTC')::date")


async def _snapshot_row(conn: asyncpg.Connection, day: dt.date) -> Snapshot | None:
    r = await conn.fetchrow("SELECT s.through_seq, (SELECT count(*) FROM daily_balances b "
                            "WHERE b.day = s.day) AS n FROM daily_balance_snapshots s "
                            "WHERE s.day = $1", day)
    return None if r is None else Snapshot(day, r["through_seq"], r["n"], False)


async def snapshot_balances(conn: asyncpg.Connection, day: dt.date) -> Snapshot:
    """Write day ``day``'s end-of-day balances, once: every (account, asset)
    after the last transfer booked before ``day``+1 00:00 UTC.  Built from
    the latest earlier snapshot plus the transfers after it.  A day already
    snapshotted is left as it is; a day not yet over (UTC, database clock) is
    refused, since its end-of-day balances are not known yet."""
    await _require_schema(conn)
    if not await _has_snapshots(conn):
        raise LedgerQueryError("the database has no daily_balances table (migration 0002): "
                               "run `exchange db migrate` or `python -m settlement migrate`")
    today = await today_utc(conn)
    if day >= today:
        raise LedgerQueryError(f"{day.isoformat()} has not ended yet (UTC, by the database's clock: "
                               f"today is {today.isoformat()}); snapshot a past day")
    async with conn.transaction():
        existing = await _snapshot_row(conn, day)
        if existing is not None:
            return existing
        through = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM transfers "
                                      "WHERE created_at < $1", _day_end(day))
        prev = await conn.fetchrow("SELECT day, through_seq FROM daily_balance_snapshots "
                                   "WHERE through_seq <= $1 ORDER BY through_seq DESC, day DESC "
                                   "LIMIT 1", through)
        inserted = await conn.fetchval(
            "INSERT INTO daily_balance_snapshots (day, through_seq) VALUES ($1, $2) "
            "ON CONFLICT (day) DO NOTHING RETURNING day", day, through)
        if inserted is None:                # another run took it meanwhile
            return await _snapshot_row(conn, day)
        # the transfers after the previous snapshot, last balance per bucket
        rows = await conn.execute("""
            WITH legs AS (
                SELECT seq, event_index, 0 AS leg, asset_id, source_account AS account_id,
                       source_bucket AS bucket, source_balance AS balance
                FROM transfers WHERE seq > $2 AND seq <= $3
                UNION ALL
                SELECT seq, event_index, 1, asset_id, target_account, target_bucket, target_balance
                FROM transfers WHERE seq > $2 AND seq <= $3
            ), latest AS (
                SELECT DISTINCT ON (account_id, asset_id, bucket) account_id, asset_id, bucket, balance
                FROM legs ORDER BY account_id, asset_id, bucket, seq DESC, event_index DESC, leg DESC
            ), changed AS (
                SELECT account_id, asset_id,
                       max(balance) FILTER (WHERE bucket = 'available') AS available,
                       max(balance) FILTER (WHERE bucket = 'locked') AS locked
                FROM latest GROUP BY account_id, asset_id
            ), previous AS (
                SELECT account_id, asset_id, available, locked FROM daily_balances WHERE day = $4
            )
            INSERT INTO daily_balances (day, account_id, asset_id, available, locked)
            SELECT $1, account_id, asset_id,
                   coalesce(c.available, p.available, 0), coalesce(c.locked, p.locked, 0)
            FROM previous p FULL JOIN changed c USING (account_id, asset_id)
            """, day, prev["through_seq"] if prev else 0, through, prev["day"] if prev else None)
        count = int(rows.split()[-1])
        return Snapshot(day, through, count, True)


# ================================================================ overview
class AssetOverview(NamedTuple):
    """Per asset, minor units.  Flows are between the outside world (account
    0) and users (accounts >= 2), netted per kind: ``deposits`` (kind deposit),
    ``withdrawals`` (kind withdraw), ``adjustments`` (every other kind, in
    practice adjust).  ``fees`` is the net moved from users to the fee
    account (1).  ``user_available``/``user_locked`` come from the balances
    table: what users are told they hold."""
    asset: AssetInfo
    deposits: int
    withdrawals: int
    adjustments: int
    fees: int
    user_available: int
    user_locked: int

    @property
    def user_total(self) -> int:
        return self.user_available + self.user_locked

    @property
    def difference(self) -> int:
        """(deposits - withdrawals + adjustments) - (user balances + fees): 0 adds up."""
        return (self.deposits - self.withdrawals + self.adjustments) - (self.user_total + self.fees)


async def overview(conn: asyncpg.Connection, asset: str | None = None) -> list[AssetOverview]:
    info = await assets(conn)
    if asset is not None and asset not in {a.name for a in info.values()}:
        raise LedgerQueryError(f"asset {asset!r} is not in the ledger "
                               f"(known: {', '.join(sorted(a.name for a in info.values())) or 'none'})")
    # the flows and the balances from one snapshot of the database: a batch
    # settled between two reads would otherwise look like a difference
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        flows, users = await _flows_and_users(conn)
    return _overview_rows(info, flows, users, asset)


async def _flows_and_users(conn: asyncpg.Connection):
    flows = {r["asset_id"]: r for r in await conn.fetch("""
        SELECT asset_id,
          coalesce(sum(amount) FILTER (WHERE kind = 'deposit'  AND source_account = $1 AND target_account >= $3), 0)
        - coalesce(sum(amount) FILTER (WHERE kind = 'deposit'  AND target_account = $1 AND source_account >= $3), 0)
            AS deposits,
          coalesce(sum(amount) FILTER (WHERE kind = 'withdraw' AND target_account = $1 AND source_account >= $3), 0)
        - coalesce(sum(amount) FILTER (WHERE kind = 'withdraw' AND source_account = $1 AND target_account >= $3), 0)
            AS withdrawals,
          coalesce(sum(amount) FILTER (WHERE kind NOT IN ('deposit', 'withdraw')
                                          AND source_account = $1 AND target_account >= $3), 0)
        - coalesce(sum(amount) FILTER (WHERE kind NOT IN ('deposit', 'withdraw')
                                          AND target_account = $1 AND source_account >= $3), 0)
            AS adjustments,
          coalesce(sum(amount) FILTER (WHERE target_account = $2 AND source_account >= $3), 0)
        - coalesce(sum(amount) FILTER (WHERE source_account = $2 AND target_account >= $3), 0)
            AS fees
        FROM transfers
        WHERE source_account IN ($1, $2) OR target_account IN ($1, $2)
        GROUP BY asset_id
        """, SYSTEM_OUTSIDE, SYSTEM_FEES, FIRST_USER_ACCOUNT)}
    users = {r["asset_id"]: r for r in await conn.fetch(
        "SELECT asset_id, coalesce(sum(available), 0) AS available, coalesce(sum(locked), 0) AS locked "
        "FROM balances WHERE account_id >= $1 GROUP BY asset_id", FIRST_USER_ACCOUNT)}
    return flows, users


def _overview_rows(info, flows, users, asset) -> list[AssetOverview]:
    result = []
    for a in sorted(info.values(), key=lambda a: a.name):
        if asset is not None and a.name != asset:
            continue
        f, u = flows.get(a.asset_id), users.get(a.asset_id)
        result.append(AssetOverview(
            a, int(f["deposits"]) if f else 0, int(f["withdrawals"]) if f else 0,
            int(f["adjustments"]) if f else 0, int(f["fees"]) if f else 0,
            int(u["available"]) if u else 0, int(u["locked"]) if u else 0))
    return result
