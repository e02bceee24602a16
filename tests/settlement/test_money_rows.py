"""The money-controls events in the ledger, on a real PostgreSQL: withdrawals
held, approved, rejected and completed at once; admin acts in audit_log in
the transaction of their transfers; admin cancels; Clocked; and the audit and
reconciliation tools with money in the locked bucket that no order holds.

The streams are built by hand (tests/settlement/settle_events.py) from the
event definitions in engine.messages, with the balances an engine reports."""
from __future__ import annotations

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from engine.ledger import (AVAILABLE, KIND_ADJUST, KIND_DEPOSIT, KIND_LOCK, KIND_UNLOCK,
                           KIND_WITHDRAW, KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE, LOCKED,
                           SYSTEM_OUTSIDE)
from engine.messages import (Accepted, AdjustmentPending, Adjusted, AdminAction, Cancelled,
                             Clocked, Halted, WithdrawalCompleted, WithdrawalRejected,
                             WithdrawalRequested)
from engine.reasons import CANCEL_ADMIN
from settlement.rows import AUDITED_BY_ADJUSTED
from settle_checks import AUDIT_SELECT, expected_audit_row
from settle_events import ASSETS, Books
from settlement import SettlementWriter
from settlement.audit import audit
from settlement.reconcile import reconcile

CLOCK_NS = 1_764_806_400_000_000_000


def request(books, withdrawal_id, account, asset, amount, ref):
    return books.command(lambda seq: [
        WithdrawalRequested(seq, withdrawal_id, account, asset, amount, ref),
        books.transfer(seq, asset, amount, (account, AVAILABLE), (account, LOCKED),
                       KIND_WITHDRAW_HOLD, ref=ref)])


def approve(books, withdrawal_id, account, asset, amount, ref, admin="ops"):
    return books.command(lambda seq: [
        WithdrawalCompleted(seq, withdrawal_id, account, asset, amount, ref, admin),
        AdminAction(seq, admin, "withdrawal_approve", account, str(withdrawal_id),
                    before="pending", after="completed"),
        books.transfer(seq, asset, amount, (account, LOCKED), (SYSTEM_OUTSIDE, AVAILABLE),
                       KIND_WITHDRAW, ref=ref)])


def reject(books, withdrawal_id, account, asset, amount, ref, reason, admin="ops"):
    return books.command(lambda seq: [
        WithdrawalRejected(seq, withdrawal_id, account, asset, amount, ref, admin, reason),
        AdminAction(seq, admin, "withdrawal_reject", account, str(withdrawal_id), reason,
                    "pending", "rejected"),
        books.transfer(seq, asset, amount, (account, LOCKED), (account, AVAILABLE),
                       KIND_WITHDRAW_RELEASE, ref=ref)])


def opening(books):
    """Deposits, a clock tick, two withdrawals held and an open order: account 2
    has 600,000 USDT locked, 100,000 of it by its order."""
    books.deposit(2, "USDT", 1_000_000, ref="dep-1")
    books.deposit(3, "BTC", 500, ref="dep-1")               # another account and asset
    books.command(lambda seq: [Clocked(seq, CLOCK_NS)])
    request(books, 1, 2, "USDT", 300_000, "w-1")
    request(books, 2, 2, "USDT", 200_000, "w-2")
    books.command(lambda seq: [
        Accepted(seq, 1, 2, "b-1", "BTC-USDT", "buy", 1_000, 100),
        books.transfer(seq, "USDT", 100_000, (2, AVAILABLE), (2, LOCKED), KIND_LOCK,
                       order_id=1)])


