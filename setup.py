"""Packaging lives in pyproject.toml; this file only adds the optional Cython build.

The order-book kernel (ext/_cbook.pyx -> engine._cbook) is built when Cython and a C
compiler are available.  Any failure (no Cython, no compiler, a compile error)
leaves one warning and a working install on the pure-Python book (engine/book.py).
Set EXCHANGE_PURE_PYTHON=1 to skip the build.  ``pip install -e .`` builds the
module in place (engine/_cbook*.so).
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PURE_PYTHON = os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0")
WARNINGS = ["-Wall", "-Wextra"]     # the generated C compiles clean with these (gcc 12)


def _warn(reason: str) -> None:
    sys.stderr.write(
        "\n" + "=" * 78 + "\n"
        "WARNING: engine._cbook (the Cython order book) was NOT built: " + reason + "\n"
        "exchange-core installs and works on the pure-Python book (engine/book.py);\n"
        "install Cython and a C compiler, then reinstall, to get the kernel.\n"
        + "=" * 78 + "\n\n")


class OptionalBuildExt(build_ext):
    """build_ext that turns any failure into one warning instead of an error."""

    failed = False

    def run(self):
        try:
            from Cython.Build import cythonize
        except ImportError:
            return self._fail("Cython is not installed")
        try:
            generated = cythonize(self.extensions, quiet=True,
                                  compiler_directives={"language_level": 3})
            for ext, c_ext in zip(self.extensions, generated):
                ext.sources = c_ext.sources     # keep setuptools' own Extension objects
            super().run()
        except Exception as exc:  # a compiler missing or failing, a Cython error
            self._fail(f"{type(exc).__name__}: {str(exc)[:300]}")

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            for ext in self.extensions:
                ext.extra_compile_args = [a for a in ext.extra_compile_args if not a.startswith("-W")]
        super().build_extensions()

    def _fail(self, reason: str) -> None:
        if not OptionalBuildExt.failed:
            OptionalBuildExt.failed = True
            _warn(reason)


ext_modules = []
if not PURE_PYTHON:
    ext_modules.append(Extension(
        "engine._cbook", ["ext/_cbook.pyx"],
        extra_compile_args=WARNINGS,
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
