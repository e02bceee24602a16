"""The book's interface, ``engine.book_protocol.OrderBook``, held both ways.

* Each book implementation here (``engine.book.Book``, and
  ``engine._cbook.Book`` when built) has every member of the Protocol, each
  method taking the Protocol's positional arguments (checked with
  ``inspect.signature`` where it works; the Cython class at least has each
  member, callable), and returns the documented shapes.
* ``engine/core.py`` uses nothing on a book outside the Protocol, and the
  Protocol lists nothing the engine does not use: its source is parsed with
  ``ast``, and every attribute taken from ``<x>._book`` (or a local name bound
  to it) is collected, with each call's arguments.

The checkers are run on deliberately broken inputs too, so they can fail.
"""
from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest

import engine
from engine import book as ref
from engine.book_protocol import OrderBook

try:
    from engine import _cbook
except ImportError:  # pragma: no cover - depends on the build
    _cbook = None

CORE_PY = Path(engine.__file__).resolve().parent / "core.py"

# Spelled out so a member silently dropped from the Protocol fails here too.
METHODS = {"get", "best_bid", "best_ask", "crosses", "depth", "dump", "can_fill", "add", "rest",
           "remove", "move", "reduce", "set_fee", "match", "validate"}
ATTRIBUTES = {"implementation"}


def protocol_methods() -> dict[str, int]:
    """Method name -> number of positional arguments after self."""
    out = {}
    for name, member in vars(OrderBook).items():
        if inspect.isfunction(member) and member.__qualname__ == f"OrderBook.{name}":
            params = list(inspect.signature(member).parameters.values())[1:]
            assert all(p.kind is p.POSITIONAL_ONLY for p in params), name
            out[name] = len(params)
    return out


def test_protocol_lists_the_members():
    assert set(protocol_methods()) == METHODS
    assert set(OrderBook.__annotations__) == ATTRIBUTES


# ====================================================== the implementations
def conformance_problems(cls, *, signature_required: bool) -> list[str]:
    """What ``cls`` lacks of the Protocol; [] when it conforms."""
    problems = []
    for name in ATTRIBUTES:
        if not isinstance(getattr(cls, name, None), str):
            problems.append(f"{name}: not a str class attribute")
    for name, n_args in protocol_methods().items():
        member = getattr(cls, name, None)
        if member is None or not callable(member):
            problems.append(f"{name}: missing or not callable")
            continue
        try:
            sig = inspect.signature(member)
        except (TypeError, ValueError):
            if signature_required:
                problems.append(f"{name}: no signature")
            continue
        try:     # as the engine calls it: the instance, then n_args positional values
            sig.bind(object(), *range(n_args))
        except TypeError as e:
            problems.append(f"{name}{sig}: does not take {n_args} positional arguments ({e})")
    try:
        book = cls(2)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        problems.append(f"{cls.__name__}(n_instruments): {e!r}")
    else:
        if not isinstance(book, OrderBook):
            problems.append("isinstance(book, OrderBook) is False")
    return problems


def _implementations() -> list:
    out = [pytest.param(ref.Book, True, id="python")]
    if _cbook is not None:
        out.append(pytest.param(_cbook.Book, False, id="cython"))
    elif os.environ.get("EXCHANGE_REQUIRE_CYTHON", "") not in ("", "0"):
        out.append(pytest.param(None, False, id="cython"))     # fails: the kernel is required
    return out


@pytest.mark.parametrize(("cls", "python_class"), _implementations())
def test_implementation_has_every_member(cls, python_class):
    assert cls is not None, "EXCHANGE_REQUIRE_CYTHON=1 but engine._cbook is not built"
    assert conformance_problems(cls, signature_required=python_class) == []
    assert cls.implementation == ("python" if python_class else "cython")


@pytest.mark.parametrize(("cls", "python_class"), _implementations())
def test_implementation_returns_the_documented_shapes(cls, python_class):
    assert cls is not None

    def ints(t, n):
        return type(t) is tuple and len(t) == n and all(type(v) is int for v in t)

    b = cls(2)
    assert b.add(0, 1, 7, ref.SELL, 101, 5, 0, 0) is None
    assert b.rest(0, 2, 8, ref.BUY, 99, 4, 30_001, 1) is True
    assert b.rest(0, 3, 8, ref.BUY, 101, 4, 0, 0) is False            # it would trade
    assert ints(b.get(2), 7) and b.get(2) == (0, 8, ref.BUY, 99, 4, 30_001, 1)
    assert b.get(3) is None
    assert (b.best_bid(0), b.best_ask(0), b.best_bid(1), b.best_ask(1)) == (99, 101, 0, 0)
    assert b.crosses(0, ref.BUY, 101) is True and b.crosses(0, ref.SELL, 100) is False
    assert b.depth(0, 5) == ([(99, 4)], [(101, 5)])
    dump = b.dump(0)
    assert type(dump) is list and all(ints(row, 7) for row in dump)
    assert [row[0] for row in dump] == [2, 1]
    assert b.can_fill(0, ref.BUY, 101, 5, 9, ref.STP_CANCEL_NEWEST) is True
    assert b.can_fill(0, ref.BUY, 101, 6, 9, ref.STP_CANCEL_NEWEST) is False
    assert b.reduce(2, 3) is None and b.set_fee(2, 5) is None
    assert b.move(2, 100, 3) is True and b.get(2) == (0, 8, ref.BUY, 100, 3, 5, 1)
    records = b.match(0, ref.BUY, 101, 2, ref.NO_BUDGET, 1, 9, ref.STP_CANCEL_NEWEST)
    assert type(records) is list and all(ints(r, 8) for r in records)
    assert records == [(ref.FILL, 1, 7, 101, 2, 3, 0, 0)]
    assert b.remove(1) == (0, 7, ref.SELL, 101, 3, 0, 0) and b.remove(1) is None
    assert b.validate() is None


