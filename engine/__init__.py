"""exchange-core engine: an in-memory, deterministic matching engine.

Public API::

    from engine import Engine, Asset, Instrument, AccountTier
    from engine.messages import PlaceOrder, ..., Transfer

Two parts may be accelerated, each falling back to pure Python on its own:

- ``BOOK_IMPLEMENTATION``: the order book ``Engine(book="auto")`` uses,
  "cython" when the kernel from ext/ is built, else "python" (engine/book.py);
- ``CORE_IMPLEMENTATION``: the engine class ``Engine`` is, "cython" when
  engine/core.py was compiled into ``engine._ccore``, else "python" (the
  source itself, ``engine.core.Engine``, which is always importable), used
  only while it matches both its sources (a stamp) and msgspec's layout of
  the command structs it reads directly (engine/_commands.pxd).

EXCHANGE_PURE_PYTHON=1 forces "python" for both.
"""
import importlib.util as _importlib_util
import os as _os
import warnings as _warnings
from pathlib import Path as _Path

from . import _stamp
from . import core as _core
from .domain import AccountTier, Asset, Instrument

_PURE = _os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0")


def _compiled_core():
    """(engine._ccore, None) if it is built from the sources that are here now
    (engine/_stamp.py: core.py and the .pxd files) and reads this msgspec's
    command structs right, else (None, why not)."""
    if _importlib_util.find_spec(__name__ + "._ccore") is None:
        return None, "not built"
    here = _Path(__file__).resolve().parent
    sources = ", ".join(f"engine/{name}" for name in _stamp.SOURCES)
    try:
        matches = (here / _stamp.STAMP).read_text().strip() == _stamp.digest(here)
    except OSError:
        return None, ("stale: engine/_ccore.sha256 (the record of its sources) or one of "
                      f"{sources} is missing")
    if not matches:
        return None, f"stale: compiled from another version of {sources}"
    try:
        from . import _ccore
    except (ImportError, ValueError) as e:     # ValueError: a command struct's size changed
        return None, f"not importable ({e})"
    if not _reads_commands_right(_ccore):
        return None, _WRONG_LAYOUT
    return _ccore, None


_WRONG_LAYOUT = ("built for another layout of msgspec's command structs than this msgspec's, "
                 "or for other command fields (engine/_commands.pxd): a rebuild does not "
                 "change that; engine/_commands.pxd must describe this msgspec's layout")


def _reads_commands_right(module) -> bool:
    """Whether ``module._fields_as_read`` (the compiled core reads command fields
    from their slots) gives, field by field, what getattr() gives, for a probe
    of each command class with a distinct object in every field."""
    from .messages import CancelOrder, PlaceOrder, ReplaceOrder
    try:
        for cls in (PlaceOrder, CancelOrder, ReplaceOrder):
            probe = cls(*[object() for _ in cls.__struct_fields__])
            read = module._fields_as_read(probe)
            if sorted(read) != sorted(cls.__struct_fields__) or any(
                    v is not getattr(probe, name) for name, v in read.items()):
                return False
    except Exception:       # a struct that refuses the probe, a field the core does not know
        return False
    return True


_ccore, _why_not = (None, None) if _PURE else _compiled_core()
_impl = _core if _ccore is None else _ccore
Engine = _impl.Engine
available_books = _impl.available_books
default_book = _impl.default_book
CORE_IMPLEMENTATION = _impl.CORE_IMPLEMENTATION
BOOK_IMPLEMENTATION = default_book()

if not _PURE and (_core.CBook is None or _ccore is None):
    _problems = []
    if _core.CBook is None:
        _problems.append("engine._cbook (the Cython order book) is not built")
    if _ccore is None:
        _problems.append(f"engine._ccore (the compiled engine core) is {_why_not}")
    _rebuild = _core.CBook is None or _why_not != _WRONG_LAYOUT
    _warnings.warn("; ".join(_problems) + ": using pure Python for it."
                   + (" Build with `pip install -e .` (needs Cython and a C compiler)."
                      if _rebuild else ""),
                   RuntimeWarning, stacklevel=2)

__all__ = ["Engine", "Asset", "Instrument", "AccountTier", "BOOK_IMPLEMENTATION",
           "CORE_IMPLEMENTATION", "available_books", "default_book"]
