"""Hand-built engine event streams, for events the engine does not emit yet
(or cannot be made to emit on purpose): a small model that books transfers
with the post-transfer balances an engine reports, and answers what
``settlement.reconcile.compare`` asks of an engine (``seq``, ``assets``,
``accounts()``, ``balance()``).  It checks nothing: a test may build a stream
the engine never would, to see the ledger refuse it."""
from __future__ import annotations

from engine import Asset
from engine.ledger import AVAILABLE, BUCKETS, KIND_DEPOSIT, SYSTEM_OUTSIDE
from engine.messages import Transfer

ASSETS = [Asset("BTC", 8), Asset("USDT", 6)]


class Books:
    def __init__(self, assets=ASSETS):
        self.assets = list(assets)
        self.seq = 0
        self.commands: list[list] = []
        self._balances: dict[tuple[int, str], list[int]] = {}

    # ---- what reconcile asks of an engine
    def accounts(self) -> list[int]:
        return sorted({account for account, _ in self._balances})

    def balance(self, account: int, asset: str) -> tuple[int, int]:
        return tuple(self._balances.get((account, asset), (0, 0)))

    # ---- building a stream
    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def transfer(self, seq: int, asset: str, amount: int, source: tuple[int, str],
                 target: tuple[int, str], kind: str, **fields) -> Transfer:
        """One Transfer of ``amount`` from (account, bucket) to (account, bucket)."""
        src = self._balances.setdefault((source[0], asset), [0, 0])
        src[BUCKETS.index(source[1])] -= amount
        source_balance = src[BUCKETS.index(source[1])]
        tgt = self._balances.setdefault((target[0], asset), [0, 0])
        tgt[BUCKETS.index(target[1])] += amount
        return Transfer(seq, asset, amount, source[0], source[1], target[0], target[1], kind,
                        source_balance=source_balance,
                        target_balance=tgt[BUCKETS.index(target[1])], **fields)

    def command(self, build) -> list:
        """``build(seq)`` -> the command's events; recorded and returned."""
        events = build(self.next_seq())
        self.commands.append(events)
        return events

    def deposit(self, account: int, asset: str, amount: int, ref: str = "") -> list:
        return self.command(lambda seq: [self.transfer(
            seq, asset, amount, (SYSTEM_OUTSIDE, AVAILABLE), (account, AVAILABLE), KIND_DEPOSIT,
            ref=ref)])
