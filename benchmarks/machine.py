"""What a results file must say to be comparable: the machine, the software, the build.

``describe(database)`` returns the ``machine``, ``software``,
``implementations`` and ``database`` sections of a results file.  It only
reads (/proc, package metadata, ``git``); a value it cannot learn is None.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]
PACKAGES = ("exchange-core", "Cython", "msgspec", "uvloop", "asyncpg", "numpy", "hdrhistogram",
            "sortedcontainers", "rich", "matplotlib", "liquibook", "lightmatchingengine")


def describe(database: dict) -> dict:
    import engine
    return {
        "machine": machine(),
        "software": software(),
        "implementations": {"book": engine.BOOK_IMPLEMENTATION, "core": engine.CORE_IMPLEMENTATION},
        "database": database,
    }


def machine() -> dict:
    return {"cpu_model": _cpu_model(), "cores": os.cpu_count(), "memory_bytes": _memory_bytes(),
            "system": f"{platform.system()} {platform.release()}", "arch": platform.machine()}


def software() -> dict:
    out = {"python": platform.python_version(),
           "python_implementation": platform.python_implementation()}
    for name in PACKAGES:
        try:
            out[name.lower()] = version(name)
        except PackageNotFoundError:
            out[name.lower()] = None
    out.update(_git())
    return out


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _git() -> dict:
    """The checkout's commit and whether the work tree differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True,
                              timeout=30)
    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    if head.returncode != 0:
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": head.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
