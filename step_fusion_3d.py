"""The seed's `step_fusion_3d.py`: same flags and defaults, now `dust train-video`."""

import sys
from pathlib import Path

try:
    from dust.cli import main
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from dust.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-video", *sys.argv[1:]]))
