"""DuST's benchmark suite as a script: the same table as ``dust bench``.

    python benchmarks/suite.py --quick            # a few minutes on a 2-core CPU
    python benchmarks/suite.py --json bench.json  # the full suite, figures also as JSON

The measuring code is ``dust.benchmarking`` (inside the package, so ``dust bench`` works
wherever DuST is installed); see benchmarks/README.md for what each row means.
"""

from __future__ import annotations

import sys

from dust.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
