"""The gateway wire protocol: frames, the messages in them, and error reasons.

A frame is a 4-byte little-endian body length, then a msgpack body: one tagged
``msgspec.Struct`` (the tag is the class name, encoded as the first element of
an array, as ``engine.messages`` does).  Commands and events inside requests
and replies are the engine's own structs, so one codec serves the engine, the
journal, the wire and the tests.  This module owns the shapes and the framing;
it never reads a socket and never touches the engine.
"""
from __future__ import annotations

import msgspec

from ..domain import INT64_MAX, Asset, Instrument
from ..messages import Command, Event, PendingAdjustment, PendingWithdrawal

PROTOCOL_VERSION = 1
HEADER_BYTES = 4
FRAME_BYTES_MAX_DEFAULT = 64 * 1024
REQUEST_ID_MAX = INT64_MAX        # request ids are BIGINT-sized, like every id
DEPTH_LEVELS_MAX = 10_000         # levels a side: the bound of server.market_data_depth_max

# ---- error reasons (stable strings; clients may match on them)
# request level: the request is refused, nothing is journaled, the session carries on
ERR_NOT_PERMITTED = "not_permitted"              # the session's role may not send this
ERR_ACCOUNT_NOT_PERMITTED = "account_not_permitted"  # an account outside the session's accounts
ERR_STALE_REQUEST_ID = "stale_request_id"        # not above the last one, and not a resend we remember
ERR_INVALID_REQUEST_ID = "invalid_request_id"    # not an int in 1..2**63-1
ERR_UNKNOWN_SYMBOL = "unknown_symbol"            # a query for a symbol the engine does not list
ERR_REQUEST_ID_REUSED = "request_id_reused"      # a remembered request id with another command
ERR_JOURNAL_WRITE_FAILED = "journal_write_failed"  # not journaled (disk full, I/O): not applied
ERR_OUTCOME_UNKNOWN = "outcome_unknown"          # the journal broke mid-write: resend after restart
ERR_BAD_DEPTH = "bad_depth"                      # a subscription depth not an int in 1..the maximum
ERR_SUPERSEDED = "superseded"                    # a Subscribe replaced (same symbol) before its snapshot
# connection level: an Error frame, then the connection is closed
ERR_HELLO_REQUIRED = "hello_required"            # the first frame was not a Hello (or a second Hello)
ERR_BAD_TOKEN = "bad_token"
ERR_BAD_VERSION = "bad_version"
ERR_BAD_GATEWAY_ID = "bad_gateway_id"            # empty, too long, or not the one the token is bound to
ERR_MALFORMED = "malformed_frame"                # not msgpack, an unknown tag, wrong field types
ERR_FRAME_TOO_LARGE = "frame_too_large"
ERR_SLOW_READER = "slow_reader"                  # replies (or market data, for too long) not read
ERR_TOO_MANY_CONNECTIONS = "too_many_connections"
ERR_TOO_MANY_GATEWAYS = "too_many_gateways"     # the server keeps state for a bounded number

GATEWAY_ID_MAX = 64     # characters
# MarketDataResync reasons
RESYNC_SLOW_READER = "slow_reader"   # the server stopped sending: a snapshot follows once read
RESYNC_GAP = "gap"                   # (client side) a sequence gap: a fresh snapshot was asked for
RESYNC_CLIENT_QUEUE_FULL = "client_queue_full"  # (client side) unread messages were dropped


class _Wire(msgspec.Struct, tag=True, array_like=True, frozen=True, gc=False):
    """Base of every frame body."""


# ---------------------------------------------------------------- gateway -> server
class Hello(_Wire):
    """The first frame of a session.  ``last_report_seq``: the last execution
    report this gateway has processed (0: none); the server resends the later
    ones it still holds."""
    gateway_id: str
    token: str
    version: int
    last_report_seq: int = 0
    cancel_on_disconnect: bool = False    # cancel this gateway's open orders when the connection drops


class Request(_Wire):
    """One engine command.  ``request_id`` must be above every earlier one of
    the gateway, or be a resend of one the server remembers."""
    request_id: int
    command: Command


class QueryBalances(_Wire):
    request_id: int
    account: int


class QueryOpenOrders(_Wire):
    request_id: int
    account: int


class QueryOrder(_Wire):
    request_id: int
    order_id: int


class QueryDepth(_Wire):
    request_id: int
    symbol: str
    levels: int = 10


class QueryMarkets(_Wire):
    request_id: int


class QueryPending(_Wire):
    """Withdrawals waiting for approval (of ``account``, or of every account
    the session may act for) and, for an admin session, adjustments waiting
    for a second admin."""
    request_id: int
    account: int | None = None


class Subscribe(_Wire):
    """Market data for ``symbol``: a ``BookSnapshot`` (answering this
    request id) of up to ``depth`` levels a side, then ``BookUpdate``s.
    Subscribing again replaces the subscription (and sends a fresh snapshot);
    a Subscribe replaced before its snapshot was sent is answered
    ``superseded``.  ``depth`` is any scalar here and checked by the server
    (an int in 1..the configured maximum), so a wrong one is a ``bad_depth``
    error, not a closed connection; only a non-scalar (an array, a map,
    bytes) is a malformed frame (no nesting: nothing to recurse into)."""
    request_id: int
    symbol: str
    depth: int | float | str | bool | None = 20


class Unsubscribe(_Wire):
    """Stop the market data of ``symbol``; answered by ``Unsubscribed``
    (also when there was no subscription), after which none is sent.  A
    Subscribe of the symbol still unanswered is answered ``superseded``."""
    request_id: int
    symbol: str


