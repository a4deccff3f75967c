"""The architecture's promises, checked on the code itself (docs/architecture.md, "Layers"):

- imports run one way, pipeline and trainer <- stages <- steptool (the CLI); pipeline never imports trainer;
  no stage imports another stage; no import cycle among the modules (imports inside functions included);
- `steptool` has one subcommand per dvc.yaml stage, under the same name;
- every data path of dvc.yaml is one of pipeline/layout.py's and back, and no data path literal is written
  anywhere else in the code;
- the variant names are written once (pipeline/variants.py)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from pipeline import depgraph
from tests.conftest import REPO

PACKAGES = ("pipeline", "trainer", "stages", "steptool")
LAYER = {"pipeline": 0, "trainer": 1, "stages": 2, "steptool": 3}


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports, at any depth of its code."""
    return depgraph.import_graph(root, PACKAGES)


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
        # train and warmstart: python or accelerate launch
        launcher = f"${{{name}.launcher}}" if name in ("train", "warmstart") else "python"
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
        for name in variants.names():
            for m in re.finditer(rf"""(?<!prog=)["']{name}["']""", text):
                offenders.append(f"{rel}:{text[:m.start()].count(chr(10)) + 1}: {name}")
    assert not offenders, "compare variant properties (pipeline/variants.py), not names:\n" + "\n".join(offenders)


def test_dvc_code_deps_are_each_stages_import_closure():
    """dvc.yaml's code deps are exactly what each stage's process may import (pipeline/depgraph.py): change the
    rule judge and DVC reruns the stages that judge (tests/test_dvc_pipeline.py shows it), and nothing else."""
    assert depgraph.differences(REPO / "dvc.yaml") == []
    deps = {name: wanted for name, (_, wanted) in depgraph.stage_code_deps(REPO / "dvc.yaml").items()}
    judges = sorted(name for name, files in deps.items() if "pipeline/toolworld/fact_judge.py" in files)
    assert {"collect", "annotate", "advantages", "train", "evaluate"} <= set(judges)
    assert "pipeline/annotate/llm_judge.py" not in deps["collect"]  # collect plays; it does not annotate
    assert not any(f.startswith("pipeline/agent/") for f in deps["annotate"])


def test_the_deps_check_names_a_missing_and_an_extra_dep(tmp_path):
    for pkg in depgraph.PACKAGES:
        (tmp_path / pkg).symlink_to(REPO / pkg, target_is_directory=True)
    text = (REPO / "dvc.yaml").read_text()
    evaluate = text.index("\n  evaluate:")
    cut = text.index("      - pipeline/toolworld/fact_judge.py\n", evaluate)
    text = text[:cut] + text[cut:].replace("      - pipeline/toolworld/fact_judge.py\n", "", 1)
    text = text.replace("      - stages/report.py\n", "      - stages/report.py\n      - pipeline/sft.py\n", 1)
    (tmp_path / "dvc.yaml").write_text(text)
    lines = depgraph.differences(tmp_path / "dvc.yaml")
    assert len(lines) == 2, lines
    assert "stage evaluate: imports but does not list pipeline/toolworld/fact_judge.py" in lines[0]
    assert "stage report: lists but does not import pipeline/sft.py" in lines[1]
    (tmp_path / "dvc.yaml").write_text(depgraph.rewrite(tmp_path / "dvc.yaml"))
    assert depgraph.differences(tmp_path / "dvc.yaml") == []
    assert (tmp_path / "dvc.yaml").read_text() == (REPO / "dvc.yaml").read_text()  # comments and data deps kept


def test_the_closure_follows_lazy_relative_and_package_imports(tmp_path):
    files = {"stages/s.py": "def run():\n    from pipeline.sub import a\n",
             "pipeline/__init__.py": "", "pipeline/sub/__init__.py": "from . import b\n",
             "pipeline/sub/a.py": "from ..c import f\nimport json\n", "pipeline/sub/b.py": "",
             "pipeline/c.py": "def f():\n    import trainer.t\n", "trainer/__init__.py": "", "trainer/t.py": "",
             "pipeline/unused.py": "import pipeline.c\n"}
    for rel, src in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(src)
    assert depgraph.closure("stages.s", tmp_path) == [
        "pipeline/__init__.py", "pipeline/c.py", "pipeline/sub/__init__.py", "pipeline/sub/a.py", "pipeline/sub/b.py",
        "stages/s.py", "trainer/__init__.py", "trainer/t.py"]


def test_the_external_inputs_a_params_file_names_are_dvc_deps_of_the_stages_that_read_them(tmp_path):
    """tasks.stabletoolbench_path is a dep of tasks and env.replay_path of collect, train and evaluate, as DVC
    renders dvc.yaml with the params file: the StableToolBench profile's files under ../shared, the default's
    in-repo placeholder external/ (a dep must exist for `dvc repro` to run at all)."""
    import shutil
    import subprocess
    import sys

    from dvc.repo import Repo

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    for params, queries, replay in (
            (REPO / "params.yaml", "external", "external"),
            (None, "../shared/external/stabletoolbench/solvable_queries/test_instruction",
             "../shared/external/steptool/pass_rate_results")):
        if params is None:
            subprocess.run([sys.executable, "-m", "steptool", "params", "--profile",
                            str(REPO / "profiles/stabletoolbench.yaml"), "--write", str(tmp_path / "params.yaml")],
                           cwd=REPO, check=True, capture_output=True)
        else:
            shutil.copy(params, tmp_path / "params.yaml")
        deps = {s.name: {d.def_path for d in s.deps} for s in Repo(str(tmp_path)).index.stages}
        assert queries in deps["tasks"]
        readers = [name for name in deps if name.split("@")[0] in ("collect", "train", "evaluate")]
        assert readers and all(replay in deps[name] for name in readers)
        assert not any(replay in deps[name] for name in deps if name.split("@")[0] in ("annotate", "advantages"))
    assert (REPO / "external").is_dir()
