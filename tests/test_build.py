"""Which book runs, and that CI really has the Cython kernel."""
import os
import subprocess
import sys

import engine
from support import BOOKS, require_cython


def test_cython_kernel_available_when_required():
    if require_cython():
        assert "cython" in BOOKS, "EXCHANGE_REQUIRE_CYTHON=1 but engine._cbook is not importable"
        assert engine.BOOK_IMPLEMENTATION == "cython" or os.environ.get("EXCHANGE_PURE_PYTHON")


def test_pure_python_env_var_forces_reference_book():
    code = "import engine; e = engine.Engine([], []); print(engine.BOOK_IMPLEMENTATION, e.book_implementation)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "EXCHANGE_PURE_PYTHON": "1"})
    assert out.stdout.split() == ["python", "python"]


def test_auto_picks_cython_when_built():
    e = engine.Engine([], [], book="auto")
    expected = "python" if os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0") else BOOKS[-1]
    assert e.book_implementation == expected
