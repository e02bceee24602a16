"""Packaging lives in pyproject.toml; this file only adds the optional Cython build.

The order-book kernel (ext/*.pyx -> engine._cbook) is built when Cython and a C
compiler are available.  Any failure leaves a warning and a working install on
the pure-Python book (engine/book.py).  Set EXCHANGE_PURE_PYTHON=1 to skip the build.
"""
from setuptools import setup

setup()
