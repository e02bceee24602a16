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
import hashlib
import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PURE_PYTHON = os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0")
CORE_SOURCE = "engine/core.py"
CORE_STAMP = "_ccore.sha256"       # beside the built module; a build output, not committed
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
    the other built."""

    warned: set = set()

    def run(self):
        try:
            from Cython.Build import cythonize
        except ImportError:
            return self._fail([e.name for e in self.extensions], "Cython is not installed")
        built = []
        for ext in self.extensions:
            try:
                # force: cythonize's own staleness check misses engine/_ccore.pxd
                (c_ext,) = cythonize([ext], quiet=True, compiler_directives=ext.cython_directives,
                                     force=ext.name == "engine._ccore")
                ext.sources = c_ext.sources     # keep setuptools' own Extension objects
                built.append(ext)
            except Exception as exc:  # a Cython error
                self._fail([ext.name], f"{type(exc).__name__}: {str(exc)[:300]}")
        self.extensions = built
        if built:
            super().run()
        # what did not compile is no output of this build (nothing to copy or package)
        self.extensions = [e for e in self.extensions if e.name not in self.failed]

    failed: set = set()

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # a compiler missing or failing
            self.failed.add(ext.name)
            self._fail([ext.name], f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        if ext.name == "engine._ccore":
            self._stamp(Path(self.get_ext_fullpath(ext.name)).parent)

    def copy_extensions_to_source(self):    # editable installs: the modules go beside the source
        extensions = self.extensions
        self.extensions = [e for e in extensions if e.name not in self.failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = extensions
        if any(ext.name == "engine._ccore" for ext in self.extensions if ext.name not in self.failed):
            self._stamp(Path(CORE_SOURCE).parent)

    @staticmethod
    def _stamp(folder: Path) -> None:
        """Record which source engine._ccore was compiled from: engine/__init__.py
        uses the compiled core only while engine/core.py is still that source."""
        digest = hashlib.sha256(Path(CORE_SOURCE).read_bytes()).hexdigest()
        (folder / CORE_STAMP).write_text(digest + "\n")

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            for ext in self.extensions:
                ext.extra_compile_args = [a for a in ext.extra_compile_args if not a.startswith("-W")]
        super().build_extensions()

    def _fail(self, modules, reason: str) -> None:
        modules = [m for m in modules if m not in OptionalBuildExt.warned]
        if modules:
            OptionalBuildExt.warned.update(modules)
            _warn(modules, reason)


def _extension(name, source, **directives):
    ext = Extension(name, [source], extra_compile_args=WARNINGS)
    ext.cython_directives = {"language_level": 3, **directives}
    return ext


ext_modules = []
if not PURE_PYTHON:
    ext_modules.append(_extension("engine._cbook", "ext/_cbook.pyx"))
    # annotation_typing off: `x: int` stays a hint, as in CPython, instead of a
    # C type or an exact-type check; the compiled engine behaves as the source.
    ext_modules.append(_extension("engine._ccore", CORE_SOURCE, annotation_typing=False))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
