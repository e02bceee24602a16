"""Any text in any text field, end to end: the engine rejects what the ledger
cannot store, and whatever it accepts PostgreSQL commits.  A bad string from
one gateway must never stop the settlement writer for everyone."""
from __future__ import annotations

import asyncio

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Asset, Engine, Instrument
from engine.core import _is_text        # the engine's rule for text it accepts
from engine.ledger import (AVAILABLE, KIND_DEPOSIT, KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE,
                           LOCKED)
from engine.messages import (Accepted, Adjust, AdminAction, CancelOrder, Deposit, PlaceOrder,
                             Rejected, Transfer, Withdraw, WithdrawalRejected,
                             WithdrawalRequested)
from engine.reasons import ACTION_WITHDRAWAL_REJECT
from settle_events import Books
from settlement import SettlementWriter

ASSETS = [Asset("BTC", 8), Asset("USDT", 6)]
INSTRUMENTS = [Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001")]
# every code point, surrogates and NUL included
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=80)
FIELDS = ("deposit_ref", "withdraw_ref", "adjust_admin", "adjust_reason", "client_order_id",
          "cancel_client_order_id")


def commands_for(field: str, text: str, n: int, account: int):
    """The commands that carry ``text`` in ``field``, the one carrying it last.
    A ref goes to a fresh ``account``: a ref used once is the text under test
    (a reused one is a duplicate_ref, tests/settlement/test_refs.py)."""
    if field == "deposit_ref":
        return [Deposit(account, "USDT", 1000, ref=text)]
    if field == "withdraw_ref":
        return [Deposit(account, "USDT", 10), Withdraw(account, "USDT", 1, ref=text)]
    if field == "adjust_admin":
        return [Adjust(2, "USDT", 5, text, "fix")]
    if field == "adjust_reason":
        return [Adjust(2, "USDT", 5, "ops", text)]
    if field == "client_order_id":
        return [PlaceOrder(2, text, "BTC-USDT", "buy", price=100 + n % 50, qty=1)]
    return [CancelOrder(2, client_order_id=text)]


@pytest.fixture(scope="module")
def ledger(pg_server_url):
    from settle_db import create_database, drop_database

    from settlement import migrate
    url = asyncio.run(create_database(pg_server_url))
    asyncio.run(migrate(url))
    engine = Engine(ASSETS, INSTRUMENTS)
    funding = engine.submit(Deposit(2, "USDT", 10**12, ref="funding"))
    state = {"url": url, "engine": engine, "unsettled": [funding], "account": 100}
    yield state
    asyncio.run(drop_database(pg_server_url, url))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.sampled_from(FIELDS), ANY_TEXT), min_size=1, max_size=12))
def test_any_text_is_rejected_or_committed(ledger, items):
    engine = ledger["engine"]
    streams, ledger["unsettled"] = ledger["unsettled"], []
    accepted_refs, problems = [], []
    for i, (field, text) in enumerate(items):
        ledger["account"] += 1
        commands = commands_for(field, text, i, ledger["account"])
        for cmd in commands:
            events = engine.submit(cmd)
            streams.append(events)
            if cmd is not commands[-1]:
                assert type(events[0]) is not Rejected, events    # funding
            elif type(events[0]) is Rejected:
                if events[0].reason not in ("invalid_ref", "invalid_client_order_id",
                                            "unknown_order", "insufficient_funds",
                                            "duplicate_client_order_id", "too_many_open_orders"):
                    problems.append((field, text, events[0].reason))
            elif field in ("deposit_ref", "withdraw_ref"):
                accepted_refs.append(text)
            elif field == "client_order_id" and not (
                    type(events[0]) is Accepted and events[0].client_order_id == text):
                problems.append((field, text, events[0]))

    async def settle():
        writer = SettlementWriter(ledger["url"], assets=ASSETS)
        await writer.start()
        for events in streams:
            await writer.put(events)
        await writer.close()                 # raises if any batch was refused
        assert writer.failure is None
        assert writer.committed_seq == engine.seq
        conn = await asyncpg.connect(ledger["url"])
        try:
            stored = {r["ref"] for r in await conn.fetch(
                "SELECT ref FROM transfers WHERE kind IN ('deposit', 'withdraw')")}
        finally:
            await conn.close()
        for ref in accepted_refs:
            assert ref in stored
    asyncio.run(settle())
    assert problems == []
    assert all(type(e) is not Transfer or "\x00" not in e.ref for evs in streams for e in evs)


