"""Market data: who subscribes to which symbol at which depth, the last view
each of them was sent, and each loop turn's conflated updates.

The server calls ``note(command, events)`` after each command it applies
(only while ``active``: with no subscriber market data costs nothing), then
``publish()`` once at the end of the turn, which diffs the book against the
last published view and returns the frames to send and to whom.  Per symbol
one sequence number counts the published states: a snapshot carries the seq
of the state it shows, every update the next one, the same seq for every
subscriber of the symbol.

Views are kept per distinct subscribed depth (a *group*): a subscriber at
depth N is sent the diff of the top N levels, so a level that enters the top
N when another leaves it is in the update (and a level that falls out of the
top N is sent with total 0: gone from that view, maybe not from the book).
Every subscriber of a group gets the same bytes, encoded once.  A turn with
changes in a deeper group only still sends the other groups an empty update,
so each subscriber's seqs stay contiguous.

No I/O here: the server owns sockets and slow readers; this module owns
which frames exist.  It never changes the engine and is not journaled: seqs
start afresh when the server starts (a new subscription always begins with
a snapshot).
"""
from __future__ import annotations

from ..messages import (Accepted, Cancelled, Halt, Halted, PlaceOrder, Replaced, Resume, Resumed,
                        Trade, Triggered)
from . import protocol as P

DEPTH_MAX_DEFAULT = 1000


class _Group:
    """The subscribers of one (symbol, depth) and the view they were last sent."""
    __slots__ = ("depth", "bids", "asks", "subscribers")

    def __init__(self, depth: int, bids, asks):
        self.depth = depth
        self.bids = bids        # [(price_ticks, qty_lots)] best first, at most depth
        self.asks = asks
        self.subscribers: dict = {}     # subscriber key -> None (an ordered set)


class _Feed:
    """One symbol with at least one subscriber."""
    __slots__ = ("symbol", "seq", "groups", "depth_max", "halted", "trades", "dirty")

    def __init__(self, symbol: str, seq: int, halted: bool):
        self.symbol = symbol
        self.seq = seq
        self.groups: dict[int, _Group] = {}
        self.depth_max = 0
        self.halted = halted
        self.trades: list = []      # this turn's Trade events, in order
        self.dirty = False


