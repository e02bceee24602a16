"""Which book and engine core run, and that CI really has both compiled."""
import os
import shutil
import subprocess
import sys

import pytest

import engine
from support import BOOKS, require_cython


def test_cython_kernel_available_when_required():
    if require_cython():
        assert "cython" in BOOKS, "EXCHANGE_REQUIRE_CYTHON=1 but engine._cbook is not importable"
        assert engine.BOOK_IMPLEMENTATION == "cython" or os.environ.get("EXCHANGE_PURE_PYTHON")


def test_compiled_core_available_when_required():
    if require_cython() and not os.environ.get("EXCHANGE_PURE_PYTHON"):
        assert engine.CORE_IMPLEMENTATION == "cython", \
            "EXCHANGE_REQUIRE_CYTHON=1 but engine._ccore is not built (or is stale)"
        assert engine.Engine.__module__ == "engine._ccore"
        assert engine.Engine([], []).core_implementation == "cython"


# For a copy of the package: without the editable install's import hook, which
# would otherwise supply the modules the copy lacks from the checkout.
ISOLATE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
           "if not getattr(f, '__module__', '').startswith('__editable__')]; ")
SHOW = ("import engine; e = engine.Engine([], []); print(engine.__file__); "
        "print(engine.BOOK_IMPLEMENTATION, e.book_implementation, engine.CORE_IMPLEMENTATION, "
        "e.core_implementation, type(e).__module__)")


def test_pure_python_env_var_forces_reference_book_and_core():
    out = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True, check=True,
                         env={**os.environ, "EXCHANGE_PURE_PYTHON": "1"})
    assert out.stdout.split()[1:] == ["python", "python", "python", "python", "engine.core"]
    assert "RuntimeWarning" not in out.stderr       # asked for: no warning


