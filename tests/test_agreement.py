"""The reference's judge prompt (`annotate.prompt: reference`) and `steptool judge-agreement`: the request as the
reference's annotator builds it, its own cache keys, the agreement measures by hand, and the command on the
reference's released examples against the scripted judge (a real HTTP server)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from pipeline.annotate.agreement import Labelling, agreement
from pipeline.annotate.llm_judge import REFERENCE_TEMPLATE, REFERENCE_TOOL, TOOL, OpenAIJudge
from pipeline.annotate.scripted_judge_server import JudgeServer, default_answer
from pipeline.config import AnnotateConfig
from tests.conftest import EXTERNAL
from tests.support.cli import steptool

EXAMPLES = EXTERNAL / "steptool/reward_annotation/qwen2_G123_example_5.json"


def test_agreement_by_hand():
    """Three steps over two trajectories: SC agrees on 1 of 3, |ΔCon| = (1 + 0 + 0)/3, statuses agree on the first
    trajectory only (1.0 and 1.0 Solved; 0.5 Unsure against 0.0 Unsolved); Pearson r of (5, 0, 3) and (4, 0, 3):
    with the means taken out, Σxy = 31/3, Σx² = 38/3, Σy² = 26/3, so r = 31/√988."""
    a = Labelling("a", sc=[[1.0, 0.0], [1.0]], con=[[5.0, 0.0], [3.0]], solved=[1.0, 0.5])
    b = Labelling("b", sc=[[1.0, 2 / 3], [0.0]], con=[[4.0, 0.0], [3.0]], solved=[1.0, 0.0])
    out = agreement(a, b)
    assert out["steps"] == 3 and out["trajectories"] == 2
    assert out["sc_agreement"] == round(1 / 3, 4)  # 2/3 of the votes say success: counted as a success
    assert out["contribution_mae"] == round(1 / 3, 4)
    assert out["contribution_r"] == round(31 / math.sqrt(988), 4) == 0.9862
    assert out["status_agreement"] == 0.5
    flat = Labelling("c", sc=[[1.0, 1.0], [1.0]], con=[[2.0, 2.0], [2.0]], solved=[1.0, 1.0])
    assert agreement(a, flat)["contribution_r"] is None  # a constant column has no correlation
    with pytest.raises(ValueError, match="different steps"):
        agreement(a, Labelling("d", sc=[[1.0], [1.0]], con=[[1.0], [1.0]], solved=[1.0, 1.0]))


def _traj(final="Paris is sunny, 21 C."):
    traj = {"traj_id": "t0", "finish_type": "give_answer", "final_answer": final}
    steps = [
        {"step_idx": 0, "api_name": "geo_lookup", "arguments_json": '{"city": "Paris"}', "is_finish": False,
         "observation": '{"error": "", "response": {"id": 7}}'},
        {"step_idx": 1, "api_name": "weather_now", "arguments_json": '{"id": 7}', "is_finish": False,
         "observation": '{"error": "", "response": {"sky": "sunny", "temp_c": 21}}'},
        {"step_idx": 2, "api_name": "Finish", "arguments_json": "{}", "is_finish": True, "observation": ""},
    ]
    return traj, steps


@pytest.fixture
def recording_judge(monkeypatch):
    """(every request the scripted judge was sent, a reference-prompt annotate section pointed at it)."""
    monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
    seen: list[dict] = []
    server = JudgeServer(answer=lambda req: (seen.append(req), default_answer(req))[1])
    yield seen, AnnotateConfig(annotator="openai", base_url=server.url, model="judge-test", n_votes=1,
                               api_key_env="STEPTOOL_TEST_JUDGE_KEY", prompt="reference")
    server.close()


def test_the_reference_prompt_is_sent_as_the_reference_sends_it(tmp_path, recording_judge):
    """One user message: the template with the query, the Python repr of the list of "Step k: {name, arguments,
    response}" strings and the final answer; the reference's function, forced. Its answers are cached under
    their own prompt version, so our prompt on the same trajectory is asked anew."""
    from pipeline.annotate.cache import JudgeCache

    seen, cfg = recording_judge
    traj, steps = _traj()
    query = "What is the weather in Paris?"
    cache = JudgeCache(tmp_path / "judge.sqlite")
    [label] = OpenAIJudge(cfg, cache).annotate([(traj, steps, query)], progress=False)
    assert [s.succ_calling for s in label.steps[:2]] == [1.0, 1.0] and label.is_solved == "Solved"
    assert label.prompt_version == "reference-prompt-121a6ac"
    [req] = seen
    expected = ("\nQuery:\nWhat is the weather in Paris?\n\nIntermediate Steps:\n"
                "['Step 1: {\\'name\\': \\'geo_lookup\\', \\'arguments\\': \\'{\"city\": \"Paris\"}\\', "
                "\\'response\\': \\'{\"error\": \"\", \"response\": {\"id\": 7}}\\'}', "
                "'Step 2: {\\'name\\': \\'weather_now\\', \\'arguments\\': \\'{\"id\": 7}\\', "
                "\\'response\\': \\'{\"error\": \"\", \"response\": {\"sky\": \"sunny\", \"temp_c\": 21}}\\'}']"
                "\n\nFinal Answer:\nParis is sunny, 21 C.\n\n")
    assert req["messages"] == [{"role": "user", "content": expected + REFERENCE_TEMPLATE[REFERENCE_TEMPLATE.index("Based on"):]}]
    assert req["tools"] == [REFERENCE_TOOL] and req["tool_choice"]["function"]["name"] == "evaluate_process_reward"
    ours = OpenAIJudge(dataclasses.replace(cfg, prompt="ours"), cache)
    [mine] = ours.annotate([(traj, steps, query)], progress=False)
    assert ours.stats["judge_calls"] == 1 and ours.stats["cache_hits"] == 0  # not the reference's answer
    assert seen[1]["messages"][0]["role"] == "system" and seen[1]["tools"] == [TOOL]
    assert [s.succ_calling for s in mine.steps[:2]] == [1.0, 1.0]


def test_a_cut_trajectory_keeps_every_call_and_sends_no_answer(tmp_path, recording_judge):
    """Without a Finish the reference's get_steps()[:-1] would drop the last call; ours keeps both calls (one
    label per step) and sends the empty final answer the converted answer has."""
    from pipeline.annotate.cache import JudgeCache

    seen, cfg = recording_judge
    traj, steps = _traj()
    traj = dict(traj, finish_type="none", final_answer=None)
    [label] = OpenAIJudge(cfg, JudgeCache(tmp_path / "j.sqlite")).annotate([(traj, steps[:2], "q")], progress=False)
    content = seen[0]["messages"][0]["content"]
    assert "'Step 2: " in content and "\n\nFinal Answer:\n\n\nBased on" in content
    assert len(label.steps) == 2 and label.is_solved == "Unsolved"


@pytest.mark.skipif(not EXAMPLES.exists(), reason=f"{EXAMPLES} absent (the shared external data)")
def test_judge_agreement_on_the_released_examples(tmp_path, monkeypatch):
    """Both prompts through the scripted judge (which answers both by the same rule, so they agree exactly: the
    reference's steps were read back from its repr), against the released GPT-4 labels; the released runs'
    agreement with each other is the ceiling row; a rerun is answered from the cache."""
    server = JudgeServer()
    try:
        params = tmp_path / "params.yaml"
        params.write_text(json.dumps({"annotate": {"annotator": "openai", "base_url": server.url, "n_votes": 2,
                                                   "api_key_env": "STEPTOOL_TEST_JUDGE_KEY", "concurrency": 4, "max_retries": 12,
                                                   "cache_path": str(tmp_path / "judge.sqlite")},
                                      "rewards": {"shaping": "min_form"}}))
        monkeypatch.setenv("STEPTOOL_TEST_JUDGE_KEY", "k")
        out = tmp_path / "agreement.json"
        proc = steptool("judge-agreement", str(EXAMPLES), "--params", params, "--out", out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "| ours vs reference | 1.000 | 0.000 | 1.000 | 1.000 |" in proc.stdout
        result = json.loads(out.read_text())
        assert result["partial_trajectories"] == {"ours": 0, "reference": 0}, result["vote_failures"]
        assert result["judge_calls"] == {"ours": 10, "reference": 10}  # 5 trajectories x 2 votes each
        pairs = {p["pair"]: p for p in result["pairs"]}
        assert pairs["ours vs released"]["trajectories"] == 5 and pairs["ours vs released"]["steps"] == 11
        ceiling = pairs["released runs with each other (3 pairs, mean)"]
        assert 0 < ceiling["sc_agreement"] <= 1 and ceiling["contribution_mae"] > 0
        again = steptool("judge-agreement", str(EXAMPLES), "--params", params, "--out", out, cwd=tmp_path)
        assert again.returncode == 0 and json.loads(out.read_text())["judge_calls"] == {"ours": 0, "reference": 0}
    finally:
        server.close()
