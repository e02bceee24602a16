# The command structs of engine/messages.py as the compiled core reads them.
# A msgspec Struct keeps its fields in object slots after the object header,
# in the order CPython gives __slots__ (sorted by name, as the structs below);
# _ccore.pxd types the command handlers' argument with these classes, so
# Cython reads a field straight from its slot instead of through attribute
# lookup.  Checked before use: check_size error makes engine._ccore fail to
# import if a struct's size differs, and engine/__init__.py compares what
# core._fields_as_read() returns from the compiled core with getattr() on a
# probe of each class (engine falls back to the Python core on any mismatch).
# The Python source never sees this file.

cdef extern from *:
    """
    typedef struct { PyObject_HEAD PyObject *account, *client_order_id, *post_only, *price,
        *qty, *quote_qty, *side, *stop_price, *stp, *symbol, *tif, *type; } ccore_PlaceOrder;
    typedef struct { PyObject_HEAD PyObject *account, *admin, *client_order_id, *order_id; }
        ccore_CancelOrder;
    typedef struct { PyObject_HEAD PyObject *account, *order_id, *price, *qty; }
        ccore_ReplaceOrder;
    """
    ctypedef class engine.messages.PlaceOrder [object ccore_PlaceOrder, check_size error]:
        cdef readonly object account, client_order_id, post_only, price, qty, quote_qty
        cdef readonly object side, stop_price, stp, symbol, tif, type

    ctypedef class engine.messages.CancelOrder [object ccore_CancelOrder, check_size error]:
        cdef readonly object account, admin, client_order_id, order_id

    ctypedef class engine.messages.ReplaceOrder [object ccore_ReplaceOrder, check_size error]:
        cdef readonly object account, order_id, price, qty