# ---------------------------------------------------------------- events the engine will emit
# The money-controls events (built by hand until the engine emits them): any
# text the engine accepts in an admin act, a rejected withdrawal or a
# withdrawal's ref is committed and reads back unchanged.
ACCEPTED_TEXT = ANY_TEXT.filter(_is_text)
ACT_FIELDS = ("admin", "reason", "target", "before", "after", "ref")


@pytest.fixture(scope="module")
def hand_ledger(pg_server_url):
    from settle_db import create_database, drop_database

    from settlement import migrate
    url = asyncio.run(create_database(pg_server_url))
    asyncio.run(migrate(url))
    yield {"url": url, "books": Books(), "account": 100}
    asyncio.run(drop_database(pg_server_url, url))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.tuples(st.sampled_from(ACT_FIELDS), ACCEPTED_TEXT), min_size=1,
                      max_size=8))
def test_any_accepted_text_in_admin_acts_and_withdrawals_is_committed(hand_ledger, items):
    books = hand_ledger["books"]
    settled = len(books.commands)
    acts, refs = {}, {}
    for field, text in items:
        account = hand_ledger["account"] = hand_ledger["account"] + 1   # its refs are its own
        t = {"admin": "ops", "reason": "", "target": "7", "before": "pending",
             "after": "rejected", "ref": "w-1", field: text}
        books.deposit(account, "USDT", 100, ref=t["ref"])
        books.command(lambda seq: [
            WithdrawalRequested(seq, seq, account, "USDT", 40, t["ref"]),
            books.transfer(seq, "USDT", 40, (account, AVAILABLE), (account, LOCKED),
                           KIND_WITHDRAW_HOLD, ref=t["ref"])])
        rejected = books.command(lambda seq: [
            WithdrawalRejected(seq, seq - 1, account, "USDT", 40, t["ref"], t["admin"],
                               t["reason"]),
            AdminAction(seq, t["admin"], ACTION_WITHDRAWAL_REJECT, account, t["target"],
                        t["reason"], t["before"], t["after"]),
            books.transfer(seq, "USDT", 40, (account, LOCKED), (account, AVAILABLE),
                           KIND_WITHDRAW_RELEASE, ref=t["ref"])])
        acts[rejected[0].seq] = (t["admin"], t["reason"], t["target"], t["before"], t["after"])
        refs[account] = t["ref"]

    async def settle():
        writer = SettlementWriter(hand_ledger["url"], assets=ASSETS)
        await writer.start()
        for events in books.commands[settled:]:
            await writer.put(events)
        await writer.close()                 # raises if any batch was refused
        assert writer.committed_seq == books.seq
        conn = await asyncpg.connect(hand_ledger["url"])
        try:
            stored_acts = {r["seq"]: tuple(r)[1:] for r in await conn.fetch(
                "SELECT seq, admin, reason, target, before, after FROM audit_log "
                "WHERE seq = ANY($1::bigint[])", list(acts))}
            stored_refs = {}
            for r in await conn.fetch("SELECT kind, target_account, ref FROM transfers "
                                      "WHERE target_account = ANY($1::bigint[])", list(refs)):
                stored_refs.setdefault(r["target_account"], set()).add((r["kind"], r["ref"]))
        finally:
            await conn.close()
        assert stored_acts == acts
        assert stored_refs == {account: {(KIND_DEPOSIT, ref), (KIND_WITHDRAW_HOLD, ref),
                                         (KIND_WITHDRAW_RELEASE, ref)}
                               for account, ref in refs.items()}
    asyncio.run(settle())
