"""Record in dvc.lock the current code deps of every locked stage (its import closure, pipeline/depgraph.py) with
their md5 and size: what `dvc commit -f` records for deps, for a machine that does not hold the run's outputs.

Use it only for a change that leaves every output as it was (a refactor, a docstring, a help text), after checking
that (the tests, or rerunning a stage where the outputs are): it says the locked outputs are what the new code
makes. Data deps and outs are left exactly as they are, and params too unless `--params`: then each locked
param's value is re-read from params.yaml (for a change that only added keys whose defaults change nothing). A
stage with no lock entry gets none (the next `dvc repro` runs it). Prints what it changed.

    .venv/bin/python scripts/relock_code_deps.py [--params]
"""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.depgraph import _stage_module, closure, is_code  # noqa: E402


def _entry(path: str) -> str:
    data = (REPO / path).read_bytes()
    return (f"    - path: {path}\n      hash: md5\n      md5: {hashlib.md5(data).hexdigest()}\n"
            f"      size: {len(data)}\n")


def relock(text: str, params: dict | None = None) -> tuple[str, list[str]]:
    head, body = text.split("stages:\n", 1)
    blocks = re.split(r"(?m)^(?=  \S[^\n]*:\n)", body)
    out, changed = [], []
    for block in blocks:
        m = re.match(r"  (\S+):\n    cmd: ([^\n]+)\n    deps:\n", block)
        if not m:
            out.append(block)
            continue
        start = m.end()
        end = re.search(r"(?m)^    (?!- )\S", block[start:])  # the next key (params, outs), not an entry
        end = start + end.start() if end else len(block)
        entries = re.split(r"(?m)^(?=    - path: )", block[start:end])
        kept = {re.match(r"    - path: (\S+)", e).group(1): e for e in entries if e.strip()}
        code = {p: _entry(p) for p in closure(_stage_module(m.group(2)), REPO)}
        new = {p: e for p, e in kept.items() if not is_code(p)} | code
        if {p: kept.get(p) for p in new} != new or set(kept) != set(new):
            changed.append(m.group(1))
        block = block[:start] + "".join(new[p] for p in sorted(new)) + block[end:]
        if params is not None:
            block, moved = _params(block, params)
            if moved and m.group(1) not in changed:
                changed.append(m.group(1))
        out.append(block)
    return head + "stages:\n" + "".join(out), changed


def _params(block: str, params: dict) -> tuple[str, bool]:
    """The stage block with its params.yaml values re-read from `params` (dotted keys looked up section by section)."""
    import yaml

    m = re.search(r"(?ms)^    params:\n      params.yaml:\n(.*?)(?=^    \S|\Z)", block)
    if not m:
        return block, False
    old = yaml.safe_load(m.group(1))
    new = {}
    for key in old:
        value = params
        for part in key.split("."):
            value = value[part]
        new[key] = value
    text = yaml.safe_dump(new, sort_keys=False, default_flow_style=False, width=1 << 20, allow_unicode=True)
    text = "".join(f"        {line}\n" for line in text.splitlines())
    return block[:m.start(1)] + text + block[m.end(1):], new != old


def main() -> int:
    import yaml

    lock = REPO / "dvc.lock"
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")) if "--params" in sys.argv else None
    text, changed = relock(lock.read_text(encoding="utf-8"), params)
    lock.write_text(text, encoding="utf-8")
    print("code deps re-recorded for: " + (", ".join(changed) if changed else "none (already current)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
