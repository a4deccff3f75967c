"""`make bench` / `python -m bench [name ...]`: run the benchmarks (all by default)."""
from __future__ import annotations

import importlib
import sys

BENCHES = ["toolworld", "agent", "annotate", "rewards", "trainer", "viewer"]


def main(argv: list[str]) -> int:
    for name in argv or BENCHES:
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; available: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
