"""The benchmark harness behind ``paranorm bench`` and ``benchmarks/suite.py``: the cases
(:mod:`.zoo`), how each implementation is built and stepped (:mod:`.implementations`), timing
(:mod:`.timing`), statistics (:mod:`.stats`), the run (:mod:`.suite`) and its tables
(:mod:`.tables`). Not imported by ``import paranorm``."""

from .suite import bench_case as bench_case
from .suite import run_suite as run_suite
from .tables import markdown_table as markdown_table
from .tables import table_rows as table_rows
from .zoo import BENCH_THREADS as BENCH_THREADS
from .zoo import CASES as CASES
from .zoo import FULL as FULL
from .zoo import NORMS as NORMS
from .zoo import QUICK as QUICK
from .zoo import Case as Case
from .zoo import select_cases as select_cases

__all__ = [
    "BENCH_THREADS",
    "CASES",
    "FULL",
    "NORMS",
    "QUICK",
    "Case",
    "bench_case",
    "markdown_table",
    "run_suite",
    "select_cases",
    "table_rows",
]
