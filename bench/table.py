"""`python -m bench.table [results.json]`: the table of a finished run, printed again
(docs/benchmarks.md quotes it), from bench/results/latest.json unless told."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.run import RESULTS, print_table


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else RESULTS
    print_table(json.loads(path.read_text()))


if __name__ == "__main__":
    main(sys.argv[1:])
