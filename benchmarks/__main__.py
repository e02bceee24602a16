"""``python -m benchmarks [--quick] [--scenario NAME] [--json FILE]``: the same as ``exchange bench``."""
import sys

from engine.service.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
