"""The server's configuration: one TOML file, decoded into Structs, then checked.

``load_config(path)`` is the way in.  The file is decoded straight into the
Structs below (``msgspec.toml``, unknown keys refused), then checked as a
whole: tokens, accounts, cross-limits, and the assets and instruments are
loaded into a throwaway ``engine.Engine`` so that anything the engine would
refuse is refused here, at load, naming the instrument.  Every mistake is a
``ConfigError`` whose message is one line: the file, the key
(``server.sessions[1].role``, ``instruments[0].price_tick``) and what is
wrong.  A token is never echoed in a message or a repr.

``[[assets]]``, ``[[instruments]]`` and ``[[tiers]]`` are the engine's own
``Asset``, ``Instrument`` and ``AccountTier`` (subclassed only to refuse
unknown keys): one definition of their fields and checks.  ``Config.config_hash()`` digests the part that
shapes engine state, so a snapshot taken under another configuration can be
recognised.

This module reads one file and the environment (``token_env``); it never
starts anything: no socket, no journal, no database.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

import engine
from engine.core import DEFAULT_MAX_OPEN_ORDERS, DEFAULT_TIER
from engine.domain import INT64_MAX, AccountTier, Asset, Instrument
from engine.ledger import FIRST_USER_ACCOUNT
from engine.service.protocol import DEPTH_LEVELS_MAX, GATEWAY_ID_MAX
from engine.service.journal import RECORD_BYTES_MAX

__all__ = ["ConfigError", "load_config", "Config", "ServerConfig", "SessionConfig",
           "JournalConfig", "DatabaseConfig", "EngineConfig", "AssetConfig",
           "InstrumentConfig", "TierConfig", "ROLES", "FSYNC_POLICIES", "CONFIG_BYTES_MAX"]

Role = Literal["trading", "treasury", "admin"]
FsyncPolicy = Literal["always", "batch", "off"]
BookChoice = Literal["auto", "python", "cython"]
ROLES: tuple[str, ...] = typing.get_args(Role)
FSYNC_POLICIES: tuple[str, ...] = typing.get_args(FsyncPolicy)

CONFIG_BYTES_MAX = 16 * 1024 * 1024      # a config file larger than this is refused unread
NAME_CHARS_MAX = 64                      # asset names, symbols, environment variable names
# a request's command must fit one journal record, beside the record's own fields
FRAME_BYTES_MAX_LIMIT = RECORD_BYTES_MAX // 2
_CONFIG_HASH_VERSION = b"exchange-config-hash/1\n"


class ConfigError(Exception):
    """A mistake in the configuration: ``file``, ``key`` (a dotted path, or
    "" for the file as a whole) and ``problem``; ``str()`` is one line."""

    def __init__(self, file, key: str, problem: str):
        self.file = str(file)
        self.key = key
        self.problem = _one_line(problem)
        super().__init__(f"{self.file}: {key}: {self.problem}" if key
                         else f"{self.file}: {self.problem}")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


# ================================================================ the Structs
class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class SessionConfig(_Section):
    """One gateway credential.  Exactly one of ``token`` / ``token_env``;
    after load ``token`` always holds the token (read from the environment
    variable ``token_env`` names).  ``accounts``: the user accounts this
    session may act for (None: all).  ``gateway_id``: when given, the
    hello's gateway_id must equal it.  ``name``: who this session is in the
    audit trail; when given, the ``admin`` field of every command it sends
    must be this name (so a second admin's approval is a second session's)."""
    role: Role
    token: str | None = None
    token_env: str | None = None
    accounts: frozenset[int] | None = None
    gateway_id: str | None = None
    name: str | None = None

    def may_act_for(self, account: int) -> bool:
        return self.accounts is None or account in self.accounts

    def __repr__(self) -> str:
        return (f"SessionConfig(role={self.role!r}, token=<hidden>, token_env={self.token_env!r}, "
                f"accounts={self.accounts!r}, gateway_id={self.gateway_id!r}, name={self.name!r})")


class ServerConfig(_Section):
    host: str = "127.0.0.1"          # loopback unless said otherwise
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 7001      # 0: any free port
    frame_bytes_max: Annotated[int, msgspec.Meta(ge=256, le=FRAME_BYTES_MAX_LIMIT)] = 65536
    outbound_bytes_max: Annotated[int, msgspec.Meta(ge=256)] = 8 * 1024 * 1024   # per connection
    # reports kept per gateway until a hello acknowledges them
    report_retention_max: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    request_window: Annotated[int, msgspec.Meta(ge=1)] = 10_000   # replies kept per gateway
    # the server's Clock commands: while commands flow at least this often, and at
    # every UTC midnight; 0: never (the engine's time stays where the journal has it)
    clock_interval_ms: Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] = 1000
    # market data is sent to a connection only while its unsent bytes are below this
    market_data_buffer_bytes_max: Annotated[int, msgspec.Meta(ge=4096)] = 1024 * 1024
    # levels a side, of a subscription and of a depth query
    market_data_depth_max: Annotated[int, msgspec.Meta(ge=1, le=DEPTH_LEVELS_MAX)] = 1000
    # a subscriber still over the market-data limit this long after its resync is disconnected
    market_data_stall_ms_max: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    # under load, market data is written to a connection at most once per interval (0: every turn)
    market_data_flush_interval_ms: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 10
    sessions: tuple[SessionConfig, ...] = ()


class JournalConfig(_Section):
    dir: str = "var/journal"         # relative: to the config file's folder; absolute after load
    fsync: FsyncPolicy = "always"
    fsync_interval_ms: Annotated[int, msgspec.Meta(ge=1)] = 5     # "batch": at most this late
    snapshot_every: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000    # commands between snapshots
    segment_bytes_max: Annotated[int, msgspec.Meta(ge=4096)] = 64 * 1024 * 1024


class DatabaseConfig(_Section):
    """``url`` None: ``DATABASE_URL``, else the embedded PostgreSQL
    (``settlement.database.database_url()``).  ``enabled`` false: journal
    only, no settlement."""
    url: str | None = None
    enabled: bool = True
    batch_events_max: Annotated[int, msgspec.Meta(ge=1)] = 10_000      # events per transaction
    queue_events_max: Annotated[int, msgspec.Meta(ge=1)] = 100_000     # waiting: intake slows
    flush_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=60_000)] = 20   # a batch's longest wait


class EngineConfig(_Section):
    max_open_orders: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] = DEFAULT_MAX_OPEN_ORDERS
    book: BookChoice = "auto"
    default_tier: str = DEFAULT_TIER            # the tier of an account never given one
    # {asset: minor units}: an Adjust moving more than this waits for a second admin
    adjustment_approval_threshold: dict[str, int] = msgspec.field(default_factory=dict)


class AssetConfig(Asset, frozen=True, forbid_unknown_fields=True):
    """``engine.Asset`` as written in ``[[assets]]``."""


class InstrumentConfig(Instrument, frozen=True, forbid_unknown_fields=True):
    """``engine.Instrument`` as written in ``[[instruments]]``."""


class TierConfig(AccountTier, frozen=True, forbid_unknown_fields=True):
    """``engine.AccountTier`` as written in ``[[tiers]]``."""


class Config(_Section):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    assets: tuple[AssetConfig, ...] = ()
    instruments: tuple[InstrumentConfig, ...] = ()
    tiers: tuple[TierConfig, ...] = ()

    def engine_assets(self) -> list[Asset]:
        return [Asset(**msgspec.structs.asdict(a)) for a in self.assets]

    def engine_instruments(self) -> list[Instrument]:
        return [Instrument(**msgspec.structs.asdict(i)) for i in self.instruments]

    def engine_tiers(self) -> list[AccountTier] | None:
        """The ``[[tiers]]`` as ``engine.AccountTier`` (None: none given, the
        engine's one implicit tier)."""
        return [AccountTier(**msgspec.structs.asdict(t)) for t in self.tiers] or None

    def new_engine(self, *, book: str | None = None):
        """A fresh ``engine.Engine`` for this configuration."""
        return engine.Engine(self.engine_assets(), self.engine_instruments(),
                             book=self.engine.book if book is None else book,
                             max_open_orders=self.engine.max_open_orders,
                             tiers=self.engine_tiers(), default_tier=self.engine.default_tier,
                             adjustment_approval_threshold=self.engine.adjustment_approval_threshold)

    def config_hash(self) -> str:
        """Hex SHA-256 of what shapes engine state: the assets and instruments
        (in order: order is index) with every default filled in,
        max_open_orders, the tiers, the default tier and the adjustment
        approval thresholds.  Not the book choice: both books behave the same."""
        doc = {"assets": self.engine_assets(), "instruments": self.engine_instruments(),
               "max_open_orders": self.engine.max_open_orders}
        if self.tiers or self.engine.default_tier != DEFAULT_TIER \
                or self.engine.adjustment_approval_threshold:
            # only when used: a configuration without them keeps its old hash (and snapshots)
            doc["tiers"] = self.engine_tiers()
            doc["default_tier"] = self.engine.default_tier
            doc["adjustment_approval_threshold"] = sorted(
                self.engine.adjustment_approval_threshold.items())
        return hashlib.sha256(_CONFIG_HASH_VERSION + msgspec.json.encode(doc)).hexdigest()


# ================================================================ loading
def load_config(path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, decode and check the TOML file at ``path``; ``environ`` (default
    ``os.environ``) resolves ``token_env``.  Raises ConfigError, only."""
    path = Path(path)
    file = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_BYTES_MAX + 1)
    except OSError as e:
        raise ConfigError(file, "", f"cannot read: {e.strerror or e}") from None
    if len(data) > CONFIG_BYTES_MAX:
        raise ConfigError(file, "", f"larger than {CONFIG_BYTES_MAX} bytes")
    try:
        config = msgspec.toml.decode(data, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(file, *_explain(str(e))) from None
    except msgspec.DecodeError as e:
        raise ConfigError(file, "", f"invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(file, "", "invalid TOML: nested too deeply") from None
    return _Checker(file, path.resolve().parent, os.environ if environ is None else environ
                    ).check(config)


class _Checker:
    """The checks a type cannot say; returns the config with tokens and the
    journal folder resolved."""

    def __init__(self, file: str, folder: Path, environ: Mapping[str, str]):
        self.file = file
        self.folder = folder
        self.environ = environ

    def fail(self, key: str, problem: str):
        raise ConfigError(self.file, key, problem)

    def name(self, key: str, value: str, what: str = "name", chars_max: int = NAME_CHARS_MAX):
        """Names travel on the wire and into PostgreSQL: printable, no spaces, bounded."""
        if not value:
            self.fail(key, f"empty {what}")
        if len(value) > chars_max:
            self.fail(key, f"{what} longer than {chars_max} characters")
        if not value.isprintable() or any(c.isspace() for c in value):
            self.fail(key, f"{what} {value!r} has spaces or control characters")

    def once(self, first_at: dict, section: str, i: int, field: str, value: str, what: str):
        """``section[i].field`` names a ``what`` no earlier entry of the section named."""
        j = first_at.setdefault(value, i)
        if j != i:
            self.fail(f"{section}[{i}].{field}", f"{what} {value!r} already defined at "
                      f"{section}[{j}]")

    def check(self, config: Config) -> Config:
        server = self.server(config.server)
        journal = self.journal(config.journal, server)
        self.database(config.database)
        self.assets(config.assets)
        self.instruments(config)
        self.tiers(config)
        self.engine(config)
        return msgspec.structs.replace(config, server=server, journal=journal)

    # ---- [server]
    def server(self, server: ServerConfig) -> ServerConfig:
        if not server.host or not server.host.isprintable() or any(c.isspace() for c in server.host):
            self.fail("server.host", f"not a host name or address: {server.host!r}")
        if server.outbound_bytes_max < server.frame_bytes_max:
            self.fail("server.outbound_bytes_max", f"{server.outbound_bytes_max} is less than "
                      f"server.frame_bytes_max ({server.frame_bytes_max}): one frame must fit")
        if server.market_data_buffer_bytes_max >= server.outbound_bytes_max:
            self.fail("server.market_data_buffer_bytes_max",
                      f"{server.market_data_buffer_bytes_max} is not below "
                      f"server.outbound_bytes_max ({server.outbound_bytes_max}): market data "
                      "must stop before replies are dropped")
        if not server.sessions:
            self.fail("server.sessions", "no sessions: add at least one [[server.sessions]] "
                      "with a token and a role")
        sessions = tuple(self.session(f"server.sessions[{i}]", s)
                         for i, s in enumerate(server.sessions))
        first_with: dict[str, int] = {}
        for i, s in enumerate(sessions):
            j = first_with.setdefault(s.token, i)
            if j != i:
                self.fail(f"server.sessions[{i}]." + ("token" if s.token_env is None else "token_env"),
                          f"the same token as server.sessions[{j}]: each session needs its own")
        return msgspec.structs.replace(server, sessions=sessions)

    def session(self, key: str, s: SessionConfig) -> SessionConfig:
        if (s.token is None) == (s.token_env is None):
            self.fail(key, "give exactly one of token and token_env")
        token = s.token
        if s.token_env is not None:
            self.name(f"{key}.token_env", s.token_env, "environment variable name")
            token = self.environ.get(s.token_env)
            if token is None:
                self.fail(f"{key}.token_env", f"environment variable {s.token_env} is not set")
        where = f"{key}.token" if s.token_env is None else f"{key}.token_env"
        source = "the token" if s.token_env is None else f"the token in {s.token_env}"
        if not token:
            self.fail(where, f"{source} is empty")
        if not token.isprintable() or any(c.isspace() for c in token):
            self.fail(where, f"{source} has spaces or control characters")
        if s.accounts is not None:
            if not s.accounts:
                self.fail(f"{key}.accounts", "empty: omit it to allow every account")
            for a in sorted(s.accounts):
                if a < FIRST_USER_ACCOUNT:
                    self.fail(f"{key}.accounts", f"{a} is a system account "
                              f"(user accounts start at {FIRST_USER_ACCOUNT})")
                if a > INT64_MAX:
                    self.fail(f"{key}.accounts", f"{a} is larger than 2**63-1")
        if s.gateway_id is not None:
            self.name(f"{key}.gateway_id", s.gateway_id, "gateway id", GATEWAY_ID_MAX)
        if s.name is not None:
            self.name(f"{key}.name", s.name, "session name")
        return msgspec.structs.replace(s, token=token)

    # ---- [journal], [database]
    def journal(self, journal: JournalConfig, server: ServerConfig) -> JournalConfig:
        if not journal.dir or "\x00" in journal.dir:
            self.fail("journal.dir", f"not a folder name: {journal.dir!r}")
        if journal.segment_bytes_max < server.frame_bytes_max:
            self.fail("journal.segment_bytes_max", f"{journal.segment_bytes_max} is less than "
                      f"server.frame_bytes_max ({server.frame_bytes_max}): one command must fit")
        folder = self.folder / Path(journal.dir).expanduser()
        return msgspec.structs.replace(journal, dir=str(folder))

    def database(self, database: DatabaseConfig):
        url = database.url
        if url is not None and not re.match(r"postgres(ql)?://", url):
            self.fail("database.url", "not a PostgreSQL URL (postgresql://...); omit it to use "
                      "DATABASE_URL or the embedded PostgreSQL")
        if url is not None and not url.isprintable():
            self.fail("database.url", "has control characters")
        if database.queue_events_max < database.batch_events_max:
            self.fail("database.queue_events_max", "must be >= database.batch_events_max")

    # ---- [[assets]], [[instruments]], [engine]
    def assets(self, assets):
        if not assets:
            self.fail("assets", "no assets: add at least one [[assets]] with a name and a scale")
        first_at: dict[str, int] = {}
        for i, a in enumerate(assets):
            self.name(f"assets[{i}].name", a.name, "asset name")
            self.once(first_at, "assets", i, "name", a.name, "asset")

    def instruments(self, config: Config):
        if not config.instruments:
            self.fail("instruments", "no instruments: add at least one [[instruments]]")
        names = [a.name for a in config.assets]
        assets = config.engine_assets()
        first_at: dict[str, int] = {}
        for i, ins in enumerate(config.instruments):
            key = f"instruments[{i}]"
            self.name(f"{key}.symbol", ins.symbol, "symbol")
            self.once(first_at, "instruments", i, "symbol", ins.symbol, "instrument")
            for side in ("base", "quote"):
                if getattr(ins, side) not in names:
                    self.fail(f"{key}.{side}", f"{ins.symbol}: unknown asset "
                              f"{getattr(ins, side)!r} (assets: {', '.join(names)})")
            try:        # what the engine refuses at load: notional not exact, int64 bounds
                engine.Engine(assets, [Instrument(**msgspec.structs.asdict(ins))], book="python")
            except (ValueError, ArithmeticError) as e:
                self.fail(_refine(key, InstrumentConfig, str(e)), str(e))

    def tiers(self, config: Config):
        assets = {a.name for a in config.assets}
        symbols = {i.symbol for i in config.instruments}
        first_at: dict[str, int] = {}
        for i, t in enumerate(config.tiers):
            key = f"tiers[{i}]"
            self.name(f"{key}.name", t.name, "tier name")
            self.once(first_at, "tiers", i, "name", t.name, "tier")
            for symbol in t.symbol_fees:
                if symbol not in symbols:
                    self.fail(f"{key}.symbol_fees", f"unknown symbol {symbol!r}")
            for field in ("withdrawal_daily_limit", "withdrawal_auto_approve"):
                for asset in getattr(t, field):
                    if asset not in assets:
                        self.fail(f"{key}.{field}", f"unknown asset {asset!r}")
        known = [t.name for t in config.tiers] or [DEFAULT_TIER]
        if config.engine.default_tier not in known:
            self.fail("engine.default_tier", f"{config.engine.default_tier!r} is not a tier "
                      f"(tiers: {', '.join(known)})")
        for asset in config.engine.adjustment_approval_threshold:
            if asset not in assets:
                self.fail("engine.adjustment_approval_threshold", f"unknown asset {asset!r}")

    def engine(self, config: Config):
        try:
            config.new_engine()
        except RuntimeError as e:       # book = "cython" without the kernel built
            self.fail("engine.book", str(e))
        except (ValueError, ArithmeticError) as e:     # programmer error upstream; still one line
            self.fail("engine", str(e))


# ================================================================ msgspec's messages, explained
_AT = re.compile(r"(?s)(?P<what>.*) - at `\$(?P<path>[^`]*)`")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _explain(message: str) -> tuple[str, str]:
    """(key, problem) from a msgspec ValidationError message."""
    m = _AT.fullmatch(message)      # (at the top level msgspec gives no path)
    what, key = (m["what"], m["path"].lstrip(".")) if m else (message, "")
    owner = _type_at(key)
    if f := re.fullmatch(r"Object missing required field `(.+)`", what):
        return _join(key, f[1]), "missing (required)"
    if f := re.fullmatch(r"Object contains unknown field `(.+)`", what):
        return _join(key, f[1]), "unknown key" + _known(owner, f[1])
    if what[:1].isupper() and what[1:2].islower():      # msgspec's "Expected ...", not a symbol
        what = what[:1].lower() + what[1:]
    choices = typing.get_args(owner) if typing.get_origin(owner) is Literal else ()
    if choices:
        what += f" (one of: {', '.join(choices)})"
    field = key.rsplit(".", 1)[-1]
    if field in ("price_tick", "qty_lot") and what.startswith("expected `str`"):
        what += f' (write decimals as strings: {field} = "0.01")'
    if isinstance(owner, type) and issubclass(owner, msgspec.Struct):
        key = _refine(key, owner, what)     # a __post_init__ refusal names the field in words
    return key, what


def _join(key: str, field: str) -> str:
    return f"{key}.{field}" if key else field


def _type_at(key: str):
    """The declared type at a key path of Config (None if unknown)."""
    t = Config
    for name, index in _SEGMENT.findall("." + key if key else ""):
        if index:
            args = typing.get_args(t)
            t = args[0] if args else None
        elif isinstance(t, type) and issubclass(t, msgspec.Struct):
            t = typing.get_type_hints(t, include_extras=True).get(name)
        else:
            return None
        t = _bare(t)
    return t


def _bare(t):
    """``Annotated[X, ...]`` -> X; ``X | None`` -> X."""
    while True:
        if typing.get_origin(t) is Annotated:
            t = typing.get_args(t)[0]
        elif typing.get_origin(t) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


def _known(owner, field: str) -> str:
    if not (isinstance(owner, type) and issubclass(owner, msgspec.Struct)):
        return ""
    fields = owner.__struct_fields__
    close = difflib.get_close_matches(field, fields, n=1)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(fields)})"


def _refine(key: str, owner: type, problem: str) -> str:
    """``instruments[0]`` + "BTC-USDT: price_tick must be > 0" -> ``instruments[0].price_tick``."""
    for word in re.findall(r"\b(\w+) (?:must|is) ", problem):
        if word in owner.__struct_fields__:
            return f"{key}.{word}"
    return key
