"""Money controls through the server: who may send what, the admin's name,
the server's Clock, tiers from the configuration, pending withdrawals that
survive a restart (a real server over a real loopback socket)."""
from __future__ import annotations

import time

import pytest

from engine.client import Client, ClientError
from engine.messages import (AdjustmentPending, AdminAction, Adjusted, ApproveAdjustment, CancelAll,
                             CancelOrder, Clock, Deposit, FreezeAccount, Rejected,
                             RequestWithdrawal, SetAccountTier, Trade, WithdrawalCompleted,
                             WithdrawalRequested)
from engine.service import protocol as P
from engine.service.config import ConfigError, load_config
from engine.service.journal import Journal
from engine.service.server import CLOCK_GATEWAY
from servers import TOKENS, run, serving, write_config

SYM = "BTC-USDT"
# two named admins (a large adjustment needs both), a named treasury, tiers,
# and an approval threshold, appended to the test configuration
MONEY = """
[engine]
default_tier = "retail"
adjustment_approval_threshold = { USDT = 1_000_000_000 }
[[tiers]]
name = "retail"
withdrawal_daily_limit = { USDT = 5_000_000_000 }
withdrawal_auto_approve = { USDT = 100_000_000 }
[[tiers]]
name = "vip"
maker_fee_bps = 0
taker_fee_bps = 1
[[server.sessions]]
token = "tok-alice"
role = "admin"
name = "alice"
[[server.sessions]]
token = "tok-bob"
role = "admin"
name = "bob"
[[server.sessions]]
token = "tok-wallet"
role = "treasury"
name = "wallet"
accounts = [2, 3]
"""
TOKENS = {**TOKENS, "alice": "tok-alice", "bob": "tok-bob", "wallet": "tok-wallet"}


def money_serving(tmp_path, **kw):
    return serving(tmp_path, database_extra=MONEY, clock_interval_ms=1000, **kw)


async def connect(server, who, **kw):
    return await Client.connect("127.0.0.1", server.port, token=TOKENS[who],
                                gateway_id=f"gw-{who}", **kw)


def test_only_treasury_and_admin_move_money_and_only_admin_administers(tmp_path):
    async def go():
        async with money_serving(tmp_path) as server:
            trading = await connect(server, "trading")
            treasury = await connect(server, "treasury")
            for command in (RequestWithdrawal(2, "USDT", 1, "r"), FreezeAccount(2, "x", "y"),
                            SetAccountTier(2, "vip", "x"), ApproveAdjustment(1, "x"),
                            CancelOrder(2, order_id=1, admin="x"), CancelAll(2, admin="x"),
                            Clock(10**18)):
                with pytest.raises(ClientError) as e:
                    await trading.request(command)
                assert e.value.reason == P.ERR_NOT_PERMITTED, command
            for command in (FreezeAccount(2, "x", "y"), SetAccountTier(2, "vip", "x"),
                            CancelAll(2, admin="x"), Clock(10**18)):
                with pytest.raises(ClientError) as e:
                    await treasury.request(command)
                assert e.value.reason == P.ERR_NOT_PERMITTED, command
            # counted, by role, command and reason
            assert server.refusals[("trading", "RequestWithdrawal", P.ERR_NOT_PERMITTED)] == 1
            assert server.refusals[("trading", "CancelOrder", P.ERR_NOT_PERMITTED)] == 1
            assert sum(n for (role, _, _), n in server.refusals.items() if role == "trading") == 7
            assert sum(n for (role, _, _), n in server.refusals.items() if role == "treasury") == 4
            # a trading session's own CancelAll works (and cancels only its account's orders)
            await treasury.deposit(account=2, asset="USDT", amount="1000", ref="d2")
            await trading.place(account=2, client_order_id="a", symbol=SYM, side="buy",
                                price="100", qty="1")
            ev = await trading.cancel_all(2)
            assert [e.reason for e in ev if type(e).__name__ == "Cancelled"] == ["user"]
            # the treasury requests and approves; the admin freezes
            ev = await treasury.request_withdrawal(account=2, asset="USDT", amount="500", ref="w1")
            [req] = [e for e in ev if type(e) is WithdrawalRequested]
            assert not any(type(e) is WithdrawalCompleted for e in ev)     # over auto-approval
            ev = await treasury.approve_withdrawal(req.withdrawal_id, admin="anyone")
            assert any(type(e) is WithdrawalCompleted for e in ev)
            admin = await connect(server, "admin")
            ev = await admin.freeze(2, admin="ops", reason="kyc")
            assert any(type(e) is AdminAction and e.action == "freeze" for e in ev)
            ev = await trading.place(account=2, client_order_id="b", symbol=SYM, side="buy",
                                     price="100", qty="1")
            assert type(ev[0]) is Rejected and ev[0].reason == "account_frozen"
            for c in (trading, treasury, admin):
                await c.close()
    run(go())