class MarketData:
    """See the module docstring.  Subscriber keys are opaque hashables (the
    server's connections)."""

    def __init__(self, engine, *, depth_max: int = DEPTH_MAX_DEFAULT):
        self.engine = engine
        self.depth_max = depth_max
        self.feeds: dict[str, _Feed] = {}           # symbols with subscribers
        self.subscriptions: dict = {}               # key -> {symbol: depth}
        self._seqs: dict[str, int] = {}             # last seq of symbols nobody subscribes to now
        self._dirty: list[_Feed] = []
        self._all_dirty = False

    @property
    def active(self) -> bool:
        return bool(self.feeds)

    # ------------------------------------------------------------------ subscriptions
    def check(self, symbol, depth):
        """(reason, detail) when a subscription to ``symbol`` at ``depth``
        cannot be made, else None."""
        if type(depth) is not int or not 1 <= depth <= self.depth_max:
            return P.ERR_BAD_DEPTH, f"depth must be an int in 1..{self.depth_max}, not {depth!r}"[:200]
        try:
            self.engine.market(symbol)
        except (KeyError, TypeError):
            return P.ERR_UNKNOWN_SYMBOL, repr(symbol)[:200]
        return None

    def subscribe(self, key, symbol: str, depth: int, request_id: int = 0) -> bytes:
        """Subscribe ``key`` (replacing a subscription it has to ``symbol``);
        the snapshot frame to send it.  Call between ``publish()`` and the
        next command, when every published view is the engine's state."""
        assert self.check(symbol, depth) is None, (symbol, depth)
        self.unsubscribe(key, symbol)
        feed = self.feeds.get(symbol)
        if feed is None:
            # a new stream for the symbol: the book may have changed while
            # nobody watched, so its state gets a seq of its own
            feed = self.feeds[symbol] = _Feed(symbol, self._seqs.pop(symbol, 0) + 1,
                                              self.engine.market(symbol).halted)
        group = feed.groups.get(depth)
        if group is None:
            group = feed.groups[depth] = _Group(depth, *self.engine.depth(symbol, depth))
            if depth > feed.depth_max:
                feed.depth_max = depth
        group.subscribers[key] = None
        self.subscriptions.setdefault(key, {})[symbol] = depth
        return self._snapshot(feed, group, request_id)

    def unsubscribe(self, key, symbol) -> bool:
        """Whether ``key`` was subscribed to ``symbol``; no market data of
        that symbol is published to it afterwards."""
        subs = self.subscriptions.get(key)
        if not subs or symbol not in subs:
            return False
        depth = subs.pop(symbol)
        if not subs:
            del self.subscriptions[key]
        feed = self.feeds[symbol]
        group = feed.groups[depth]
        del group.subscribers[key]
        if not group.subscribers:
            del feed.groups[depth]
            if not feed.groups:
                del self.feeds[symbol]
                self._seqs[symbol] = feed.seq
                feed.trades = []
            elif depth == feed.depth_max:
                feed.depth_max = max(feed.groups)
        return True

    def drop(self, key) -> None:
        """Every subscription of ``key`` (a closed connection)."""
        for symbol in list(self.subscriptions.get(key, ())):
            self.unsubscribe(key, symbol)

    def snapshot(self, key, symbol: str, request_id: int = 0) -> bytes:
        """A fresh snapshot frame of ``key``'s subscription to ``symbol``
        (after a resync).  Between turns only, like ``subscribe``."""
        feed = self.feeds[symbol]
        return self._snapshot(feed, feed.groups[self.subscriptions[key][symbol]], request_id)

    @staticmethod
    def _snapshot(feed: _Feed, group: _Group, request_id: int) -> bytes:
        return P.encode_frame(P.BookSnapshot(request_id, feed.symbol, feed.seq, list(group.bids),
                                             list(group.asks), feed.halted))

    # ------------------------------------------------------------------ the turn
    def note(self, command, events) -> None:
        """After one command is applied: the symbols whose books it may have
        changed, and its trades.  An order's events are all in its symbol; a
        cancel or an amend names an order, not a symbol, so it marks every
        subscribed symbol (diffing one that did not change is cheap; looking
        the order up per command is not)."""
        t = type(command)
        if t is PlaceOrder or t is Halt or t is Resume:
            feed = self.feeds.get(command.symbol)
            if feed is None:
                return
            if not feed.dirty:
                feed.dirty = True
                self._dirty.append(feed)
            if t is PlaceOrder:
                trades = feed.trades
                for e in events:
                    if type(e) is Trade:
                        trades.append(e)
            return
        feeds = self.feeds
        for e in events:
            t = type(e)
            if t is Trade:
                feed = feeds.get(e.symbol)
                if feed is not None:
                    feed.trades.append(e)
                    if not feed.dirty:
                        feed.dirty = True
                        self._dirty.append(feed)
            elif t is Cancelled or t is Replaced or t is Triggered:
                self._all_dirty = True
            elif t is Accepted or t is Halted or t is Resumed:
                feed = feeds.get(e.symbol)
                if feed is not None and not feed.dirty:
                    feed.dirty = True
                    self._dirty.append(feed)

    def publish(self) -> list[tuple[bytes, list]]:
        """The turn's updates: [(frame, [subscriber keys])], one per group
        of every symbol that changed; the published views advance."""
        if self._all_dirty:
            self._all_dirty = False
            for feed in self.feeds.values():
                if not feed.dirty:
                    feed.dirty = True
                    self._dirty.append(feed)
        dirty, self._dirty = self._dirty, []
        out = []
        for feed in dirty:
            feed.dirty = False
            if not feed.groups:             # unsubscribed during the turn
                continue
            symbol = feed.symbol
            bids, asks = self.engine.depth(symbol, feed.depth_max)
            halted = self.engine.market(symbol).halted
            changes = []
            changed = False
            for group in feed.groups.values():
                d = group.depth
                new_bids = bids if len(bids) <= d else bids[:d]
                new_asks = asks if len(asks) <= d else asks[:d]
                bid_changes = _diff(group.bids, new_bids, True)
                ask_changes = _diff(group.asks, new_asks, False)
                changes.append((group, new_bids, new_asks, bid_changes, ask_changes))
                changed = changed or bool(bid_changes or ask_changes)
            trades = feed.trades
            if not (changed or trades or halted != feed.halted):
                continue
            feed.seq += 1
            feed.halted = halted
            public = [P.PublicTrade(t.trade_id, t.price, t.qty, t.taker_side) for t in trades]
            feed.trades = []
            for group, new_bids, new_asks, bid_changes, ask_changes in changes:
                group.bids, group.asks = new_bids, new_asks
                out.append((P.encode_frame(P.BookUpdate(symbol, feed.seq, bid_changes, ask_changes,
                                                        public, halted)),
                            list(group.subscribers)))
        return out


def _diff(old: list, new: list, descending: bool) -> list:
    """The levels of ``new`` whose total differs from ``old``'s, and ``old``'s
    levels missing from ``new`` at 0; best first."""
    if old == new:
        return []
    before = dict(old)
    after = dict(new)
    out = [(price, qty) for price, qty in new if before.get(price) != qty]
    out.extend((price, 0) for price in before if price not in after)
    out.sort(reverse=descending)
    return out
