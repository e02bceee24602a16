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
from engine.messages import (Accepted, Adjust, CancelOrder, Deposit, PlaceOrder, Rejected,
                             Transfer, Withdraw)
from settlement import SettlementWriter

ASSETS = [Asset("BTC", 8), Asset("USDT", 6)]
INSTRUMENTS = [Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001")]
# every code point, surrogates and NUL included
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=80)
FIELDS = ("deposit_ref", "withdraw_ref", "adjust_admin", "adjust_reason", "client_order_id",
          "cancel_client_order_id")


def commands_for(field: str, text: str, n: int):
    if field == "deposit_ref":
        return [Deposit(2, "USDT", 1000, ref=text)]
    if field == "withdraw_ref":
        return [Withdraw(2, "USDT", 1, ref=text)]
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
    state = {"url": url, "engine": engine, "unsettled": [funding]}
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
        for cmd in commands_for(field, text, i):
            events = engine.submit(cmd)
            streams.append(events)
            if type(events[0]) is Rejected:
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
