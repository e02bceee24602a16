"""exchange-core engine: an in-memory, deterministic matching engine.

Public API::

    from engine import Engine, Asset, Instrument
    from engine.messages import PlaceOrder, ..., Transfer

Two parts may be accelerated, each falling back to pure Python on its own:

- ``BOOK_IMPLEMENTATION``: the order book ``Engine(book="auto")`` uses,
  "cython" when the kernel from ext/ is built, else "python" (engine/book.py);
- ``CORE_IMPLEMENTATION``: the engine class ``Engine`` is, "cython" when
  engine/core.py was compiled into ``engine._ccore``, else "python" (the
  source itself, ``engine.core.Engine``, which is always importable).

EXCHANGE_PURE_PYTHON=1 forces "python" for both.
"""
import hashlib as _hashlib
import os as _os
import warnings as _warnings
from pathlib import Path as _Path

from . import core as _core
from .domain import Asset, Instrument

_PURE = _os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0")


def _compiled_core():
    """engine._ccore if it is built from the engine/core.py that is here now, else None."""
    try:
        from . import _ccore
    except ImportError:  # pragma: no cover - depends on the build
        return None
    here = _Path(__file__).resolve().parent
    try:
        built_from = (here / "_ccore.sha256").read_text().strip()
    except OSError:
        built_from = ""
    if built_from != _hashlib.sha256((here / "core.py").read_bytes()).hexdigest():
        _warnings.warn("engine._ccore was compiled from another version of engine/core.py; "
                       "using the pure-Python engine core. Rebuild with `pip install -e .`.",
                       RuntimeWarning, stacklevel=3)
        return None
    return _ccore


_ccore = None if _PURE else _compiled_core()
_impl = _core if _ccore is None else _ccore
Engine = _impl.Engine
available_books = _impl.available_books
default_book = _impl.default_book
CORE_IMPLEMENTATION = _impl.CORE_IMPLEMENTATION
BOOK_IMPLEMENTATION = default_book()

if not _PURE and (_core.CBook is None or _ccore is None):
    _missing = [name for name, mod in (("engine._cbook (the Cython order book)", _core.CBook),
                                       ("engine._ccore (the compiled engine core)", _ccore))
                if mod is None]
    _warnings.warn(" and ".join(_missing) + " not built; using pure Python. Build with "
                   "`pip install -e .` (needs Cython and a C compiler).",
                   RuntimeWarning, stacklevel=2)

__all__ = ["Engine", "Asset", "Instrument", "BOOK_IMPLEMENTATION", "CORE_IMPLEMENTATION",
           "available_books", "default_book"]
