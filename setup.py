"""Packaging lives in pyproject.toml; this file only adds the optional Cython build.

Two extension modules are built when Cython and a C compiler are available:

- ``engine._cbook``: the order-book kernel, written in Cython (ext/_cbook.pyx);
- ``engine._ccore``: the engine core compiled from the very same source as the
  pure-Python engine (engine/core.py, Cython's pure-Python mode with
  annotation typing off, so its semantics are Python's).  One source, no
  second implementation to keep in step.

Any failure (no Cython, no compiler, a compile error) leaves one warning per
module and a working install on the pure-Python code (engine/book.py,
engine/core.py).  Set EXCHANGE_PURE_PYTHON=1 to skip the build.  ``pip install
-e .`` builds the modules in place (engine/_cbook*.so, engine/_ccore*.so).
"""
import importlib.util
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PURE_PYTHON = os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0")
# engine/_stamp.py: which sources engine._ccore is built from and their digest, shared
# with engine/__init__.py (loaded by path: the package's dependencies may not exist yet)
_spec = importlib.util.spec_from_file_location("_stamp", "engine/_stamp.py")
stamp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stamp)
CORE_SOURCES = tuple(f"engine/{name}" for name in stamp.SOURCES)
WARNINGS = ["-Wall", "-Wextra"]     # the generated C compiles clean with these (gcc 12)


WHAT = {"engine._cbook": ("the Cython order book", "the pure-Python book (engine/book.py)"),
        "engine._ccore": ("the compiled engine core", "the pure-Python engine (engine/core.py)")}


def _warn(modules, reason: str) -> None:
    lines = []
    for name in modules:
        what, fallback = WHAT[name]
        lines.append(f"WARNING: {name} ({what}) was NOT built: {reason}\n"
                     f"exchange-core installs and works on {fallback}.\n")
    sys.stderr.write(
        "\n" + "=" * 78 + "\n" + "".join(lines)
        + "Install Cython and a C compiler, then reinstall, to get the acceleration.\n"
        + "=" * 78 + "\n\n")


class OptionalBuildExt(build_ext):
    """build_ext that turns any failure into a warning instead of an error:
    each module is cythonized and compiled on its own, so one failing leaves
    the other built, and a module that failed is no output of the build
    (nothing to copy into the source tree or to package)."""

    warned: set = set()         # per process: one warning per module however often pip builds

    def initialize_options(self):
        super().initialize_options()
        self.failed = set()
        self.core_digest = None

    def run(self):
        try:
            from Cython.Build import cythonize
        except ImportError:
            self._fail([e.name for e in self.extensions], "Cython is not installed")
            self.extensions = []
            return
        for ext in self.extensions:
            try:
                if ext.name == "engine._ccore":
                    self.core_digest = stamp.digest("engine")   # of the sources about to be compiled
                # force: cythonize's own staleness check misses engine/_ccore.pxd
                (c_ext,) = cythonize([ext], quiet=True, compiler_directives=ext.cython_directives,
                                     force=ext.name == "engine._ccore")
                ext.sources = c_ext.sources     # keep setuptools' own Extension objects
            except Exception as exc:  # a Cython error
                self._fail([ext.name], f"{type(exc).__name__}: {str(exc)[:300]}")
        self._drop_failed()
        if self.extensions:
            try:
                super().run()
            except Exception as exc:  # compiler set-up, copying into the source tree
                self._fail([e.name for e in self.extensions], f"{type(exc).__name__}: {str(exc)[:300]}")
            self._drop_failed()

    def _drop_failed(self) -> None:
        self.extensions = [e for e in self.extensions if e.name not in self.failed]

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # a compiler missing or failing
            self._fail([ext.name], f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        if ext.name == "engine._ccore":
            self._stamp(Path(self.get_ext_fullpath(ext.name)).parent)

    def copy_extensions_to_source(self):    # editable installs: the modules go beside the source
        self._drop_failed()
        super().copy_extensions_to_source()
        if any(ext.name == "engine._ccore" for ext in self.extensions):
            self._stamp(Path("engine"))

    def _stamp(self, folder: Path) -> None:
        """Record which sources engine._ccore was compiled from: engine/__init__.py
        uses the compiled core only while they are unchanged."""
        (folder / stamp.STAMP).write_text((self.core_digest or stamp.digest("engine")) + "\n")

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            for ext in self.extensions:
                ext.extra_compile_args = [a for a in ext.extra_compile_args if not a.startswith("-W")]
        super().build_extensions()

    def _fail(self, modules, reason: str) -> None:
        self.failed.update(modules)
        modules = [m for m in modules if m not in OptionalBuildExt.warned]
        if modules:
            OptionalBuildExt.warned.update(modules)
            _warn(modules, reason)


def _extension(name, source, depends=(), **directives):
    ext = Extension(name, [source], depends=list(depends), extra_compile_args=WARNINGS)
    ext.cython_directives = {"language_level": 3, **directives}
    return ext


ext_modules = []
if not PURE_PYTHON:
    ext_modules.append(_extension("engine._cbook", "ext/_cbook.pyx"))
    # annotation_typing off: `x: int` stays a hint, as in CPython, instead of a
    # C type or an exact-type check; the compiled engine behaves as the source.
    # overflowcheck: the few C integers _ccore.pxd declares raise OverflowError
    # rather than wrap, should a bound they rely on ever be broken.
    ext_modules.append(_extension("engine._ccore", CORE_SOURCES[0], depends=CORE_SOURCES[1:],
                                  annotation_typing=False, overflowcheck=True))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
