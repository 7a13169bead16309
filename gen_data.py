"""The seed's `gen_data.py`: same flags and defaults, now `dust gen-data`."""

import sys
from pathlib import Path

try:
    from dust.cli import main
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from dust.cli import main

if __name__ == "__main__":
    sys.exit(main(["gen-data", *sys.argv[1:]]))