class Bye(_Wire):
    """A clean close: the server closes the connection after replying to
    everything sent before it; frames sent after it are dropped unread.
    ``keep_orders``: a session that asked for cancel-on-disconnect keeps its
    open orders (otherwise a Bye cancels them too, as a dropped connection
    does)."""
    keep_orders: bool = False


Query = QueryBalances | QueryOpenOrders | QueryOrder | QueryDepth | QueryMarkets | QueryPending
ClientMessage = Hello | Request | QueryBalances | QueryOpenOrders | QueryOrder | QueryDepth \
    | QueryMarkets | QueryPending | Subscribe | Unsubscribe | Bye


# ---------------------------------------------------------------- server -> gateway
class Welcome(_Wire):
    """The answer to a good Hello.  ``last_request_id``: the highest request
    id the server has seen from this gateway (start above it).
    ``reports_lost``: reports after the gateway's ``last_report_seq`` were
    dropped (retention bound): rebuild state from the queries."""
    version: int
    seq: int
    last_request_id: int
    report_seq: int
    reports_lost: bool
    assets: list[Asset]
    instruments: list[Instrument]


class Reply(_Wire):
    """The engine's events for one request's command (a reject is a
    ``Rejected`` event in them)."""
    request_id: int
    seq: int
    events: list[Event]


class Report(_Wire):
    """Events of another command that touched this gateway's resting orders,
    numbered per gateway."""
    report_seq: int
    seq: int
    events: list[Event]


class Error(_Wire):
    """A refused request (``request_id`` > 0) or, with ``request_id`` 0, a
    protocol error after which the server closes the connection."""
    request_id: int
    reason: str
    detail: str = ""


class Balance(msgspec.Struct, array_like=True, frozen=True, gc=False):
    asset: str
    available: int
    locked: int


class BalancesReply(_Wire):
    request_id: int
    account: int
    balances: list[Balance]


class OrderInfo(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An open order: ``status`` "resting" or "stop"; prices in ticks, qty in lots."""
    order_id: int
    status: str
    account: int
    symbol: str
    side: str
    type: str
    tif: str
    price: int | None
    qty: int
    stop_price: int | None
    client_order_id: str
    reserved: int


class OrdersReply(_Wire):
    request_id: int
    orders: list[OrderInfo]


class DepthReply(_Wire):
    """Levels best first: (price ticks, total qty lots)."""
    request_id: int
    symbol: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class MarketsReply(_Wire):
    request_id: int
    assets: list[Asset]
    instruments: list[Instrument]


# ---------------------------------------------------------------- market data
class PublicTrade(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """A trade as the market sees it: no accounts, no order ids, no fees."""
    trade_id: int
    price: int          # ticks
    qty: int            # lots
    taker_side: str     # "buy" | "sell"


class BookSnapshot(_Wire):
    """The whole view of a subscription: up to its depth of levels a side,
    best first, as (price ticks, total qty lots), at market-data ``seq`` of
    the symbol.  ``request_id``: the Subscribe it answers (0: a fresh
    snapshot after a resync)."""
    request_id: int
    symbol: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]
    halted: bool


class BookUpdate(_Wire):
    """One loop turn's changes to a subscription's view, at ``seq`` (the
    previous message's seq + 1): per changed level its new total (0: the
    level left the view), the turn's public trades in order (never
    conflated), and whether the symbol is halted."""
    symbol: str
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]
    trades: list[PublicTrade]
    halted: bool


class MarketDataResync(_Wire):
    """The server stopped sending this symbol's market data to a slow reader
    (``reason``): drop the local book; a ``BookSnapshot`` follows once the
    connection's buffer drains."""
    symbol: str
    reason: str


class Unsubscribed(_Wire):
    request_id: int
    symbol: str


class PendingReply(_Wire):
    request_id: int
    withdrawals: list[PendingWithdrawal]
    adjustments: list[PendingAdjustment]


ServerMessage = Welcome | Reply | Report | Error | BalancesReply | OrdersReply | DepthReply \
    | MarketsReply | PendingReply | BookSnapshot | BookUpdate | MarketDataResync | Unsubscribed


# ---------------------------------------------------------------- framing
_encoder = msgspec.msgpack.Encoder()
_client_decoder = msgspec.msgpack.Decoder(ClientMessage)
_server_decoder = msgspec.msgpack.Decoder(ServerMessage)
decode_client = _client_decoder.decode
decode_server = _server_decoder.decode


def encode_frame(message) -> bytes:
    """One frame: the length header, then the msgpack body."""
    body = _encoder.encode(message)
    return len(body).to_bytes(HEADER_BYTES, "little") + body


def encode_frames(messages) -> bytes:
    """Several frames in one buffer (one write)."""
    out = bytearray()
    for message in messages:
        body = _encoder.encode(message)
        out += len(body).to_bytes(HEADER_BYTES, "little")
        out += body
    return bytes(out)


class FrameTooLarge(ValueError):
    pass


class FrameReader:
    """Accumulates received bytes and cuts them into frame bodies."""
    __slots__ = ("buffer", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT):
        self.buffer = bytearray()
        self.frame_bytes_max = frame_bytes_max

    def feed(self, data: bytes) -> list[bytes]:
        """The complete frame bodies now buffered; FrameTooLarge for a length
        past the limit (the rest of the stream cannot be trusted then)."""
        buf = self.buffer
        buf += data
        bodies = []
        pos, end = 0, len(buf)
        limit = self.frame_bytes_max
        while end - pos >= HEADER_BYTES:
            size = int.from_bytes(buf[pos:pos + HEADER_BYTES], "little")
            if size > limit:
                raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {limit}")
            if end - pos - HEADER_BYTES < size:
                break
            start = pos + HEADER_BYTES
            bodies.append(bytes(buf[start:start + size]))
            pos = start + size
        if pos:
            del buf[:pos]
        return bodies