class _Broken:
    """A book missing ``validate`` and taking ``match`` with one argument short."""
    implementation = "broken"

    def __init__(self, n_instruments):
        pass

    def match(self, instrument, side, limit, qty, budget, unit, account):
        return []


for _name in METHODS - {"match", "validate"}:
    setattr(_Broken, _name, getattr(ref.Book, _name))


def test_conformance_check_can_fail():
    problems = conformance_problems(_Broken, signature_required=True)
    assert any(p.startswith("validate:") for p in problems), problems
    assert any(p.startswith("match(") for p in problems), problems
    assert "isinstance(book, OrderBook) is False" in problems


# ====================================================== what the engine uses
def _is_book(node: ast.AST, aliases: set[str]) -> bool:
    return ((isinstance(node, ast.Attribute) and node.attr == "_book")
            or (isinstance(node, ast.Name) and node.id in aliases))


def _aliases(scope: ast.AST) -> set[str]:
    """Names bound to ``<x>._book`` in ``scope`` (``book = self._book``, also
    inside a tuple assignment)."""
    names: set[str] = set()
    for node in ast.walk(scope):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            for t, v in pairs:
                if isinstance(t, ast.Name) and _is_book(v, set()):
                    names.add(t.id)
    return names


def book_uses(source: str) -> tuple[dict[str, list[int]], list[str]]:
    """(attribute name -> lines where it is taken from a book, problems): a
    problem is a call that is not plainly positional with the Protocol's
    number of arguments, or a use of the book other than through an attribute."""
    arity = protocol_methods()
    used: dict[str, list[int]] = {}
    problems: list[str] = []
    tree = ast.parse(source)
    scopes = [tree] + [n for n in ast.walk(tree)
                       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    seen: set[int] = set()
    for scope in reversed(scopes):              # innermost first: its own aliases
        aliases = _aliases(scope)
        accounted: set[int] = set()
        for node in ast.walk(scope):
            if id(node) in seen:
                continue
            if isinstance(node, ast.Assign):    # the alias bindings themselves
                values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
                accounted.update(id(v) for v in values if _is_book(v, set()))
            if isinstance(node, ast.Attribute) and _is_book(node.value, aliases):
                seen.add(id(node))
                accounted.add(id(node.value))
                used.setdefault(node.attr, []).append(node.lineno)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and _is_book(node.func.value, aliases)):
                name, n = node.func.attr, len(node.args)
                if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                    problems.append(f"line {node.lineno}: {name}() not called positionally")
                elif name in arity and n != arity[name]:
                    problems.append(f"line {node.lineno}: {name}() with {n} arguments, "
                                    f"the Protocol has {arity[name]}")
        for node in ast.walk(scope):
            if (id(node) not in seen and id(node) not in accounted and _is_book(node, aliases)
                    and isinstance(getattr(node, "ctx", None), ast.Load)):
                seen.add(id(node))
                problems.append(f"line {node.lineno}: the book used other than by attribute")
        seen.update(id(n) for n in ast.walk(scope))
    return used, problems


def test_engine_uses_only_the_protocol():
    used, problems = book_uses(CORE_PY.read_text())
    assert {"match", "add", "get"} <= set(used), used       # the parse finds the calls
    outside = {name: lines for name, lines in used.items() if name not in METHODS}
    assert outside == {}, f"engine/core.py uses book members the Protocol lacks: {outside}"
    assert problems == []


def test_protocol_lists_only_what_the_engine_uses():
    used, _ = book_uses(CORE_PY.read_text())
    assert METHODS - set(used) == set(), "Protocol members engine/core.py never calls"


def test_engine_use_check_can_fail():
    used, problems = book_uses('''
class Engine:
    def place(self):
        self._book.frobnicate(1)
        self._book.get(order_id=3)
        len(self._book)

    def settle(self):
        seq, book = self._seq, self._book
        book.match(0, 0, 1, 1, 1, 1, 1)
        lookup = book.peek
''')
    assert set(used) == {"frobnicate", "get", "match", "peek"}, used
    assert len(problems) == 3, problems
    assert any("get() not called positionally" in p for p in problems)
    assert any("match() with 7 arguments" in p for p in problems)
    assert any("other than by attribute" in p for p in problems)
