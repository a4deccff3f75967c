"""Per-module mutation scores from `mutmut results --all true` (make mutation; docs/mutation.md).

A mutant counts as caught when a test failed (killed) or the tests ran past mutmut's timeout; `survived` and
`no tests` (no selected test reaches the mutated function) count against the score; `not checked` (the run
stopped before it) is reported but left out. Prints a Markdown table, and the surviving mutants' names.
"""
from __future__ import annotations

import collections
import re
import subprocess
import sys

CAUGHT = ("killed", "timeout")
MISSED = ("survived", "no tests", "suspicious", "segfault")


def parse(text: str) -> dict[str, collections.Counter]:
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in text.splitlines():
        # functions are x_<name>, methods xǁ<Class>ǁ<name> (mutmut 3's trampolines)
        m = re.match(r"\s*([\w.]+?)\.x[_ǁ]\S*?__mutmut_\d+: (.+)$", line)
        if m:
            by_module[m.group(1)][m.group(2).strip()] += 1
    return by_module


def table(by_module: dict[str, collections.Counter]) -> str:
    lines = ["| module | mutants | killed | timeout | survived | no tests | not checked | score |",
             "|---|---|---|---|---|---|---|---|"]
    for mod, c in sorted(by_module.items()):
        caught = sum(c[k] for k in CAUGHT)
        judged = caught + sum(c[k] for k in MISSED)
        score = f"{100 * caught / judged:.1f}%" if judged else "–"
        lines.append(f"| {mod} | {sum(c.values())} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{c['no tests']} | {c['not checked']} | {score} |")
    return "\n".join(lines)


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    print(table(parse(out)))
    survivors = [ln.split(":")[0].strip() for ln in out.splitlines() if ln.strip().endswith(("survived", "no tests"))]
    if survivors:
        print("\nNot caught (`mutmut show NAME` prints the diff):\n" + "\n".join(f"- {s}" for s in survivors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