def test_a_named_session_acts_only_under_its_name_and_large_adjustments_take_two(tmp_path):
    async def go():
        async with money_serving(tmp_path) as server:
            alice = await connect(server, "alice")
            bob = await connect(server, "bob")
            with pytest.raises(ClientError) as e:           # alice cannot sign as bob
                await alice.adjust(account=2, asset="USDT", amount="5000", admin="bob",
                                   reason="refund")
            assert e.value.reason == P.ERR_NOT_PERMITTED and "alice" in e.value.detail
            ev = await alice.adjust(account=2, asset="USDT", amount="5000", admin="alice",
                                    reason="refund")            # over 1,000 USDT: pending
            [pending] = [e for e in ev if type(e) is AdjustmentPending]
            assert await alice.balances(2) == {"BTC": (0, 0), "USDT": (0, 0), "ETH": (0, 0)}
            _, adjustments = await alice.pending()
            assert [a.adjustment_id for a in adjustments] == [pending.adjustment_id]
            ev = await alice.approve_adjustment(pending.adjustment_id, admin="alice")
            assert type(ev[0]) is Rejected and ev[0].reason == "same_admin"
            ev = await bob.approve_adjustment(pending.adjustment_id, admin="bob")
            [adjusted] = [e for e in ev if type(e) is Adjusted]
            assert (adjusted.admin, adjusted.approved_by) == ("alice", "bob")
            assert (await bob.balances(2))["USDT"] == (5_000_000_000, 0)
            assert (await bob.pending()) == ([], [])
            # a named session's user-style cancel needs no name; its admin cancel does
            wallet = await connect(server, "wallet")
            with pytest.raises(ClientError) as e:           # accounts = [2, 3]
                await wallet.request_withdrawal(account=4, asset="USDT", amount="1", ref="x")
            assert e.value.reason == P.ERR_ACCOUNT_NOT_PERMITTED
            with pytest.raises(ClientError) as e:
                await wallet.approve_withdrawal(1, admin="someone")
            assert e.value.reason == P.ERR_NOT_PERMITTED
            for c in (alice, bob, wallet):
                await c.close()
    run(go())


def test_the_server_tells_the_engine_the_time_through_the_journal(tmp_path):
    async def go():
        before = time.time_ns()
        async with money_serving(tmp_path) as server:
            treasury = await connect(server, "treasury")
            await treasury.deposit(account=2, asset="USDT", amount="1", ref="t1")
            now = server.state.engine.now
            assert before <= now <= time.time_ns()
            await treasury.close()
            return now
    now = run(go())
    with Journal(tmp_path / "journal", read_only=True) as journal:
        clocks = [r for r in journal.read() if r.gateway_id == CLOCK_GATEWAY]
    assert clocks and type(clocks[0].command) is Clock and clocks[0].command.ts_ns <= now

    async def again():          # recovery replays the Clock: the same now, never earlier
        async with money_serving(tmp_path) as server:
            assert server.state.engine.now >= now
    run(again())


def test_tiers_from_the_configuration_set_fees_and_pending_withdrawals_survive_restart(tmp_path):
    async def go():
        async with money_serving(tmp_path) as server:
            treasury = await connect(server, "treasury")
            for a in (2, 3):
                await treasury.deposit(account=a, asset="USDT", amount="100000", ref=f"u{a}")
                await treasury.deposit(account=a, asset="BTC", amount="10", ref=f"b{a}")
            admin = await connect(server, "admin")
            assert server.state.engine.account_tier(3) == "retail"
            await admin.set_account_tier(3, "vip", admin="ops")
            trading = await connect(server, "trading")
            await trading.place(account=2, client_order_id="m", symbol=SYM, side="sell",
                                price="20000", qty="1")
            ev = await trading.place(account=3, client_order_id="t", symbol=SYM, side="buy",
                                     price="20000", qty="1")
            [trade] = [e for e in ev if type(e) is Trade]
            # 20,000 USDT notional: the instrument's 5 bps for retail, the vip tier's 1 bp
            assert trade.taker_fee == 2_000_000 and trade.maker_fee == 4_000_000
            ev = await treasury.request_withdrawal(account=2, asset="USDT", amount="2000",
                                                   ref="w")
            [req] = [e for e in ev if type(e) is WithdrawalRequested]
            withdrawals, _ = await treasury.pending(2)
            assert [w.withdrawal_id for w in withdrawals] == [req.withdrawal_id]
            for c in (treasury, admin, trading):
                await c.close()
            return req.withdrawal_id
    wid = run(go())

    async def after_restart():
        async with money_serving(tmp_path) as server:
            treasury = await connect(server, "treasury")
            withdrawals, _ = await treasury.pending()
            assert [w.withdrawal_id for w in withdrawals] == [wid]
            assert server.state.engine.account_tier(3) == "vip"
            ev = await treasury.request(Deposit(2, "USDT", 1, ref="u2"))     # the same ref again
            assert type(ev[0]) is Rejected and ev[0].reason == "duplicate_ref"
            await treasury.close()
    run(after_restart())


@pytest.mark.parametrize("extra, key, words", [
    ('[[tiers]]\nname = "t"\nmaker_fee_bps = -1\n', "tiers[0].maker_fee_bps", "rebates"),
    ('[[tiers]]\nname = "t"\nwithdrawal_daily_limit = { DOGE = 5 }\n',
     "tiers[0].withdrawal_daily_limit", "DOGE"),
    ('[[tiers]]\nname = "t"\nsymbol_fees = { "X-Y" = [1, 2] }\n', "tiers[0].symbol_fees", "X-Y"),
    ('[[tiers]]\nname = "t"\n[[tiers]]\nname = "t"\n', "tiers[1].name", "already defined"),
    ('[engine]\ndefault_tier = "gold"\n', "engine.default_tier", "gold"),
    ('[engine]\nadjustment_approval_threshold = { DOGE = 1 }\n',
     "engine.adjustment_approval_threshold", "DOGE"),
    ('[[server.sessions]]\ntoken = "t-x"\nrole = "admin"\nname = "two words"\n',
     "server.sessions[4].name", "spaces"),
])
def test_money_configuration_mistakes_are_one_line_errors(tmp_path, extra, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(write_config(tmp_path, database_extra=extra))
    assert e.value.key == key and words in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
