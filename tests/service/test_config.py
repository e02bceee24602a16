"""engine.service.config: a valid file loads with the documented defaults; every
mistake is one ConfigError line naming the file and the key; no input raises
anything else."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Asset, Instrument
from engine.service.config import (ROLES, Config, ConfigError, SessionConfig, load_config)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "exchange.toml"

BASE = {
    "server": {"sessions": [
        {"token": "tok-trading-1", "role": "trading"},
        {"token": "tok-admin-1", "role": "admin"},
    ]},
    "assets": [{"name": "BTC", "scale": 8}, {"name": "USDT", "scale": 6}],
    "instruments": [{"symbol": "BTC-USDT", "base": "BTC", "quote": "USDT",
                     "price_tick": "0.01", "qty_lot": "0.0001"}],
}


# ------------------------------------------------------------------ a small TOML writer
def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _is_tables(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def render(doc: dict) -> str:
    """TOML for a config dict: sections as [tables], lists of dicts as [[arrays]]."""
    out = []

    def table(name, d, header):
        out.append(header)
        for k, v in d.items():
            if not isinstance(v, dict) and not _is_tables(v):
                out.append(f"{json.dumps(k)} = {_value(v)}")
        for k, v in d.items():
            if _is_tables(v):
                for x in v:
                    table(f"{name}.{k}", x, f"[[{name}.{k}]]")
            elif isinstance(v, dict):
                table(f"{name}.{k}", v, f"[{name}.{k}]")

    for k, v in doc.items():
        if not isinstance(v, dict) and not _is_tables(v):
            out.append(f"{json.dumps(k)} = {_value(v)}")
    for k, v in doc.items():
        if _is_tables(v):
            for x in v:
                table(k, x, f"[[{k}]]")
        elif isinstance(v, dict):
            table(k, v, f"[{k}]")
    return "\n".join(out) + "\n"


@pytest.fixture
def write(tmp_path):
    def write(doc, name="exchange.toml") -> Path:
        path = tmp_path / name
        if isinstance(doc, bytes):
            path.write_bytes(doc)
        else:
            path.write_text(doc if isinstance(doc, str) else render(doc), encoding="utf-8")
        return path
    return write


def error_of(path, environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    return info.value


def assert_one_line(e: ConfigError, path: Path, key: str):
    text = str(e)
    assert "\n" not in text and "\r" not in text, text
    assert text.startswith(f"{path}: "), text
    assert e.key == key, text
    if key:
        assert text.startswith(f"{path}: {key}: "), text


# ================================================================ valid files
def test_minimal_file_gets_every_default(write, tmp_path):
    c = load_config(write(BASE), environ={})
    s = c.server
    assert (s.host, s.port, s.frame_bytes_max, s.outbound_bytes_max) == ("127.0.0.1", 7001, 65536,
                                                                         8 * 1024 * 1024)
    assert (s.report_retention_max, s.request_window) == (100_000, 10_000)
    assert (s.market_data_buffer_bytes_max, s.market_data_depth_max, s.market_data_stall_ms_max,
            s.market_data_flush_interval_ms) == (1024 * 1024, 1000, 10_000, 10)
    assert [(x.role, x.token, x.token_env, x.accounts, x.gateway_id) for x in s.sessions] == [
        ("trading", "tok-trading-1", None, None, None), ("admin", "tok-admin-1", None, None, None)]
    j = c.journal
    assert j.dir == str(tmp_path / "var" / "journal")
    assert (j.fsync, j.fsync_interval_ms, j.snapshot_every, j.segment_bytes_max) == (
        "always", 5, 1_000_000, 67108864)
    assert (c.database.url, c.database.enabled) == (None, True)
    assert (c.engine.max_open_orders, c.engine.book) == (1000, "auto")
    assert c.engine_assets() == [Asset("BTC", 8), Asset("USDT", 6)]
    assert [type(a) for a in c.engine_assets()] == [Asset, Asset]
    (ins,) = c.engine_instruments()
    assert type(ins) is Instrument
    assert ins == Instrument("BTC-USDT", "BTC", "USDT", "0.01", "0.0001")
    assert c.new_engine().seq == 0


def test_example_file_loads_with_its_admin_token_from_the_environment():
    c = load_config(EXAMPLE, environ={"EXCHANGE_ADMIN_TOKEN": "s3cret-admin"})
    assert [s.role for s in c.server.sessions] == list(ROLES)
    trading, treasury, admin = c.server.sessions
    assert trading.accounts == frozenset({1001, 1002, 1003}) and trading.gateway_id == "gw-1"
    assert trading.may_act_for(1002) and not trading.may_act_for(1004)
    assert treasury.accounts is None and treasury.may_act_for(123456)
    assert (admin.token, admin.token_env) == ("s3cret-admin", "EXCHANGE_ADMIN_TOKEN")
    assert c.journal.dir == str(EXAMPLE.parent / "var" / "journal")
    assert [a.name for a in c.assets] == ["BTC", "ETH", "USDT"]
    assert [i.symbol for i in c.instruments] == ["BTC-USDT", "ETH-USDT"]
    assert c.instruments[0].taker_fee_bps == 5
    c.new_engine(book="python")


def test_tokens_never_show_in_a_repr(write):
    c = load_config(write(BASE), environ={})
    assert "tok-trading-1" not in repr(c)
    assert "<hidden>" in repr(SessionConfig(role="admin", token="x"))


def test_absolute_journal_dir_and_home_are_kept(write, tmp_path):
    doc = copy.deepcopy(BASE)
    doc["journal"] = {"dir": str(tmp_path / "elsewhere")}
    assert load_config(write(doc), environ={}).journal.dir == str(tmp_path / "elsewhere")


def test_port_zero_means_any_free_port(write):
    doc = copy.deepcopy(BASE)
    doc["server"]["port"] = 0
    assert load_config(write(doc), environ={}).server.port == 0


# ================================================================ config_hash
def _hash(write, change=None, name="exchange.toml"):
    doc = copy.deepcopy(BASE)
    if change:
        change(doc)
    return load_config(write(doc, name), environ={}).config_hash()


def test_config_hash_is_stable_and_sees_only_the_engine(write):
    h = _hash(write)
    assert len(h) == 64 and h == _hash(write, name="other.toml")
    # defaults written out or left implicit: the same engine
    assert h == _hash(write, lambda d: d["instruments"][0].update(min_qty=1, maker_fee_bps=0))
    assert h == _hash(write, lambda d: d.update(engine={"max_open_orders": 1000}))
    # server, sessions, journal, database and the book choice do not shape engine state
    assert h == _hash(write, lambda d: d["server"].update(port=9000, request_window=5))
    assert h == _hash(write, lambda d: d["server"]["sessions"].pop())
    assert h == _hash(write, lambda d: d.update(journal={"fsync": "off"}, database={"enabled": False}))
    assert h == _hash(write, lambda d: d.update(engine={"book": "python"}))
    # what does shape it
    assert h != _hash(write, lambda d: d["instruments"][0].update(taker_fee_bps=1))
    assert h != _hash(write, lambda d: d["assets"][0].update(scale=7))
    assert h != _hash(write, lambda d: d.update(engine={"max_open_orders": 999}))
    assert h != _hash(write, lambda d: d["assets"].reverse())       # order is the asset index


# ================================================================ mistakes: one line, file and key
def _set(path, value):
    def change(doc):
        *parents, last = path
        d = doc
        for p in parents:
            d = d.setdefault(p, {}) if isinstance(p, str) else d[p]
        d[last] = value
    return change


def _drop(path):
    def change(doc):
        *parents, last = path
        d = doc
        for p in parents:
            d = d[p]
        del d[last]
    return change


S0, S1, I0 = ("server", "sessions", 0), ("server", "sessions", 1), ("instruments", 0)

MISTAKES = [
    # (id, change to BASE, key named, words in the problem)
    ("unknown key", _set(("server", "prot"), 1), "server.prot", "did you mean port"),
    ("unknown section", _set(("serverr",), {"port": 1}), "serverr", "unknown key"),
    ("unknown session key", _set(S1 + ("rolee",), "x"), "server.sessions[1].rolee", "unknown"),
    ("bad role", _set(S1 + ("role",), "root"), "server.sessions[1].role", "trading, treasury, admin"),
    ("missing role", _drop(S0 + ("role",)), "server.sessions[0].role", "missing"),
    ("port too high", _set(("server", "port"), 70000), "server.port", "65535"),
    ("port negative", _set(("server", "port"), -1), "server.port", ">= 0"),
    ("port a string", _set(("server", "port"), "7001"), "server.port", "expected `int`"),
    ("frame too small", _set(("server", "frame_bytes_max"), 10), "server.frame_bytes_max", ">= 256"),
    ("outbound below frame", _set(("server", "outbound_bytes_max"), 1024),
     "server.outbound_bytes_max", "one frame must fit"),
    ("market data past outbound", _set(("server", "market_data_buffer_bytes_max"), 8 * 1024 * 1024),
     "server.market_data_buffer_bytes_max", "before replies are dropped"),
    ("market data depth zero", _set(("server", "market_data_depth_max"), 0),
     "server.market_data_depth_max", ">= 1"),
    ("market data depth past the protocol's", _set(("server", "market_data_depth_max"), 10_001),
     "server.market_data_depth_max", "<= 10000"),
    ("empty host", _set(("server", "host"), ""), "server.host", "not a host"),
    ("no sessions", _drop(("server", "sessions")), "server.sessions", "at least one"),
    ("token and token_env", _set(S0 + ("token_env",), "T"), "server.sessions[0]", "exactly one"),
    ("neither token", _drop(S1 + ("token",)), "server.sessions[1]", "exactly one"),
    ("token_env unset", lambda d: (d["server"]["sessions"][1].pop("token"),
                                   d["server"]["sessions"][1].update(token_env="NO_SUCH_VAR_X")),
     "server.sessions[1].token_env", "NO_SUCH_VAR_X is not set"),
    ("duplicate token", _set(S1 + ("token",), "tok-trading-1"), "server.sessions[1].token",
     "server.sessions[0]"),
    ("empty token", _set(S0 + ("token",), ""), "server.sessions[0].token", "empty"),
    ("token with a space", _set(S0 + ("token",), "tok en"), "server.sessions[0].token", "spaces"),
    ("system account", _set(S0 + ("accounts",), [5, 1]), "server.sessions[0].accounts",
     "1 is a system account"),
    ("account zero", _set(S0 + ("accounts",), [0]), "server.sessions[0].accounts", "system account"),
    ("no accounts", _set(S0 + ("accounts",), []), "server.sessions[0].accounts", "empty"),
    ("account not int", _set(S0 + ("accounts",), ["a"]), "server.sessions[0].accounts[0]",
     "expected `int`"),
    ("empty gateway id", _set(S0 + ("gateway_id",), ""), "server.sessions[0].gateway_id", "empty"),
    ("long gateway id", _set(S0 + ("gateway_id",), "g" * 65), "server.sessions[0].gateway_id",
     "longer than 64"),
    ("bad fsync", _set(("journal", "fsync"), "sometimes"), "journal.fsync", "always, batch, off"),
    ("zero fsync interval", _set(("journal", "fsync_interval_ms"), 0), "journal.fsync_interval_ms",
     ">= 1"),
    ("segment below frame", _set(("journal", "segment_bytes_max"), 8192),
     "journal.segment_bytes_max", "one command must fit"),
    ("not a postgres url", _set(("database", "url"), "mysql://x"), "database.url", "PostgreSQL"),
    ("enabled not bool", _set(("database", "enabled"), "yes"), "database.enabled", "expected `bool`"),
    ("bad book", _set(("engine", "book"), "fast"), "engine.book", "auto, python, cython"),
    ("no open orders", _set(("engine", "max_open_orders"), 0), "engine.max_open_orders", ">= 1"),
    ("no assets", _drop(("assets",)), "assets", "at least one"),
    ("asset scale", _set(("assets", 0, "scale"), 19), "assets[0].scale", "0..18"),
    ("asset name spaces", _set(("assets", 0, "name"), "B TC"), "assets[0].name", "spaces"),
    ("duplicate asset", _set(("assets", 1, "name"), "BTC"), "assets[1].name", "assets[0]"),
    ("no instruments", _drop(("instruments",)), "instruments", "at least one"),
    ("unknown asset", _set(I0 + ("quote",), "EUR"), "instruments[0].quote", "unknown asset 'EUR'"),
    ("tick as float", _set(I0 + ("price_tick",), 0.01), "instruments[0].price_tick",
     'price_tick = "0.01"'),
    ("tick zero", _set(I0 + ("price_tick",), "0"), "instruments[0].price_tick", "must be > 0"),
    ("tick not decimal", _set(I0 + ("price_tick",), "abc"), "instruments[0].price_tick",
     "not a decimal"),
    ("fee too high", _set(I0 + ("maker_fee_bps",), 10_001), "instruments[0].maker_fee_bps", "10000"),
    ("missing symbol", _drop(I0 + ("symbol",)), "instruments[0].symbol", "missing"),
    ("notional not whole", _set(I0 + ("qty_lot",), "0.00000001"), "instruments[0]",
     "BTC-USDT: price_tick*qty_lot in USDT minor units is not a whole number"),
    ("max_qty overflows", _set(I0 + ("max_qty",), 2**62), "instruments[0]", "BTC-USDT"),
    ("duplicate symbol", lambda d: d["instruments"].append(dict(d["instruments"][0])),
     "instruments[1].symbol", "instruments[0]"),
]


@pytest.mark.parametrize("change, key, words", [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_line_naming_file_and_key(write, change, key, words):
    doc = copy.deepcopy(BASE)
    change(doc)
    path = write(doc)
    e = error_of(path)
    assert_one_line(e, path, key)
    assert words in e.problem, str(e)


def test_a_duplicate_token_is_not_echoed(write):
    doc = copy.deepcopy(BASE)
    doc["server"]["sessions"][1] = {"token_env": "ADMIN_T", "role": "admin"}
    path = write(doc)
    e = error_of(path, environ={"ADMIN_T": "tok-trading-1"})
    assert_one_line(e, path, "server.sessions[1].token_env")
    assert "tok-trading-1" not in str(e)


def test_a_token_from_an_empty_variable_is_refused(write):
    doc = copy.deepcopy(BASE)
    doc["server"]["sessions"][1] = {"token_env": "ADMIN_T", "role": "admin"}
    path = write(doc)
    assert_one_line(error_of(path, environ={"ADMIN_T": ""}), path, "server.sessions[1].token_env")


@pytest.mark.parametrize("text, words", [
    ("[server\nport = 1\n", "line 1"),
    ("[server]\nport = 1\nport = 2\n", "line 3"),
    ("[server]\nport = \n", "line 2"),
    ("a = " + "[" * 100_000, "invalid TOML"),
], ids=["unclosed table", "duplicate key", "missing value", "nested too deeply"])
def test_toml_syntax_errors_name_the_line(write, text, words):
    path = write(text)
    e = error_of(path)
    assert_one_line(e, path, "")
    assert "invalid TOML" in str(e) and words in str(e)


def test_unreadable_files(write, tmp_path):
    missing = tmp_path / "nope.toml"
    e = error_of(missing)
    assert_one_line(e, missing, "")
    assert "cannot read" in str(e)
    assert_one_line(error_of(tmp_path), tmp_path, "")          # a folder
    latin1 = write(b"[server]\nhost = \"caf\xe9\"\n")
    assert "invalid TOML" in str(error_of(latin1))


# ================================================================ nothing but ConfigError
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_arbitrary_text_raises_only_config_error(write, text):
    path = write(text)
    try:
        load_config(path, environ={})
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}: ")


_scalars = (st.integers(min_value=-2**70, max_value=2**70) | st.text(max_size=12) | st.booleans()
            | st.floats() | st.sampled_from(["0.01", "1e999999", "-0", "1e-999999", "BTC", "USDT",
                                             "trading", "", "cython", "postgresql://x"]))
_values = _scalars | st.lists(_scalars, max_size=3) | st.dictionaries(st.text(max_size=4), _scalars,
                                                                      max_size=2)
_KEYS = [("server", k) for k in ("host", "port", "frame_bytes_max", "outbound_bytes_max",
                                 "report_retention_max", "request_window", "sessions",
                                 "market_data_buffer_bytes_max", "market_data_depth_max",
                                 "market_data_stall_ms_max", "market_data_flush_interval_ms",
                                 "x")] + [
    S0 + (k,) for k in ("token", "token_env", "role", "accounts", "gateway_id")] + [
    ("journal", k) for k in ("dir", "fsync", "fsync_interval_ms", "snapshot_every",
                             "segment_bytes_max")] + [
    ("database", "url"), ("database", "enabled"), ("engine", "max_open_orders"),
    ("engine", "book"), ("assets", 0, "name"), ("assets", 1, "scale"), ("assets",)] + [
    I0 + (k,) for k in ("symbol", "base", "quote", "price_tick", "qty_lot", "min_qty", "max_qty",
                        "min_notional", "maker_fee_bps", "taker_fee_bps", "max_price")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _values), min_size=1, max_size=3))
def test_any_value_at_any_key_raises_only_config_error(write, changes):
    doc = copy.deepcopy(BASE)
    for key, value in changes:
        try:
            _set(key, value)(doc)
        except (KeyError, IndexError, TypeError):   # an earlier change replaced a parent
            pass
    path = write(doc)
    try:
        config = load_config(path, environ={"T": "tok"})
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(f"{path}: ")
    else:
        assert isinstance(config, Config)
        config.new_engine(book="python")
        assert len(config.config_hash()) == 64