def money_controls(books):
    """The opening, then every admin act settlement stores."""
    opening(books)
    approve(books, 1, 2, "USDT", 300_000, "w-1")
    reject(books, 2, 2, "USDT", 200_000, "w-2", "name mismatch: ÄÖ ✓")
    books.command(lambda seq: [                             # freeze, cancelling its orders
        AdminAction(seq, "ops", "freeze", 2, "", "fraud review", "active", "frozen"),
        Cancelled(seq, 1, 2, 100, CANCEL_ADMIN),
        books.transfer(seq, "USDT", 100_000, (2, LOCKED), (2, AVAILABLE), KIND_UNLOCK,
                       order_id=1)])
    books.command(lambda seq: [
        Halted(seq, "BTC-USDT"),
        AdminAction(seq, "ops", "halt", target="BTC-USDT", before="trading", after="halted")])
    books.command(lambda seq: [
        AdjustmentPending(seq, 1, 3, "BTC", -50, "alice", "double credit"),
        AdminAction(seq, "alice", "adjust_request", 3, "BTC", "double credit", "", "-50")])
    books.command(lambda seq: [
        Adjusted(seq, 3, "BTC", -50, "alice", "double credit", 500, 450, adjustment_id=1,
                 approved_by="bob"),
        AdminAction(seq, "bob", "adjust_approve", 3, "1", "double credit", "pending", "approved"),
        books.transfer(seq, "BTC", 50, (3, AVAILABLE), (SYSTEM_OUTSIDE, AVAILABLE), KIND_ADJUST,
                       ref="double credit")])
    books.command(lambda seq: [                             # under the auto-approval amount
        WithdrawalRequested(seq, 3, 3, "BTC", 100, "w-3"),
        books.transfer(seq, "BTC", 100, (3, AVAILABLE), (3, LOCKED), KIND_WITHDRAW_HOLD,
                       ref="w-3"),
        WithdrawalCompleted(seq, 3, 3, "BTC", 100, "w-3", ""),
        books.transfer(seq, "BTC", 100, (3, LOCKED), (SYSTEM_OUTSIDE, AVAILABLE), KIND_WITHDRAW,
                       ref="w-3")])
    books.command(lambda seq: [Clocked(seq, CLOCK_NS + 1)])


async def settle(url, commands, **kw):
    writer = SettlementWriter(url, assets=ASSETS, **kw)
    await writer.start()
    for events in commands:
        await writer.put(events)
    await writer.close()
    return writer


