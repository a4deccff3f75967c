"""params.yaml: typed, with one-line errors that name the key."""
from __future__ import annotations

import re

import pytest
import yaml

from pipeline.config import Params, describe, load_params, parse_params
from pipeline.errors import ConfigError
from tests.conftest import REPO


def test_the_repository_params_are_valid_and_cover_every_knob():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, help_, _ in describe():
        section, *rest = key.split(".")
        node = raw[section]
        for part in rest:
            assert part in node, f"params.yaml lacks {key}: every knob is written out with a comment"
            node = node[part]
        assert help_, f"{key} has no help text"


@pytest.mark.parametrize("raw, message", [
    ({"toolworld": {"sede": 1}}, "unknown key 'toolworld.sede' (allowed: seed, "),
    ({"bogus": {}}, "unknown key 'bogus'"),
    ({"toolworld": {"seed": "abc"}}, "toolworld.seed must be an integer, got str 'abc'"),
    ({"toolworld": {"seed": True}}, "toolworld.seed must be an integer, got bool True"),
    ({"toolworld": {"rate_limit_prob": 1.5}}, "toolworld.rate_limit_prob must be in [0, 1), got 1.5"),
    ({"tasks": {"train": {"I4": 3}}}, "unknown key 'tasks.train.I4'"),
    ({"tasks": {"train": {"I1": -1}}}, "tasks.train.I1 must be >= 0, got -1"),
    ({"tasks": {"train": 5}}, "tasks.train must be a mapping"),
    ({"env": {"kind": "docker"}}, "env.kind must be one of 'toolworld', 'http', 'replay', got 'docker'"),
    ({"base_model": {"dtype": "int8"}}, "base_model.dtype must be one of"),
    ([1, 2], "the top level must be a mapping"),
])
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_params(raw, "params.yaml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert str(e.value).startswith("params.yaml: ")


def test_defaults_fill_missing_keys_and_ints_are_numbers():
    p = parse_params({"toolworld": {"rate_limit_prob": 0}})
    assert p.toolworld.rate_limit_prob == 0.0 and isinstance(p.toolworld.rate_limit_prob, float)
    assert p.toolworld.seed == 1234 and p.tasks.train.I1 == 80


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("toolworld:\n  seed: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "missing.yaml")


def test_gpu_profile_is_a_valid_params_file_at_scale():
    from pipeline.config import load_params
    from tests.conftest import REPO

    gpu = load_params(REPO / "profiles/gpu.yaml")
    cpu = load_params(REPO / "params.yaml")
    assert gpu.tasks.train.total() >= 20 * cpu.tasks.train.total()
    assert gpu.base_model.dtype == "bfloat16" and gpu.warmstart.lora and gpu.train.lora
    assert gpu.collect.max_tasks == 0 and gpu.evaluate.tasks_per_level["cot"] == 0 and gpu.evaluate.samples == 3
    assert gpu.evaluate.temperature > 0  # several samples must be able to differ
    # the GPU runs the paper's whole ablation, and every model the CPU default evaluates
    paper = {"steptool", "no_step_reward", "no_step_opt", "ppo_outcome"}  # not the registry: a fifth variant
    assert set(gpu.variants) == paper and set(cpu.variants) <= set(gpu.variants)  # needs no profile
    assert set(gpu.evaluate.models) == {"base", "sft", *paper} >= set(cpu.evaluate.models)


def test_params_yaml_states_the_dataclass_defaults():
    """The dataclasses are the defaults; params.yaml writes every one of them out, with the same value, and is
    exactly what `steptool params --write` renders from them (comments included: no second copy of the helps)."""
    from pipeline.config import overrides, render_params, to_dict

    params = load_params(REPO / "params.yaml")
    assert overrides(params) == {}, "params.yaml and the dataclass defaults differ"
    assert to_dict(params) == to_dict(Params())
    assert (REPO / "params.yaml").read_text(encoding="utf-8") == render_params(Params()), (
        "params.yaml is not the rendered defaults: `steptool params --write params.yaml` renders it")


@pytest.mark.parametrize("text, first", [
    ("Seed of the world. More.", "Seed of the world"),
    ("The judge (e.g. gpt-4o). Then more.", "The judge (e.g. gpt-4o)"),
    ("Use i.e. this, vs. that. Next.", "Use i.e. this, vs. that"),
    ("A rate of 0.5 per call. Next.", "A rate of 0.5 per call"),
    ("One sentence only.", "One sentence only"),
    ("No stop at all", "No stop at all"),
])
def test_first_sentence_of_a_help_keeps_abbreviations_and_numbers(text, first):
    from pipeline.config import first_sentence

    assert first_sentence(text) == first


def test_profiles_hold_only_overrides_of_known_keys():
    from pipeline.config import overrides

    for profile in sorted((REPO / "profiles").glob("*.yaml")):
        raw = yaml.safe_load(profile.read_text())
        params = load_params(profile)  # an unknown key or a bad value is a ConfigError naming it
        assert raw == overrides(params), f"{profile.name} repeats a default or misses an override"
        assert raw, f"{profile.name} changes nothing"


def test_params_lists_the_true_defaults_of_nested_sections():
    rows = {key: default for key, _, default in describe()}
    assert rows["tasks.train.I1"] == Params().tasks.train.I1 == 80
    assert rows["tasks.test.I3"] == 25
    assert rows["train.num_train_epochs"] == Params().train.num_train_epochs == 2


def test_a_written_params_file_is_complete_and_loads_back(tmp_path):
    """`steptool params --profile P --write F`: every key (DVC needs them all), the profile's values, and the
    file loads back to the same params."""
    from pipeline.config import render_params, to_dict

    gpu = load_params(REPO / "profiles/gpu.yaml")
    out = tmp_path / "params.yaml"
    out.write_text(render_params(gpu))
    raw = yaml.safe_load(out.read_text())
    assert set(raw) == set(to_dict(gpu)) and set(raw["train"]) == set(to_dict(gpu.train))
    assert to_dict(load_params(out)) == to_dict(gpu)
    assert raw["base_model"]["source"] == "Qwen/Qwen2.5-7B-Instruct" and raw["variants"] == gpu.variants


@pytest.mark.parametrize("raw, message", [
    ({"variants": ["steptool", "nope"]}, "unknown variant 'nope'"),
    ({"variants": ["steptool", "steptool"]}, "each variant at most once"),
    ({"train": {"ppo_epochs": 2}}, "unknown key 'train.ppo_epochs'"),
    ({"train": {"cliprange": 0}}, "train.cliprange must be > 0"),
    ({"collect": {"strategy": "bfs"}}, "collect.strategy must be one of 'cot', 'dfsdt', got 'bfs'"),
    ({"evaluate": {"strategies": ["cot", "bfs"]}}, "evaluate.strategies[1] must be one of 'cot', 'dfsdt', got 'bfs'"),
    ({"evaluate": {"strategies": ["cot", "cot"]}}, "evaluate.strategies must name each strategy once"),
    ({"evaluate": {"tasks_per_level": {"bfs": 2}}}, "evaluate.tasks_per_level has an unknown strategy 'bfs'"),
    ({"evaluate": {"tasks_per_level": {"cot": -1}}}, "evaluate.tasks_per_level.cot must be >= 0, got -1"),
    ({"evaluate": {"tasks_per_level": {"cot": "all"}}}, "evaluate.tasks_per_level.cot must be an integer"),
    ({"evaluate": {"tasks_per_level": [1, 2]}}, "evaluate.tasks_per_level must be a mapping"),
    ({"train": {"name_logprobs": "constrained", "old_logprobs": "behaviour"}},
     "train.name_logprobs constrained needs old_logprobs: recompute"),
    ({"train": {"name_logprobs": "constrained"}, "agent": {"constrain_names": False}},
     "train.name_logprobs: constrained needs agent.constrain_names: true"),
])
def test_variants_and_train_keys_are_checked(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_params(raw, "params.yaml")
    assert message in str(e.value)


def test_a_nested_mapping_given_in_part_keeps_the_other_keys_defaults():
    """`tasks_per_level: {cot: 0}` changes CoT only: DFSDT keeps the section's default (4), not the nested class's."""
    from pipeline.config import parse_params

    assert parse_params({"evaluate": {"tasks_per_level": {"cot": 0}}}).evaluate.tasks_per_level == {"cot": 0, "dfsdt": 4}
    assert parse_params({}).evaluate.tasks_per_level == {"cot": 12, "dfsdt": 4}


def test_the_openai_backend_plays_checkpoints_inside_the_train_stage_only_as_lora_adapters(tmp_path):
    """Rounds and the replay with the openai backend: refused for a full fine-tune (no server serves the new
    weights), accepted under LoRA (the server loads each adapter)."""
    import yaml

    from pipeline.config import load_params
    from pipeline.errors import ConfigError

    for extra, key in (({"train": {"rounds": 2}}, "train.rounds > 1"), ({"collect": {"replay": True}}, "collect.replay")):
        f = tmp_path / "params.yaml"
        f.write_text(yaml.safe_dump({"agent": {"backend": "openai"}, **extra}))
        with pytest.raises(ConfigError, match=f"{key}.*needs train.lora: true"):
            load_params(f)
        lora = {**extra, "train": {**extra.get("train", {}), "lora": True}}
        f.write_text(yaml.safe_dump({"agent": {"backend": "openai"}, **lora}))
        assert load_params(f).train.lora


def test_reward_params_are_checked_against_the_annotator():
    """progress shaping reads the oracle's progress column: another annotator is refused with one line."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["rewards"]["shaping"] = "progress"
    assert parse_params(raw, "params.yaml").rewards.shaping == "progress"  # with the oracle
    raw["annotate"]["annotator"] = "heuristic"
    with pytest.raises(ConfigError, match="rewards.shaping: progress needs .* oracle"):
        parse_params(raw, "params.yaml")
    for key, value, says in (("step_scale", -1.0, "rewards.step_scale must be >= 0"),
                             ("audit_max_share", 1.5, "rewards.audit_max_share must be in [0, 1]"),
                             ("shaping", "sum", "rewards.shaping must be one of")):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["rewards"][key] = value
        with pytest.raises(ConfigError, match=re.escape(says)):
            parse_params(raw, "params.yaml")
    for key in ("lam", "token_lam"):
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        raw["train"][key] = 1.5
        with pytest.raises(ConfigError, match=re.escape(f"train.{key} must be in [0, 1], got 1.5")):
            parse_params(raw, "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["gamma"] = 0.9  # the one γ is rewards.gamma
    with pytest.raises(ConfigError, match="unknown key 'train.gamma'"):
        parse_params(raw, "params.yaml")


def _spellings(value: float) -> list[str]:
    """`value` as YAML 1.2 and DVC (ruamel) may write it, none of which PyYAML's 1.1 safe loader reads as a float:
    an integer mantissa with an exponent (0.15 -> 15e-2), the exponent upper-cased, and ruamel's own dump."""
    import io
    from decimal import Decimal

    import ruamel.yaml

    sign, digits, exp = Decimal(repr(value)).as_tuple()
    mantissa = ("-" if sign else "") + ("".join(map(str, digits)) or "0")
    buf = io.StringIO()
    ruamel.yaml.YAML().dump({"v": value}, buf)
    return [f"{mantissa}e{exp}", f"{mantissa}E{exp:+d}", buf.getvalue().split(":", 1)[1].strip()]


def test_every_float_param_loads_in_any_yaml_spelling(tmp_path):
    """`dvc exp run -S train.learning_rate=5e-6` writes `5e-06` (ruamel, YAML 1.2); every float key of every
    section loads from that spelling and the others as the same float, not a string."""
    import io

    import ruamel.yaml

    buf = io.StringIO()
    ruamel.yaml.YAML().dump({"learning_rate": 5e-6}, buf)
    assert buf.getvalue().strip() == "learning_rate: 5e-06"  # what DVC writes
    floats = [(key, default) for key, _, default in describe() if isinstance(default, float)]
    assert len(floats) > 20
    f = tmp_path / "params.yaml"
    for key, default in floats:
        *path, leaf = key.split(".")
        for spelling in _spellings(default):
            text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(path)) + f"{'  ' * len(path)}{leaf}: {spelling}\n"
            f.write_text(text)
            node = load_params(f)
            for part in key.split("."):
                node = getattr(node, part)
            assert node == default and isinstance(node, float), (key, spelling, node)


@pytest.mark.parametrize("text, message", [
    ("train:\n  seeds: [0]\n  learning_rate: 1e-5\ntrain:\n  rounds: 2\n", "line 4 is not valid YAML: duplicate key 'train' (first on line 1)"),
    ("collect:\n  n_samples: 2\n  n_samples: 4\n", "line 3 is not valid YAML: duplicate key 'n_samples' (first on line 2)"),
    ("", "empty: a params file holds at least one section (`steptool params` lists them)"),
    ("# only a comment\n", "empty: a params file holds at least one section (`steptool params` lists them)"),
])
def test_duplicate_keys_and_empty_files_are_errors(tmp_path, text, message):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert str(e.value) == f"{f}: {message}"


def test_a_folder_or_a_device_is_not_a_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        load_params(tmp_path)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_params("/dev/zero")  # would be read forever
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" + "#" * (5 << 20))
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        load_params(big)
