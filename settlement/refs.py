"""The ledger's idempotency keys: which transfers a non-empty ref makes unique.

The engine refuses a reused ref (``duplicate_ref``) in two namespaces:
deposit (``Deposit``: the credited account) and withdraw (``Withdraw`` and
``RequestWithdrawal``: the debited account, account 1's fee sweeps included;
a request's ``withdraw_hold``, ``withdraw`` and ``withdraw_release``
transfers all carry its ref).  PostgreSQL enforces the same with the partial
unique indexes of migration 0003, which restate ``REF_KEYS`` (PostgreSQL
cannot import Python; tests/settlement/test_refs.py checks, kind by kind and
bucket by bucket, that they agree).  An adjust's ref is its reason, never a
key.  Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.ledger import (AVAILABLE, KIND_DEPOSIT, KIND_WITHDRAW, KIND_WITHDRAW_HOLD,
                           KIND_WITHDRAW_RELEASE, LOCKED)

__all__ = ["RefKey", "REF_KEYS", "REF_KEY_BY_INDEX", "REF_KINDS"]


@dataclass(frozen=True)
class RefKey:
    """One unique index: the transfers it covers and the key it makes unique.

    ``covers``: (kind, source bucket) pairs, ``None`` for either bucket;
    ``account``: whose ref it is, the ``"source"`` or the ``"target"``
    account; ``by_kind``: the kind is part of the key."""
    index: str
    covers: tuple[tuple[str, str | None], ...]
    account: str
    by_kind: bool
    meaning: str

    def applies(self, kind: str, source_bucket: str, ref: str) -> bool:
        return ref != "" and any(kind == k and bucket in (None, source_bucket)
                                 for k, bucket in self.covers)

    def key(self, kind: str, source_account: int, source_bucket: str, target_account: int,
            asset_id: int, ref: str) -> tuple | None:
        """The key of a transfer, or None when this index does not cover it."""
        if not self.applies(kind, source_bucket, ref):
            return None
        account = source_account if self.account == "source" else target_account
        return (kind if self.by_kind else None, account, asset_id, ref)


REF_KEYS = (
    RefKey("transfers_deposit_ref_key", ((KIND_DEPOSIT, None),), "target", False,
           "a deposit ref is used once per (account, asset)"),
    RefKey("transfers_withdraw_ref_key",
           ((KIND_WITHDRAW, None), (KIND_WITHDRAW_HOLD, None), (KIND_WITHDRAW_RELEASE, None)),
           "source", True, "a withdrawal ref is used once per (kind, account, asset)"),
    RefKey("transfers_withdrawal_start_ref_key",
           ((KIND_WITHDRAW_HOLD, None), (KIND_WITHDRAW, AVAILABLE)), "source", False,
           "a withdrawal ref starts one withdrawal per (account, asset): one hold or one "
           "immediate withdraw"),
    RefKey("transfers_withdrawal_end_ref_key",
           ((KIND_WITHDRAW_RELEASE, None), (KIND_WITHDRAW, LOCKED)), "source", False,
           "a held withdrawal ends once per (account, asset): approved or rejected, not both"),
)
REF_KEY_BY_INDEX = {k.index: k for k in REF_KEYS}
# a transfer of one of these kinds with a non-empty ref is covered by some index
REF_KINDS = frozenset(kind for k in REF_KEYS for kind, _ in k.covers)