def test_compiled_core_from_another_source_is_not_used(tmp_path):
    """Editing engine/core.py without rebuilding must not run the old compiled
    core: the package falls back to the source, with a warning."""
    if engine.CORE_IMPLEMENTATION != "cython":
        pytest.skip("engine._ccore is not built here")
    pkg = tmp_path / "engine"
    shutil.copytree(os.path.dirname(engine.__file__), pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("EXCHANGE_PURE_PYTHON", None)

    def show():
        out = subprocess.run([sys.executable, "-c", ISOLATE + SHOW], capture_output=True,
                             text=True, check=True, env=env, cwd=tmp_path)
        where, rest = out.stdout.splitlines()
        assert where == str(pkg / "__init__.py")       # the copy, not the installed package
        return rest.split(), out.stderr

    flags, err = show()                                 # the copy as built: compiled
    assert flags[2:] == ["cython", "cython", "engine._ccore"], (flags, err)
    with open(pkg / "core.py", "a") as f:
        f.write("\n# an edit after the build\n")
    flags, err = show()
    assert flags[2:] == ["python", "python", "engine.core"], flags
    assert "engine._ccore (the compiled engine core) is stale: compiled from another version" in err
    assert "_cbook" not in err                          # the kernel is fine: no word about it
    assert "Build with `pip install -e .`" in err       # a rebuild is the remedy here
    shutil.copy(os.path.join(os.path.dirname(engine.__file__), "core.py"), pkg / "core.py")
    assert show()[0][2:] == ["cython", "cython", "engine._ccore"]     # the source is back
    with open(pkg / "_ccore.pxd", "a") as f:            # its declarations count as source too
        f.write("\n# an edit after the build\n")
    flags, err = show()
    assert flags[2:] == ["python", "python", "engine.core"], flags
    assert "stale" in err
    (pkg / "_ccore.sha256").unlink()                   # no record of the source: not used either
    flags, err = show()
    assert flags[2:] == ["python", "python", "engine.core"], flags
    assert "stale" in err


def test_auto_picks_cython_when_built():
    e = engine.Engine([], [], book="auto")
    expected = "python" if os.environ.get("EXCHANGE_PURE_PYTHON", "") not in ("", "0") else BOOKS[-1]
    assert e.book_implementation == expected


@pytest.mark.parametrize("broken", ["compiler", "cython"])
def test_build_without_a_working_compiler_or_cython_still_installs(tmp_path, broken):
    """setup.py's build with a compiler that fails (or no Cython at all): it
    succeeds with a warning per module, leaves no module behind, and the
    package runs on pure Python."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(root, name), tmp_path)
    for name in ("engine", "ext"):
        shutil.copytree(os.path.join(root, name), tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c", "*.sha256"))
    env = {**os.environ, "CC": "/bin/false", "PYTHONPATH": str(tmp_path)}
    env.pop("EXCHANGE_PURE_PYTHON", None)
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
    if broken == "cython":      # Cython hidden: a module named Cython that cannot import
        (tmp_path / "Cython").mkdir()
        (tmp_path / "Cython" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for module in ("engine._cbook", "engine._ccore"):
        assert f"WARNING: {module}" in out.stderr, out.stderr[-2000:]
    assert not list((tmp_path / "engine").glob("*.so"))
    assert not (tmp_path / "engine" / "_ccore.sha256").exists()
    shown = subprocess.run([sys.executable, "-c", ISOLATE + SHOW], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True)
    where, flags = shown.stdout.splitlines()
    assert where == str(tmp_path / "engine" / "__init__.py")
    assert flags.split() == ["python", "python", "python", "python", "engine.core"]
    assert "engine._cbook (the Cython order book) is not built" in shown.stderr
    assert "engine._ccore (the compiled engine core) is not built" in shown.stderr


def test_command_struct_layout_is_checked_before_the_compiled_core_is_used(tmp_path):
    """The compiled core reads command fields straight from msgspec's slots
    (engine/_commands.pxd).  A package whose ReplaceOrder lays its slots out
    differently (same size: a field renamed so that it sorts last) must not run
    it: the probe in engine/__init__.py sees the fields come back wrong."""
    if engine.CORE_IMPLEMENTATION != "cython":
        pytest.skip("engine._ccore is not built here")
    from engine import _ccore, core
    assert engine._reads_commands_right(_ccore) and engine._reads_commands_right(core)

    for mod in (core, _ccore):                      # neither reads what is not a command
        with pytest.raises(TypeError):
            mod._fields_as_read(None)

    class Reader:                                   # a core that reads fields wrongly
        def __init__(self, change):
            self.change = change

        def _fields_as_read(self, c):
            read = core._fields_as_read(c)
            self.change(read)
            return read

    def swap(read):
        read["price"], read["qty"] = read["qty"], read["price"]

    def fail(read):
        raise RuntimeError("a core that cannot read the probe")
    assert not engine._reads_commands_right(Reader(swap))
    assert not engine._reads_commands_right(Reader(lambda read: read.pop("account")))
    assert not engine._reads_commands_right(Reader(lambda read: read.update(extra=None)))
    assert not engine._reads_commands_right(Reader(fail))
    assert engine._reads_commands_right(Reader(lambda read: None))

    pkg = tmp_path / "engine"
    shutil.copytree(os.path.dirname(engine.__file__), pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c"))
    text = (pkg / "messages.py").read_text()
    replace_order = "class ReplaceOrder(_Message):"
    head, tail = text.split(replace_order)
    fields = "    account: int\n    order_id: int\n"
    assert fields in tail
    tail = tail.replace(fields, "    z_account: int\n    order_id: int\n", 1)
    (pkg / "messages.py").write_text(head + replace_order + tail)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("EXCHANGE_PURE_PYTHON", None)
    out = subprocess.run([sys.executable, "-c", ISOLATE + SHOW], capture_output=True,
                         text=True, check=True, env=env, cwd=tmp_path)
    where, rest = out.stdout.splitlines()
    assert where == str(pkg / "__init__.py")
    assert rest.split()[2:] == ["python", "python", "engine.core"], (rest, out.stderr)
    assert "another layout of msgspec's command structs" in out.stderr
    assert "pip install -e" not in out.stderr       # a rebuild would not help here


def test_source_distribution_carries_what_the_build_needs(tmp_path):
    """An sdist (and so a wheel built from it) must hold every input of the
    compiled modules: without engine/_ccore.pxd the core would compile with
    no declarations, silently slower, and its stamp could not be checked."""
    import tarfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = tmp_path / "src"                  # a copy: sdist writes egg-info where it runs
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(os.path.join(root, name), src)
    for name in ("engine", "ext", "settlement"):
        shutil.copytree(os.path.join(root, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)],
                         cwd=src, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "EXCHANGE_PURE_PYTHON": "1"})   # no Extension listed
    assert out.returncode == 0, out.stderr[-2000:]
    (tarball,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(tarball) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    from engine import _stamp
    for needed in ("setup.py", "pyproject.toml", "ext/_cbook.pyx",
                   *[f"engine/{name}" for name in _stamp.SOURCES],
                   "settlement/migrations/0001_init.sql"):
        assert needed in names, needed
    assert not [n for n in names if n.endswith((".so", ".c", ".sha256"))]
