# Augmenting declarations for engine/core.py when Cython compiles it into
# engine._ccore (setup.py).  They change how the compiled module stores and
# calls things, never what it computes: the classes become extension types
# (attributes in C slots instead of instance dicts) and the internal helpers
# C-level methods, and the command handlers read PlaceOrder/CancelOrder/
# ReplaceOrder fields from their slots (engine/_commands.pxd).  Money,
# quantities and ids stay Python ints, except where a bound proves int64 holds
# them (an asset index and two bucket slots in _transfer; buy_reserve's
# arguments and notional, and its whole no-fills case; an account's open-order
# count; an order's type and time-in-force flags in _place), so the compiled
# engine behaves exactly as the source (the
# differential tests compare the two event for event).  The pure-Python run
# ignores this file.
# An attribute added to one of these classes in core.py must be declared here
# too (extension types have no __dict__: the compiled engine raises
# AttributeError, and the tests fail, until it is).

cimport cython
from engine._commands cimport PlaceOrder as _PlaceOrder, CancelOrder as _CancelOrder
from engine._commands cimport ReplaceOrder as _ReplaceOrder

# the ledger's words and the order codes as C module variables, so that the
# hot paths read them without a module-dictionary lookup (engine/ledger.py and
# engine/core.py still define them; these only say where the values live)
cdef object AVAILABLE, LOCKED, SYSTEM_OUTSIDE, SYSTEM_FEES
cdef object KIND_LOCK, KIND_UNLOCK, KIND_TRADE, KIND_FEE, KIND_DEPOSIT, KIND_WITHDRAW, KIND_ADJUST
cdef object KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE, REF_DEPOSIT, REF_WITHDRAW
cdef Py_ssize_t TYPE_MARKET, TYPE_STOP, TIF_GTC, TIF_IOC, TIF_FOK
cdef Py_ssize_t FLAG_TIER_SHIFT, FLAG_TIERED

cdef bint _is_id(object value)
@cython.locals(i=Py_ssize_t, text=str, valid=str)
cdef Py_ssize_t _word_code(object word, tuple words) noexcept
@cython.locals(text=str)
cdef bint _is_text(object value)
@cython.locals(p=_PlaceOrder, x=_CancelOrder, r=_ReplaceOrder)
cpdef dict _fields_as_read(c)
@cython.locals(text=str)
cdef bint _is_ref(object value, bint required)
# an order's flags: post-only, STP mode and tier code (Python ints: the small ones are shared)
cdef object _flags(object post_only, object stp, Py_ssize_t tier)
cdef object _flags_stp(object flags)
cpdef fee_charged(fee_numer)
# buy_reserve's common case (no fills yet) in C int64: the arguments are a
# validated price and quantity and the market's unit and fee, whose product and
# reservation the market's limits keep in int64 (setup.py compiles this module
# with overflowcheck: a breach would be an OverflowError, never a wrong number)
@cython.locals(bps=cython.longlong, notional=cython.longlong, q=cython.longlong, wide=object)
cpdef buy_reserve(long long price, long long qty, fee_numer, long long unit,
                  long long reserve_bps)
cpdef budget_notional(budget, taker_bps)


cdef class Market:
    cdef public object index, instrument, symbol, base, quote, base_name, quote_name
    cdef public object notional_unit, base_unit, min_qty, max_qty, max_price, min_notional
    cdef public object maker_bps, taker_bps, reserve_bps, halted, last_price
    cdef public list fees

cdef object _reserve_bps(Market m, long flags)

cdef class _Stop:
    cdef public object order_id, account, market, side, type, tif, price, qty, quote_qty
    cdef public object stop_price, stp, client_order_id, reserve, tier

cdef class _Account:
    cdef public list bal
    cdef public Py_ssize_t open     # at most one per order ever accepted
    cdef public dict cids
    cdef public int tier            # an index into Engine._tiers (an int: 48 bytes in all)
    cdef public bint frozen

cdef class _Taker:
    cdef public object order_id, account, side, limit, qty, quote_only, budget, locked
    cdef public object fee_numer, can_rest, stp, flags, market_order
    cdef public _Account acct