async def query(url, sql, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def audit_findings(url):
    conn = await asyncpg.connect(url)
    try:
        return await audit(conn)
    finally:
        await conn.close()


def assert_balances(url, books):
    rows = asyncio.run(query(url, "SELECT b.account_id, a.name, b.available, b.locked "
                                  "FROM balances b JOIN assets a USING (asset_id)"))
    table = {(r["account_id"], r["name"]): (r["available"], r["locked"]) for r in rows}
    for account in books.accounts():
        for asset in ASSETS:
            assert table.get((account, asset.name), (0, 0)) == books.balance(account, asset.name)


@pytest.mark.parametrize("batch_events_max", [1, 4, 10_000])
def test_withdrawals_and_admin_acts_settle_row_for_row(db_url, batch_events_max):
    books = Books()
    money_controls(books)
    writer = asyncio.run(settle(db_url, books.commands, batch_events_max=batch_events_max))
    assert writer.committed_seq == books.seq == 14

    transfers = asyncio.run(query(db_url, "SELECT seq, kind, source_account, source_bucket, "
                                          "target_account, target_bucket, amount, ref "
                                          "FROM transfers ORDER BY seq, event_index"))
    assert [(r["seq"], r["kind"], r["source_bucket"], r["ref"]) for r in transfers] == [
        (1, KIND_DEPOSIT, AVAILABLE, "dep-1"), (2, KIND_DEPOSIT, AVAILABLE, "dep-1"),
        (4, KIND_WITHDRAW_HOLD, AVAILABLE, "w-1"), (5, KIND_WITHDRAW_HOLD, AVAILABLE, "w-2"),
        (6, KIND_LOCK, AVAILABLE, ""), (7, KIND_WITHDRAW, LOCKED, "w-1"),
        (8, KIND_WITHDRAW_RELEASE, LOCKED, "w-2"), (9, KIND_UNLOCK, LOCKED, ""),
        (12, KIND_ADJUST, AVAILABLE, "double credit"), (13, KIND_WITHDRAW_HOLD, AVAILABLE, "w-3"),
        (13, KIND_WITHDRAW, LOCKED, "w-3")]
    assert_balances(db_url, books)
    assert books.balance(2, "USDT") == (700_000, 0)
    assert books.balance(SYSTEM_OUTSIDE, "USDT") == (-700_000, 0)

    # audit_log: every act and the adjustment's money, field by field
    asset_ids = {r["name"]: r["asset_id"] for r in asyncio.run(query(db_url, "SELECT * FROM assets"))}
    expected = [expected_audit_row(ev, i, asset_ids) for events in books.commands
                for i, ev in enumerate(events) if type(ev) is Adjusted
                or type(ev) is AdminAction and ev.action not in AUDITED_BY_ADJUSTED]
    stored = [tuple(r) for r in asyncio.run(query(db_url, AUDIT_SELECT))]
    assert stored == expected and len(stored) == 6     # an adjustment's act: its Adjusted row
    view = asyncio.run(query(db_url, "SELECT seq, action, asset, amount, reason, target "
                                     "FROM audit_log_view ORDER BY seq, event_index"))
    assert len(view) == 6                       # action rows have no asset: still shown
    assert [(r["action"], r["asset"], r["reason"]) for r in view if r["seq"] == 12] == [
        ("adjust_approve", "BTC", "double credit")]             # one row: the money row
    assert [r["reason"] for r in view if r["seq"] == 8] == ["name mismatch: ÄÖ ✓"]
    assert [r["amount"] for r in view if r["seq"] == 12][0] == Decimal("-0.00000050")

    [order] = asyncio.run(query(db_url, "SELECT status, cancel_reason, open_qty_lots FROM orders"))
    assert tuple(order) == ("cancelled", CANCEL_ADMIN, 0)
    assert asyncio.run(audit_findings(db_url)) == []
    result = asyncio.run(reconcile(db_url, books))
    assert result.ok, result.discrepancies


def test_an_admin_act_commits_in_the_transaction_of_its_transfers(db_url):
    """Rows written by one transaction share its xmin: the act and the money
    of a seq land together or not at all, whatever the batch bound."""
    books = Books()
    money_controls(books)
    asyncio.run(settle(db_url, books.commands, batch_events_max=1))
    rows = asyncio.run(query(db_url, """
        SELECT 'transfers' AS t, seq, xmin::text AS tx FROM transfers
        UNION ALL SELECT 'audit_log', seq, xmin::text FROM audit_log"""))
    tx: dict[int, set] = {}
    for r in rows:
        tx.setdefault(r["seq"], set()).add(r["tx"])
    acted = {r["seq"] for r in rows if r["t"] == "audit_log"}
    assert acted == {7, 8, 9, 10, 11, 12}
    for seq in acted:
        assert len(tx[seq]) == 1, (seq, tx[seq])
    # batch_events_max=1: each command its own transaction
    assert len({next(iter(tx[seq])) for seq in tx}) == len(tx)


def test_clocked_only_commands_move_last_seq_and_write_nothing(db_url):
    books = Books()
    books.command(lambda seq: [Clocked(seq, CLOCK_NS)])
    books.command(lambda seq: [Clocked(seq, CLOCK_NS + 10)])
    writer = asyncio.run(settle(db_url, books.commands))
    assert writer.committed_seq == 2 and writer.stats.rows == 0
    [state] = asyncio.run(query(db_url, "SELECT last_seq FROM settlement_state"))
    assert state["last_seq"] == 2
    for table in ("transfers", "audit_log", "orders", "balances"):
        assert asyncio.run(query(db_url, f"SELECT count(*) AS n FROM {table}"))[0]["n"] == 0


def test_pending_withdrawals_explain_the_locked_bucket(db_url):
    """With two withdrawals held and an order open, account 2's locked is
    what both hold: audit and reconciliation agree, before and after a
    restart of the writer in the middle of the withdrawals' lives."""
    books = Books()
    opening(books)
    asyncio.run(settle(db_url, books.commands))
    assert books.balance(2, "USDT") == (400_000, 600_000)
    assert asyncio.run(audit_findings(db_url)) == []
    assert asyncio.run(reconcile(db_url, books)).ok
    settled = len(books.commands)
    approve(books, 1, 2, "USDT", 300_000, "w-1")
    asyncio.run(settle(db_url, books.commands[settled:]))
    assert books.balance(2, "USDT") == (400_000, 300_000)
    assert asyncio.run(audit_findings(db_url)) == []
    assert asyncio.run(reconcile(db_url, books)).ok


def test_locked_money_neither_an_order_nor_a_withdrawal_holds_is_reported(db_url):
    """The checks can fail: a release from locked of money an order holds
    (no withdrawal held it) is a withdrawals finding; locked money moved in
    by no order and no withdrawal is an orders finding."""
    books = Books()
    books.deposit(2, "USDT", 1_000)
    books.command(lambda seq: [
        Accepted(seq, 1, 2, "b-1", "BTC-USDT", "buy", 1, 1),
        books.transfer(seq, "USDT", 400, (2, AVAILABLE), (2, LOCKED), KIND_LOCK, order_id=1)])
    books.command(lambda seq: [books.transfer(seq, "USDT", 400, (2, LOCKED), (2, AVAILABLE),
                                              KIND_WITHDRAW_RELEASE, ref="w-9")])
    books.command(lambda seq: [books.transfer(seq, "USDT", 30, (2, AVAILABLE), (2, LOCKED),
                                              KIND_ADJUST)])
    asyncio.run(settle(db_url, books.commands))
    found = {(f.check, f.account, f.asset, f.bucket, f.expected, f.actual)
             for f in asyncio.run(audit_findings(db_url))}
    assert found == {("withdrawals", 2, "USDT", "locked", 0, -400),
                     ("orders", 2, "USDT", "locked", 0, 30)}
