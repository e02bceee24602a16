"""exchange-core engine: an in-memory, deterministic matching engine.

Public API::

    from engine import Engine, Asset, Instrument
    from engine.messages import PlaceOrder, ..., Transfer

``BOOK_IMPLEMENTATION`` says which order book ``Engine(book="auto")`` uses:
"cython" when the kernel from ext/ is built (and EXCHANGE_PURE_PYTHON is not
set), else "python".
"""
from .core import CBook as _CBook
from .core import Engine, available_books, default_book
from .domain import Asset, Instrument

BOOK_IMPLEMENTATION = default_book()

if _CBook is None:
    import os as _os
    import warnings as _warnings
    if _os.environ.get("EXCHANGE_PURE_PYTHON", "") in ("", "0"):
        _warnings.warn("engine._cbook (the Cython order book) is not built; using the pure-Python "
                       "book. Build it with `pip install -e .` (needs Cython and a C compiler).",
                       RuntimeWarning, stacklevel=2)

__all__ = ["Engine", "Asset", "Instrument", "BOOK_IMPLEMENTATION", "available_books", "default_book"]