cdef class Engine:
    cdef public object assets, instruments, max_open_orders
    cdef public object book_implementation, core_implementation
    cdef public object _book, _seq, _next_order_id, _next_trade_id
    cdef public dict _asset_index, _market_by_symbol, _accounts, _stops, _order_cid
    cdef public list _asset_names, _markets, _buy_stops, _sell_stops, _ev
    # money controls
    cdef public object tiers, default_tier, adjustment_approval_threshold
    cdef public object _now, _day, _next_withdrawal_id, _next_adjustment_id
    cdef public list _tiers, _tier_names, _tier_limits, _tier_auto, _adjust_threshold
    cdef public dict _tier_code, _withdrawals, _adjustments, _withdrawn_today
    cdef public set _refs

    cdef _reject(self, account, client_order_id, reason, order_id=*)
    cdef _reject_amend(self, account, order_id, reason)
    @cython.locals(si=Py_ssize_t, ti=Py_ssize_t)
    cdef _transfer(self, Py_ssize_t asset, amount, source, list sb, source_bucket, target,
                   list tb, target_bucket, kind, order_id=*, trade_id=*, ref=*)
    cdef _resting_reserve(self, Market m, side, price, qty, fee_numer, long flags)
    cpdef _register(self, order_id, _Account a, cid)  # cpdef: restore() calls it on the
    cpdef _add_stop(self, _Stop stop)                 # engine it builds, as Python does
    cpdef _Account _account(self, account)            # (restore() too)
    cdef _close(self, order_id, _Account a)
    cdef _discard_stop(self, _Stop stop)
    cdef _set_limits(self, _Taker t, Market m, bint is_market, bint gtc, price, quote_qty)
    cdef _take(self, Market m, _Taker t)
    @cython.locals(accounts=dict, maker=_Account, taker_bal=list, fees=list, buyer_bal=list,
                   seller_bal=list, maker_flags=long)
    cdef _settle(self, Market m, _Taker t, records)
    cdef _release_resting(self, Market m, order_id, account, list bal, buys, price, qty_before,
                          fee_numer, qty_after, long flags)
    @cython.locals(acct=_Account)
    cdef _run_stops(self, Market m)
    # the commands (submit dispatches on the exact type)
    @cython.locals(m=Market, acct=_Account, b=list, type_code=Py_ssize_t, tif_code=Py_ssize_t,
                   is_market=bint, is_stop=bint, gtc=bint, fok=bint, may_rest=bint,
                   tier=Py_ssize_t)
    cdef _place(self, _PlaceOrder c)
    @cython.locals(acct=_Account)
    cdef _cancel(self, _CancelOrder c)
    @cython.locals(m=Market, stop=_Stop, acct=_Account)
    cdef bint _cancel_open(self, order_id, account, reason) except -1
    @cython.locals(stop=_Stop)
    cdef list _open_order_ids(self, account, _Account a, market)
    @cython.locals(m=Market, stop=_Stop, acct=_Account, b=list)
    cdef _replace(self, _ReplaceOrder c)
    @cython.locals(a=_Account)
    cdef _deposit(self, c)
    @cython.locals(a=_Account, b=list)
    cdef _withdraw(self, c)
    @cython.locals(a=_Account, b=list)
    cdef _request_withdrawal(self, c)
    cdef _complete_withdrawal(self, withdrawal_id, account, list b, Py_ssize_t asset, amount, ref,
                              admin)
    @cython.locals(a=_Account)
    cdef _approve_withdrawal(self, c)
    cdef _reject_withdrawal(self, c)
    @cython.locals(a=_Account)
    cdef _adjust(self, c)
    cdef _adjust_refused(self, Py_ssize_t asset, list b, amount)
    cdef _apply_adjust(self, action, account, _Account a, Py_ssize_t asset, amount, admin, reason,
                       adjustment_id, approved_by)
    @cython.locals(a=_Account)
    cdef _approve_adjustment(self, c)
    cdef _clock(self, c)
    cdef bint _admin_checks(self, c, tuple texts) except -1
    @cython.locals(a=_Account)
    cdef _freeze(self, c)
    @cython.locals(a=_Account)
    cdef _unfreeze(self, c)
    @cython.locals(a=_Account)
    cdef _set_tier(self, c)
    @cython.locals(a=_Account, market=Market)
    cdef _cancel_all(self, c)
    @cython.locals(m=Market)
    cdef _halt(self, c)
    @cython.locals(m=Market)
    cdef _resume(self, c)
    cdef _money_args(self, c, min_account)
    cdef _money_ref_args(self, c, min_account, namespace)
    cdef _supply_room(self, asset)
    cdef bint _ref_used(self, namespace, account, asset, ref) except -1
    cdef _use_ref(self, namespace, account, asset, ref)
