"""Exact-integer domain: conversions, and configurations refused at load."""
from decimal import Decimal

import pytest

from engine import Asset, Engine, Instrument
from engine.core import budget_notional, buy_reserve, fee_charged
from engine.domain import INT64_MAX


def test_asset_converts_exactly_and_refuses_sub_minor_amounts():
    usdt = Asset("USDT", 6)
    assert usdt.to_minor("12.345678") == 12_345_678
    assert usdt.from_minor(12_345_678) == Decimal("12.345678")
    with pytest.raises(ValueError):
        usdt.to_minor("0.0000001")
    with pytest.raises(TypeError):
        usdt.to_minor(0.1)                    # floats are refused, not rounded


def test_instrument_ticks_and_lots():
    ins = Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001")
    assert ins.price_to_ticks("30000.25") == 3_000_025
    assert ins.ticks_to_price(3_000_025) == Decimal("30000.25")
    assert ins.qty_to_lots("1.5") == 15_000
    assert ins.lots_to_qty(15_000) == Decimal("1.5")
    with pytest.raises(ValueError):
        ins.price_to_ticks("30000.255")       # not a whole tick
    with pytest.raises(ValueError):
        ins.qty_to_lots("0.00005")


def test_notional_unit_and_default_limits_fit_int64():
    eng = Engine([Asset("BTC", 8), Asset("USDT", 6)],
                 [Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001", taker_fee_bps=30)])
    m = eng.market("BTC-USDT")
    assert (m.notional_unit, m.base_unit) == (1, 10_000)
    assert m.max_price == 2**31 - 1
    notional = m.max_price * m.max_qty * m.notional_unit
    assert notional + fee_charged(notional * m.reserve_bps) <= INT64_MAX
    assert m.max_qty * m.base_unit <= INT64_MAX


@pytest.mark.parametrize("assets,ins", [
    # tick * lot is a fraction of a USD cent
    ([Asset("BTC", 8), Asset("USD", 2)], Instrument("BTC-USD", "BTC", "USD", "0.01", "0.0001")),
    # a lot smaller than the base asset's minor unit
    ([Asset("BTC", 2), Asset("USD", 2)], Instrument("BTC-USD", "BTC", "USD", "1", "0.001")),
    # unknown asset
    ([Asset("BTC", 8)], Instrument("BTC-USD", "BTC", "USD", "1", "1")),
    # an explicit max that could overflow int64
    ([Asset("BTC", 0), Asset("USD", 0)], Instrument("BTC-USD", "BTC", "USD", "1", "1",
                                                    max_price=2**40, max_qty=2**40)),
    # one tick of one lot alone exceeds int64: no price fits (was a ZeroDivisionError)
    ([Asset("Q", 18), Asset("B", 0)], Instrument("B-Q", "B", "Q", "1000", "1000")),
])
def test_configurations_that_cannot_be_exact_are_refused_at_load(assets, ins):
    with pytest.raises(ValueError):
        Engine(assets, [ins])


@pytest.mark.parametrize("kw", [dict(price_tick="0"), dict(qty_lot="-1"), dict(maker_fee_bps=-1),
                                dict(taker_fee_bps=10_001), dict(min_qty=0), dict(max_qty=0),
                                dict(price_tick="abc")])
def test_bad_instrument_fields_are_refused(kw):
    args = dict(symbol="A-B", base="A", quote="B", price_tick="1", qty_lot="1")
    args.update(kw)
    with pytest.raises(ValueError):
        Instrument(**args)


def _cores():
    """The fee helpers of each built core: the source, and the compiled one when built."""
    import engine
    from engine import core
    mods = [core]
    if engine.CORE_IMPLEMENTATION == "cython":
        from engine import _ccore
        mods.append(_ccore)
    return mods


@pytest.mark.parametrize("mod", _cores(), ids=lambda m: m.__name__)
def test_buy_reserve_is_the_definition_in_every_core(mod):
    """buy_reserve = notional + fee_charged(fee_numer + notional * bps) - fee_charged(fee_numer),
    exactly, on both of its paths (no fills yet: C int64 in the compiled core; fills: Python
    ints) -- up to the largest reservation a market allows and with huge fee numerators."""
    import random
    rng = random.Random(7)
    m = Engine([Asset("A", 8), Asset("B", 8)],
               [Instrument("A-B", "A", "B", "1", "0.00000001", maker_fee_bps=10_000,
                           taker_fee_bps=10_000)]).market("A-B")
    assert m.notional_unit == 1 and m.max_qty > 10**9     # room for both kinds of case
    cases = [(m.max_price, m.max_qty, 0), (m.max_price, m.max_qty, 10**30), (1, 1, 0),
             (1, 1, 1), (7, 3, 9_999), (7, 3, 10_001)]
    for _ in range(3000):
        price, qty = rng.randint(1, m.max_price), rng.randint(1, m.max_qty)
        if rng.random() < 0.5:
            price, qty = rng.randint(1, 10**6), rng.randint(1, 10**6)
        cases.append((price, qty, rng.choice([0, 0, rng.randint(1, 10**6),
                                              rng.randint(1, 2**80)])))
    for bps in (0, 2, 5, 9_999, 10_000):
        for price, qty, fee_numer in cases:
            notional = price * qty * m.notional_unit
            want = notional + fee_charged(fee_numer + notional * bps) - fee_charged(fee_numer)
            assert mod.buy_reserve(price, qty, fee_numer, m.notional_unit, bps) == want


def test_compiled_buy_reserve_refuses_what_int64_cannot_hold():
    """Past the market limits the compiled core raises instead of wrapping around."""
    mods = _cores()
    if len(mods) < 2:
        pytest.skip("the compiled core is not built")
    with pytest.raises(OverflowError):
        mods[1].buy_reserve(2**62, 4, 0, 1, 5)
    with pytest.raises(OverflowError):
        mods[1].buy_reserve(2**40, 2**30, 0, 1, 5)


def test_fee_and_reserve_arithmetic():
    assert fee_charged(0) == 0 and fee_charged(1) == 1 and fee_charged(10_000) == 1
    assert fee_charged(10_001) == 2
    # the reserve covers notional plus the rise of the cumulative fee
    assert buy_reserve(100, 10, 0, 1, 20) == 1000 + 2
    assert buy_reserve(100, 6, 400 * 20, 1, 20) == 600 + 1
    for budget in range(0, 5000, 7):
        n = budget_notional(budget, 20)
        assert n + fee_charged(n * 20) <= budget < (n + 1) + fee_charged((n + 1) * 20)
