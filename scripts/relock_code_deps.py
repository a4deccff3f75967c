"""Record in dvc.lock the current code deps of every locked stage (its import closure, pipeline/depgraph.py) with
their md5 and size: what `dvc commit -f` records for deps, for a machine that does not hold the run's outputs.

Use it only for a change that leaves every output as it was (a refactor, a docstring, a help text), after checking
that (the tests, or rerunning a stage where the outputs are): it says the locked outputs are what the new code
makes. Data deps and outs are left exactly as they are, and params too unless `--params`: then each locked
param's value is re-read from params.yaml (for a change that only added keys whose defaults change nothing). A data
dep that dvc.yaml lists and the lock lacks (a new input the outputs do not depend on for this params file, such as
the external/ placeholder of a path the default run never reads) is recorded as DVC hashes it. A stage with no lock
entry gets none (the next `dvc repro` runs it). `--rehash PATH` re-records a data dep the lock has (a folder of
configs whose README changed). `--skip PREFIX` leaves the stages whose lock name starts with it as they are: those
whose outputs the change does alter (a new column), which the next `dvc repro` must run again. Prints what it
changed.

    .venv/bin/python scripts/relock_code_deps.py [--params] [--rehash PATH ...] [--skip PREFIX ...]
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


def data_deps() -> dict[str, dict[str, str]]:
    """{stage as the lock names it: {dep path: its lock entry}} for every data dep of the rendered dvc.yaml, hashed
    by DVC itself (a folder's .dir hash, size and file count)."""
    import yaml
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    out: dict[str, dict[str, str]] = {}
    for stage in Repo(str(REPO)).index.stages:
        for dep in stage.deps:
            if isinstance(dep, ParamsDependency) or is_code(dep.def_path) or not Path(dep.fs_path).exists():
                continue
            dep.save()
            d = dep.dumpd()
            fields = {"path": d.pop("path"), "hash": d.pop("hash", "md5"), **d}
            text = yaml.safe_dump(fields, sort_keys=False, default_flow_style=False)
            lines = text.splitlines()
            out.setdefault(stage.name, {})[fields["path"]] = "".join(
                [f"    - {lines[0]}\n"] + [f"      {line}\n" for line in lines[1:]])
    return out


def relock(text: str, params: dict | None = None, data: dict | None = None,
           rehash: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> tuple[str, list[str]]:
    head, body = text.split("stages:\n", 1)
    blocks = re.split(r"(?m)^(?=  \S[^\n]*:\n)", body)
    out, changed = [], []
    for block in blocks:
        m = re.match(r"  (\S+):\n    cmd: ([^\n]+)\n    deps:\n", block)
        if not m or (skip and m.group(1).startswith(skip)):
            out.append(block)
            continue
        start = m.end()
        end = re.search(r"(?m)^    (?!- )\S", block[start:])  # the next key (params, outs), not an entry
        end = start + end.start() if end else len(block)
        entries = re.split(r"(?m)^(?=    - path: )", block[start:end])
        kept = {re.match(r"    - path: (\S+)", e).group(1): e for e in entries if e.strip()}
        code = {p: _entry(p) for p in closure(_stage_module(m.group(2)), REPO)}
        added = {p: e for p, e in (data or {}).get(m.group(1), {}).items() if p not in kept or p in rehash}
        new = {p: e for p, e in kept.items() if not is_code(p)} | added | code
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
    rehash = tuple(sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--rehash")
    skip = tuple(sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--skip")
    text, changed = relock(lock.read_text(encoding="utf-8"), params, data_deps(), rehash, skip)
    lock.write_text(text, encoding="utf-8")
    print("code deps re-recorded for: " + (", ".join(changed) if changed else "none (already current)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
