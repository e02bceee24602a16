"""Assets, instruments, account tiers and the exact-integer arithmetic of money.

Inside the engine a price is an ``int`` count of ticks, a quantity an ``int``
count of lots and an amount an ``int`` count of an asset's minor units.  This
module converts decimal strings to those counts and back and refuses any
value that is not a whole multiple; the engine refuses at load any instrument
whose notional (``price_ticks * qty_lots * notional_unit``) would not be a
whole number of quote minor units or could leave int64 (``engine.core.Market``,
beside the fee arithmetic, so both compile into the engine core).  An
``AccountTier`` is a fee and withdrawal-limit schedule that accounts are put
in.  It never touches floats.
"""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

import msgspec

INT64_MAX = 2**63 - 1
BPS = 10_000                     # basis points in one
FEE_BPS_MAX = BPS                # a fee can never exceed the notional
SCALE_MAX = 18
DEFAULT_MAX_PRICE_TICKS = 2**31 - 1
TIER_NAME_MAX = 64               # characters


def _decimal(value, what: str) -> Decimal:
    if isinstance(value, float):
        raise TypeError(f"{what} must be a decimal string or Decimal, not float")
    try:
        d = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise ValueError(f"{what} is not a decimal number: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"{what} must be finite: {value!r}")
    return d


def _whole(d: Decimal, what: str) -> int:
    if d != d.to_integral_value():
        raise ValueError(f"{what} is not a whole number: {d}")
    return int(d)


class Asset(msgspec.Struct, frozen=True):
    """An asset; ``scale`` is the number of decimal places of its minor unit."""
    name: str
    scale: int

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("asset name must be a non-empty str")
        if type(self.scale) is not int or not 0 <= self.scale <= SCALE_MAX:
            raise ValueError(f"asset scale must be an int in 0..{SCALE_MAX}: {self.scale!r}")

    def to_minor(self, amount) -> int:
        """Decimal amount -> minor units; refuses sub-minor precision."""
        return _whole(_decimal(amount, "amount").scaleb(self.scale), f"{amount} {self.name} in minor units")

    def from_minor(self, amount_minor: int) -> Decimal:
        return Decimal(amount_minor).scaleb(-self.scale)


class Instrument(msgspec.Struct, frozen=True):
    """A market: ``base`` traded against ``quote``.

    ``price_tick`` and ``qty_lot`` are decimal strings.  ``min_qty``/``max_qty``
    are in lots (``max_qty=None``: the largest that keeps every notional, fee
    reservation included, within int64 at ``max_price``); ``max_price`` in
    ticks (``None``: 2**31-1, lowered if needed so that ``max_qty >= min_qty``);
    ``min_notional`` in quote minor units; fees in basis points.
    """
    symbol: str
    base: str
    quote: str
    price_tick: str
    qty_lot: str
    min_qty: int = 1
    max_qty: int | None = None
    min_notional: int = 0
    maker_fee_bps: int = 0
    taker_fee_bps: int = 0
    max_price: int | None = None

    def __post_init__(self):
        for field in ("symbol", "base", "quote"):
            v = getattr(self, field)
            if not isinstance(v, str) or not v:
                raise ValueError(f"instrument {field} must be a non-empty str")
        if self.base == self.quote:
            raise ValueError(f"{self.symbol}: base and quote must differ")
        for field in ("price_tick", "qty_lot"):
            if _decimal(getattr(self, field), field) <= 0:
                raise ValueError(f"{self.symbol}: {field} must be > 0")
        for field in ("min_qty", "min_notional", "maker_fee_bps", "taker_fee_bps"):
            v = getattr(self, field)
            if type(v) is not int or v < 0:
                raise ValueError(f"{self.symbol}: {field} must be an int >= 0: {v!r}")
        if self.min_qty < 1:
            raise ValueError(f"{self.symbol}: min_qty must be >= 1")
        for field in ("maker_fee_bps", "taker_fee_bps"):
            if getattr(self, field) > FEE_BPS_MAX:
                raise ValueError(f"{self.symbol}: {field} must be <= {FEE_BPS_MAX}")
        for field in ("max_qty", "max_price"):
            v = getattr(self, field)
            if v is not None and (type(v) is not int or v < 1):
                raise ValueError(f"{self.symbol}: {field} must be None or an int >= 1: {v!r}")

    # --- conversions between decimals and counts
    def price_to_ticks(self, price) -> int:
        return _whole(_decimal(price, "price") / Decimal(self.price_tick), f"{self.symbol} price {price} in ticks")

    def ticks_to_price(self, ticks: int) -> Decimal:
        return ticks * Decimal(self.price_tick)

    def qty_to_lots(self, qty) -> int:
        return _whole(_decimal(qty, "qty") / Decimal(self.qty_lot), f"{self.symbol} qty {qty} in lots")

    def lots_to_qty(self, lots: int) -> Decimal:
        return lots * Decimal(self.qty_lot)


def _check_bps(tier: str, what: str, v) -> None:
    if type(v) is int and v < 0:
        raise ValueError(f"tier {tier!r}: {what} is {v}: negative fees (rebates) are not supported")
    if type(v) is not int or v > FEE_BPS_MAX:
        raise ValueError(f"tier {tier!r}: {what} must be an int in 0..{FEE_BPS_MAX} (basis points): {v!r}")


def _check_amounts(tier: str, what: str, amounts) -> None:
    if type(amounts) is not dict:
        raise ValueError(f"tier {tier!r}: {what} must be a dict {{asset: amount_minor}}")
    for asset, amount in amounts.items():
        if type(asset) is not str or not asset:
            raise ValueError(f"tier {tier!r}: {what}: an asset must be a non-empty str: {asset!r}")
        if type(amount) is not int or not 0 <= amount <= INT64_MAX:
            raise ValueError(f"tier {tier!r}: {what}[{asset!r}] must be an int in 0..2**63-1 "
                             f"(minor units): {amount!r}")


class AccountTier(msgspec.Struct, frozen=True):
    """A VIP level: the fees and withdrawal limits of the accounts in it.

    ``maker_fee_bps``/``taker_fee_bps``: the tier's rate on every market,
    ``None`` for each instrument's own; ``symbol_fees`` {symbol: (maker_bps,
    taker_bps)} overrides both for one market.  ``withdrawal_daily_limit``
    {asset: amount_minor}: the most an account may request to withdraw per
    UTC day; ``withdrawal_auto_approve`` {asset: amount_minor}: a request at or
    under it completes at once.  An asset missing from either means no limit,
    no auto-approval.  Fees are 0..10,000 bps: negative fees (rebates) are
    refused.
    """
    name: str
    maker_fee_bps: int | None = None
    taker_fee_bps: int | None = None
    symbol_fees: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)
    withdrawal_daily_limit: dict[str, int] = msgspec.field(default_factory=dict)
    withdrawal_auto_approve: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self):
        name = self.name
        # the name travels in audit records (AdminAction before/after) to PostgreSQL text
        if (type(name) is not str or not name or len(name) > TIER_NAME_MAX or "\x00" in name
                or not _encodable(name)):
            raise ValueError(f"tier name must be a non-empty str of at most {TIER_NAME_MAX} "
                             f"characters that UTF-8 and PostgreSQL text can carry: {name!r}")
        for field in ("maker_fee_bps", "taker_fee_bps"):
            v = getattr(self, field)
            if v is not None:
                _check_bps(name, field, v)
        if type(self.symbol_fees) is not dict:
            raise ValueError(f"tier {name!r}: symbol_fees must be a dict {{symbol: (maker_bps, taker_bps)}}")
        for symbol, fees in self.symbol_fees.items():
            if type(symbol) is not str or not symbol:
                raise ValueError(f"tier {name!r}: symbol_fees: a symbol must be a non-empty str: {symbol!r}")
            if type(fees) not in (tuple, list) or len(fees) != 2:
                raise ValueError(f"tier {name!r}: symbol_fees[{symbol!r}] must be (maker_bps, taker_bps)")
            _check_bps(name, f"symbol_fees[{symbol!r}] maker", fees[0])
            _check_bps(name, f"symbol_fees[{symbol!r}] taker", fees[1])
        _check_amounts(name, "withdrawal_daily_limit", self.withdrawal_daily_limit)
        _check_amounts(name, "withdrawal_auto_approve", self.withdrawal_auto_approve)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def __getattr__(name):
    # Market moved to engine.core (it compiles with the engine); the old import keeps working
    if name == "Market":
        from .core import Market
        return Market
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
