"""The architecture's promises, checked on the code itself (docs/architecture.md, "Layers"):

- imports run one way, pipeline and trainer <- stages <- steptool (the CLI); pipeline never imports trainer;
  no stage imports another stage; no import cycle among the modules (imports inside functions included);
- `steptool` has one subcommand per dvc.yaml stage, under the same name;
- every data path of dvc.yaml is one of pipeline/layout.py's and back, and no data path literal is written
  anywhere else in the code;
- the variant names are written once (pipeline/variants.py)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import REPO

PACKAGES = ("pipeline", "trainer", "stages", "steptool")
LAYER = {"pipeline": 0, "trainer": 1, "stages": 2, "steptool": 3}


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports, at any depth of its code."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_imports_run_one_way_and_have_no_cycle():
    graph = import_graph()
    wrong = [(m, n) for m, ns in graph.items() for n in ns
             if LAYER[n.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not wrong, f"imports against the layers (pipeline, trainer <- stages <- steptool): {wrong}"
    between_stages = [(m, n) for m, ns in graph.items() for n in ns if m.startswith("stages.") and n.startswith("stages.")]
    assert not between_stages, f"a stage imports another stage: {between_stages}"
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The graph reads imports inside functions too: a lazy `from stages.tasks import run` in the library
    would be caught."""
    src = (REPO / "pipeline/fsutil.py").read_text() + "\n\ndef _x():\n    from stages.tasks import run\n"
    fake = tmp_path / "repo"
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            dest = fake / f.relative_to(REPO)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(src if f.relative_to(REPO).as_posix() == "pipeline/fsutil.py" else f.read_text())
    assert "stages.tasks" in import_graph(fake)["pipeline.fsutil"]
    assert "stages.tasks" not in import_graph()["pipeline.fsutil"]


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_the_cli_has_every_dvc_stage_under_its_name():
    from steptool.cli import STAGES, build_parser

    assert list(STAGES) == list(_dvc()["stages"])
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(STAGES) <= set(sub.choices)
    for name in STAGES:  # each stage module is what dvc.yaml runs
        cmd = _dvc()["stages"][name].get("cmd") or _dvc()["stages"][name]["do"]["cmd"]
        launcher = "${train.launcher}" if name == "train" else "python"  # train: python or accelerate launch
        assert cmd.startswith(f"{launcher} -m stages.{name}"), cmd


def test_the_console_script_is_the_cli():
    import importlib

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["steptool"]
    module, func = target.split(":")
    from steptool.cli import main

    assert getattr(importlib.import_module(module), func) is main


def _dvc_paths(params) -> set[str]:
    """Every data/ and reports/ path in dvc.yaml, with ${item} and ${item.key} expanded for the foreach lists and
    matrices the params give (variants, train.seeds, evaluate.models, evaluate.strategies)."""
    import itertools

    from pipeline.config import to_dict

    raw = to_dict(params)
    out = set()

    def resolve(ref):  # "${train.seeds}" -> the params' list
        value = raw
        for key in re.fullmatch(r"\$\{([\w.]+)\}", ref).group(1).split("."):
            value = value[key]
        return value

    def expand(node, item):
        return re.sub(r"\$\{item(?:\.(\w+))?\}", lambda m: str(item[m.group(1)] if m.group(1) else item), node)

    def walk(node, items):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(k, items)
                walk(v, items)
        elif isinstance(node, list):
            for v in node:
                walk(v, items)
        elif isinstance(node, str) and re.match(r"^(data|reports)(/|$)", node):
            out.update(expand(node, item) for item in items)

    for name, stage in _dvc()["stages"].items():
        if "foreach" in stage:
            walk({k: v for k, v in stage["do"].items() if k != "cmd"}, resolve(stage["foreach"]))
        elif "matrix" in stage:
            axes = {k: resolve(v) for k, v in stage["matrix"].items()}
            items = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
            walk({k: v for k, v in stage.items() if k not in ("cmd", "matrix")}, items)
        else:
            walk({k: v for k, v in stage.items() if k != "cmd"}, [None])
    walk(_dvc().get("plots", []), [None])
    return out


def test_dvc_yaml_paths_are_the_layout_paths():
    from pipeline import layout
    from pipeline.config import load_params

    params = load_params(REPO / "params.yaml")
    ours = layout.dvc_paths(params.variants, params.evaluate.models, params.evaluate.strategies,
                             params.train.seeds)
    theirs = _dvc_paths(params)
    assert theirs - ours == set(), "dvc.yaml names paths that pipeline/layout.py does not hold"
    assert ours - theirs == set(), "pipeline/layout.py holds paths that dvc.yaml does not name"


DATA_LITERAL = re.compile(r"""["'](?:\./)?(?:data|reports)(?:/[^"']*)?["'](?!\s*:)""")


def test_no_data_path_literal_outside_the_layout():
    offenders = []
    for f in sorted(REPO.glob("*/**/*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith((".venv/", "build/", "mutants/")) or rel == "pipeline/layout.py":
            continue
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if DATA_LITERAL.search(line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "data paths belong to pipeline/layout.py:\n" + "\n".join(offenders)


def test_variant_names_are_written_once():
    from pipeline import variants

    offenders = []
    for f in sorted(REPO.glob("*/**/*.py")):
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith((".venv/", "build/", "mutants/", "tests/")) or rel == "pipeline/variants.py":
            continue
        text = f.read_text()
        for name in variants.NAMES:
            for m in re.finditer(rf"""(?<!prog=)["']{name}["']""", text):
                offenders.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1}: {name}")
    assert not offenders, "compare variant properties (pipeline/variants.py), not names:\n" + "\n".join(offenders)
