"""The repository's import graph, read from the source (no module is imported), and the code deps of every
`dvc.yaml` stage derived from it (docs/architecture.md, "Data flow": a stage's code deps are exactly the
repository files its process may import).

Every `import` counts, at module level or inside a function: DVC must rerun a stage when any code it may run
changes, and which function-level imports run depends on the params. So does a registry's
`ANNOTATORS.implementation(name)` (pipeline/registry.py): it imports one of the registered implementations, so
every registered one counts. Importing `pipeline.agent.play` runs
`pipeline/__init__.py` and `pipeline/agent/__init__.py` first, so a package's `__init__.py` is in the closure of
each of its modules. A module's `<name>_assets/` folder (files it reads as code: the viewer's page) is part of it. `steptool dvc-deps --check` compares dvc.yaml with the graph; `--write` rewrites the code
part of each stage's deps (data and config deps stay as written)."""
from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

from pipeline.errors import SteptoolError
from pipeline.registry import REGISTRIES

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "trainer", "stages")  # the repository's importable code (steptool/ is the CLI only)


def module_file(name: str, root: Path = REPO) -> Path | None:
    """The file that `import name` runs (a package's __init__.py), or None when it is not repository code."""
    if name.split(".")[0] not in PACKAGES:
        return None
    p = root.joinpath(*name.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, root: Path = REPO) -> tuple[str, ...]:
    """Every module name `path` imports anywhere in it (`from a import b` names both a and a.b: b may be a
    module), relative imports resolved."""
    return _imported_modules(path, root, path.stat().st_mtime_ns)


@lru_cache(maxsize=None)
def _imported_modules(path: Path, root: Path, mtime_ns: int) -> tuple[str, ...]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise SteptoolError(f"{path}: not valid Python ({e.msg}, line {e.lineno})") from None
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "implementation" and isinstance(node.func.value, ast.Name)
              and node.func.value.id in REGISTRIES):  # ANNOTATORS.implementation(name): any registered one
            names.update(p.implementation.partition(":")[0] for p in REGISTRIES[node.func.value.id].parts.values())
    return tuple(sorted(names))


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Every module of `packages` (top-level folders of `root`) -> the modules of `packages` it imports anywhere
    in its code (the graph the layering test reads)."""
    files = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            files[_module_name(f, root)] = f
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for name in imported_modules(path, root):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != mod:
                graph[mod].add(name)
    return graph


def closure(module: str, root: Path = REPO) -> list[str]:
    """The repository files (relative, sorted) that `python -m module` may import, its own file included."""
    start = module_file(module, root)
    if start is None:
        raise SteptoolError(f"{module}: no such module in {root}")
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in imported_modules(f, root):
            parts = name.split(".")
            for k in range(1, len(parts) + 1):  # a.b.c runs a/__init__.py and a/b/__init__.py first
                dep = module_file(".".join(parts[:k]), root)
                if dep is not None and dep not in seen:
                    todo.append(dep)
    assets = {a for f in seen for a in assets_of(f)}
    return sorted(p.relative_to(root).as_posix() for p in seen | assets)


def assets_of(module: Path) -> list[Path]:
    """The files a module reads at run time as part of its code: those under the sibling folder
    `<module>_assets/` (pipeline/viewer.py's page, script and style in pipeline/viewer_assets/)."""
    folder = module.with_name(module.stem + "_assets")
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts) if folder.is_dir() else []


def _stage_module(cmd: str) -> str:
    m = re.search(r"-m\s+(stages\.\w+)", cmd)
    if not m:
        raise SteptoolError(f"dvc.yaml: the command {cmd!r} runs no `-m stages.<name>` module")
    return m.group(1)


def is_code(dep: str) -> bool:
    """Whether a dvc.yaml dep is repository code (a file or folder under one of PACKAGES), not data or config."""
    return dep.split("/")[0] in PACKAGES


def stage_code_deps(dvc_yaml: Path) -> dict[str, tuple[list[str], list[str]]]:
    """{stage: (the code deps dvc.yaml lists, the code its module may import)} for every stage of `dvc_yaml`."""
    import yaml

    root = dvc_yaml.parent
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        listed = [d for d in body.get("deps", []) if isinstance(d, str) and is_code(d)]
        out[name] = (listed, closure(_stage_module(body["cmd"]), root))
    return out


def differences(dvc_yaml: Path) -> list[str]:
    """One line per stage whose code deps are not exactly its import closure (empty when they all are)."""
    lines = []
    for name, (listed, wanted) in stage_code_deps(dvc_yaml).items():
        missing = sorted(set(wanted) - set(listed))
        extra = sorted(set(listed) - set(wanted))
        if missing or extra or listed != wanted:
            what = []
            if missing:
                what.append(f"imports but does not list {', '.join(missing)}")
            if extra:
                what.append(f"lists but does not import {', '.join(extra)}")
            if not what:
                what.append("lists its code out of order")
            lines.append(f"{dvc_yaml}: stage {name}: {'; '.join(what)}")
    return lines


def rewrite(dvc_yaml: Path) -> str:
    """dvc.yaml's text with each stage's code deps replaced by its import closure, in place of the first code
    dep (comments, data and config deps, and everything else kept as written)."""
    deps = {name: wanted for name, (_, wanted) in stage_code_deps(dvc_yaml).items()}
    out: list[str] = []
    stage = None
    in_deps = False
    indent = ""
    for line in dvc_yaml.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage, in_deps = m.group(1), False
        item = re.match(r"^(\s+)- (\S+)\s*$", line)
        if re.match(r"^\s+deps:\s*$", line):
            in_deps, indent = True, ""
            out.append(line)
            continue
        if in_deps and item:
            if is_code(item.group(2)):
                if not indent:  # the first code dep: the whole closure goes here
                    indent = item.group(1)
                    out += [f"{indent}- {d}" for d in deps[stage]]
                continue
            out.append(line)
            continue
        in_deps = False
        out.append(line)
    return "\n".join(out) + "\n"
