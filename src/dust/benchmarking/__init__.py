"""DuST's benchmark suite (``dust bench``): throughput, achieved FLOP rate against the machine's
matmul peak, data-loading rate and stage-1 memory, measured in one run on the current machine.

The measuring code lives here, inside the package, so ``dust bench`` works wherever DuST is
installed; ``benchmarks/suite.py`` in the repository is a thin script over it.
"""

from .suite import SuiteConfig, format_table, run_suite, write_json

__all__ = ["SuiteConfig", "format_table", "run_suite", "write_json"]
