"""The ledger's vocabulary: system accounts, balance buckets, transfer kinds.

One definition of each rule, imported by the engine, the settlement writer,
reconciliation and the service layer.  The SQL migrations repeat them as
CHECK constraints (PostgreSQL cannot import Python); tests/settlement/
test_schema.py checks that both lists agree.  No I/O, no dependencies.
"""
from __future__ import annotations

# ---- accounts
SYSTEM_OUTSIDE = 0          # the outside world: deposits come from it, withdrawals go to it
SYSTEM_FEES = 1             # collects fees
FIRST_USER_ACCOUNT = 2      # ids below this are system accounts
SYSTEM_ACCOUNTS = (SYSTEM_OUTSIDE, SYSTEM_FEES)


def is_system_account(account: int) -> bool:
    return account < FIRST_USER_ACCOUNT


# ---- buckets: every (account, asset) balance has two
AVAILABLE = "available"
LOCKED = "locked"
BUCKETS = (AVAILABLE, LOCKED)       # in slot order: a balance list holds [available, locked]

# ---- transfer kinds: why a Transfer moved money
KIND_LOCK = "lock"          # available -> locked, when an order is accepted or grows
KIND_UNLOCK = "unlock"      # locked -> available, when an order shrinks, ends or costs less
KIND_TRADE = "trade"        # locked of one side -> available of the other
KIND_FEE = "fee"            # a fill's fee, to account 1
KIND_DEPOSIT = "deposit"    # account 0 -> a user
KIND_WITHDRAW = "withdraw"  # a user (or account 1) -> account 0
KIND_ADJUST = "adjust"      # admin correction, either way with account 0
KIND_WITHDRAW_HOLD = "withdraw_hold"        # available -> locked, a requested withdrawal
KIND_WITHDRAW_RELEASE = "withdraw_release"  # locked -> available, a rejected withdrawal
TRANSFER_KINDS = (KIND_LOCK, KIND_UNLOCK, KIND_TRADE, KIND_FEE, KIND_DEPOSIT, KIND_WITHDRAW,
                  KIND_ADJUST, KIND_WITHDRAW_HOLD, KIND_WITHDRAW_RELEASE)
