"""Which sources ``engine._ccore`` is compiled from, and their digest.

setup.py records ``digest()`` beside the module it builds (``STAMP``);
engine/__init__.py uses the compiled core only while the sources here still
have that digest.  Standard library only: setup.py loads this file by path,
before the package's dependencies exist.
"""
import hashlib
from pathlib import Path

SOURCES = ("core.py", "_ccore.pxd", "_commands.pxd")     # in engine/
STAMP = "_ccore.sha256"                 # a build output, not committed


def digest(folder) -> str:
    """sha256 over the sources in ``folder``, in order (OSError if one is missing)."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()
