"""Bad inputs at stage boundaries: each is refused with one line naming the file, the record and the field
(exit 2 from the CLI), nothing half-written, and the previous outputs intact (docs/architecture.md, "Crash safety")."""
from __future__ import annotations

import re

import pytest

from pipeline import layout
from pipeline.schema import ANNOTATED_STEPS, read_table, write_table
from tests.conftest import REPO
from tests.support.cli import one_error_line, steptool


def _rows():
    """Two trajectories, annotated as the annotate stage writes them: a call then Finish, and one cut call."""
    def row(t, k, last, sc=1.0, con=3.0, score=None, status=None, progress=1.0):
        return {"traj_id": t, "task_id": "task", "step_idx": k, "prompt_text": "p", "action_text": "a", "thought": "",
                "api_name": "Finish" if last and t == "a" else "f", "arguments_json": "{}", "parse_ok": True,
                "observation": "{}", "is_finish": last and t == "a", "finish_type": "give_answer" if last else "none",
                "final_answer": "x" if last else None, "prompt_tokens": 1, "action_tokens": 1,
                "behaviour_logprob": -1.0, "parse_error": "", "env_status": "ok",
                "succ_calling": None if last and t == "a" else sc, "contribution": None if last and t == "a" else con,
                "progress": progress, "is_solved": status, "is_solved_score": score, "sc_rule": 1, "sc_reason": "", "annotator": "oracle",
                "judge_model": None, "prompt_version": "v", "votes": 1, "vote_details": None, "cache_hits": 0}
    return [row("a", 0, False), row("a", 1, True, score=1.0, status="Solved"),
            row("b", 0, True, score=0.0, status="Unsolved", progress=0.0)]


def _cli(*args, cwd):
    """A stage through the command line, with the repository's params, on the data under `cwd`."""
    return steptool(*args, "--params", REPO / "params.yaml", "--root", cwd, cwd=cwd)


def _bad(rows, i, **change):
    rows = [dict(r) for r in rows]
    rows[i].update(change)
    return rows


@pytest.mark.parametrize("name, rows, says", [
    ("nan contribution", _bad(_rows(), 0, contribution=float("nan")), "record 0 field 'contribution' must be in [0, 5]"),
    ("inf is_solved_score", _bad(_rows(), 1, is_solved_score=float("inf")), "record 1 field 'is_solved_score'"),
    ("contribution 500", _bad(_rows(), 0, contribution=500.0), "got 500.0"),
    ("succ_calling 2", _bad(_rows(), 0, succ_calling=2.0), "field 'succ_calling' must be in [0, 1]"),
    ("bad status", _bad(_rows(), 1, is_solved="Maybe"), "field 'is_solved' must be one of"),
    ("duplicated step", _rows() + [_rows()[0]], "records 0 and 3 share {'traj_id': 'a', 'step_idx': 0}"),
    ("missing Finish row", [r for r in _rows() if not (r["traj_id"] == "a" and r["step_idx"] == 1)],
     "record 0 (traj_id 'a', step 0 of 1) lacks 'is_solved_score'"),
    ("gap in steps", _bad(_rows(), 1, step_idx=2), "traj_id 'a' has steps [0, 2], not 0..1"),
    # before: a call without labels counted as no call, reward 0 (mean reward 0.79 -> 0.18 on a real table)
    ("null succ_calling on a call", _bad(_rows(), 0, succ_calling=None),
     "record 0 (trajectory a, step 0) field 'succ_calling' is null on a tool call"),
    ("null contribution on a cut call", _bad(_rows(), 2, contribution=None),
     "record 2 (trajectory b, step 0) field 'contribution' is null on a tool call"),
])
def test_advantages_refuses_bad_annotations_inone_error_line(tmp_path, name, rows, says):
    """In process (the stage's `run`); the exit code and the single stderr line of the command line are checked
    once, for the first case, since a subprocess costs ~1.5 s."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.config import load_params
    from pipeline.errors import SteptoolError
    from stages import advantages

    src = tmp_path / layout.table(layout.annotated_dir(0), "steps")
    src.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ANNOTATED_STEPS), src)  # written around the checks, as a
    out = tmp_path / layout.advantages_file("steptool", 0)                      # hand-edited or foreign file would be
    out.parent.mkdir(parents=True)
    out.write_bytes(b"previous output")
    if name == "nan contribution":
        line = one_error_line(_cli("advantages", "steptool", cwd=tmp_path))
    else:
        with pytest.raises(SteptoolError) as e:
            advantages.run(load_params(REPO / "params.yaml"), tmp_path, "steptool")
        line = str(e.value)
        assert "\n" not in line
    assert str(src) in line and says in line, line
    assert out.read_bytes() == b"previous output"  # nothing replaced, nothing half-written
    with pytest.raises(Exception, match="must|share|lacks|not 0|is null"):
        write_table(rows, tmp_path / "again.parquet", ANNOTATED_STEPS)  # and no writer can produce it
    assert not (tmp_path / "again.parquet").exists()


def test_good_annotations_pass_and_empty_ones_are_an_error(tmp_path):
    src = tmp_path / layout.table(layout.annotated_dir(0), "steps")
    write_table(_rows(), src, ANNOTATED_STEPS)
    assert read_table(src, ANNOTATED_STEPS).num_rows == 3
    assert _cli("tasks", cwd=tmp_path).returncode == 0  # the reward audit scripts the train tasks in their world
    proc = _cli("advantages", "steptool", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    write_table([], src, ANNOTATED_STEPS)
    assert "no annotated step" in one_error_line(_cli("advantages", "steptool", cwd=tmp_path))


# ---- servers: slow clients, bad Content-Length, big bodies, many connections ------------------------------

def _raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while True:
                c = s.recv(65536)
                if not c:
                    break
                chunks.append(c)
        except TimeoutError:
            pass
        return b"".join(chunks)


def _healthy(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status == 200


def test_tool_server_survives_malformed_slow_and_many_clients(world, monkeypatch):
    import socket
    import time

    from pipeline.toolworld import server as tool_server

    monkeypatch.setattr(tool_server, "READ_TIMEOUT_S", 1.0)
    srv, url = tool_server.serve_in_thread(world)
    port = srv.server_address[1]
    health = url.replace("/virtual", "/health")
    try:
        head = b"POST /virtual HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        for cl, code in ((b"-1", b"400"), (b"abc", b"400"), (b"99999999", b"413")):
            assert _raw(port, head + b"Content-Length: " + cl + b"\r\n\r\n{}").split(b" ")[1] == code
            assert _healthy(health)
        assert _raw(port, head + b"\r\n").split(b" ")[1] == b"411"
        big = b"x" * (3 << 20)
        assert _raw(port, head + b"Content-Length: %d\r\n\r\n" % len(big) + big[:1000]).split(b" ")[1] == b"413"
        # 300 clients that send half a request and then nothing: the server still answers, and drops them
        held = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head + b"Content-Length: 100\r\n\r\n{\"cat")
            held.append(s)
        assert _healthy(health)
        time.sleep(1.5)
        closed = 0
        for s in held:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 1
            s.close()
        assert closed == 300  # every slow client was let go after the read timeout
        assert _healthy(health)
    finally:
        srv.shutdown()
        srv.server_close()


def test_judge_server_refuses_oversized_and_malformed_bodies():
    from pipeline.annotate.scripted_judge_server import MAX_BODY, JudgeServer

    server = JudgeServer()
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    try:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        assert _raw(port, head + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)).split(b" ")[1] == b"413"
        assert _raw(port, head + b"Content-Length: nope\r\n\r\n").split(b" ")[1] == b"400"
        assert _raw(port, head + b"Content-Length: 5\r\n\r\n[[[[[").split(b" ")[1] == b"400"
        assert server.http_calls == 1  # only the complete one was read
    finally:
        server.close()


# ---- the command line: one line, never a traceback ---------------------------------------------------------

@pytest.mark.parametrize("content, says", [(b"garbage", "not a readable Parquet file"),
                                           (b"a,b\n1,2\n", "not a readable Parquet file")])
def test_describe_on_a_file_that_is_not_parquet(tmp_path, content, says):
    f = tmp_path / "x.parquet"
    f.write_bytes(content)
    assert says in one_error_line(steptool("describe", str(f)))


def test_describe_shows_foreign_metadata_without_crashing_or_driving_the_terminal(tmp_path):
    """Before: a UnicodeDecodeError traceback on metadata that is not UTF-8, and a column name's escape codes
    printed raw (they recolour or clear the user's terminal)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.schema import describe

    f = tmp_path / "foreign.parquet"
    field = pa.field("\x1b[2Jname", pa.int64(), metadata={b"description": b"caf\xe9 \xff"})
    pq.write_table(pa.table({"\x1b[2Jname": [1]}, schema=pa.schema([field], metadata={b"description": b"\x1b]0;x\x07"})), f)
    text = describe(f)
    assert "\x1b" not in text and "\\x1b[2Jname" in text and "caf\ufffd \ufffd" in text and "\\x07" in text


def test_non_utf8_params_and_bad_ports_areone_error_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_bytes(b"toolworld:\n  seed: \xff\xfe\n")
    assert "not UTF-8 text" in one_error_line(steptool("params", "--check", "--params", str(bad)))
    for sub in ("serve-judge", "serve-tools"):  # argparse's own error: its usage, then one error line
        proc = steptool(sub, "--port", "70000")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].endswith("port must be in 0..65535, got 70000")


def test_serve_judge_on_a_port_in_use(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert f"port {port} on 127.0.0.1 is already in use" in one_error_line(steptool("serve-judge", "--port", str(port)))


# ---- params: values that make no sense are refused, naming the key ------------------------------------------

@pytest.mark.parametrize("key, value, says", [
    ("train.kl_coef", -0.1, "train.kl_coef must be >= 0"),
    ("train.vf_coef", -1, "train.vf_coef must be >= 0"),
    ("train.cliprange", -1, "train.cliprange must be > 0"),
    ("train.learning_rate", float("inf"), "train.learning_rate must be a finite number, got inf"),
    ("warmstart.learning_rate", float("nan"), "warmstart.learning_rate must be a finite number"),
    ("train.per_device_train_batch_size", 0, "must be >= 1"),
    ("collect.chunk_size", 0, "collect.chunk_size must be >= 1"),
    ("agent.device", "tpu", "agent.device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ("variants", ["steptool", "steptool"], "each variant at most once"),
    ("evaluate.models", ["sft", ".."], "'..' is neither base, sft nor one of variants"),
    ("tasks.max_gold_calls", 1, "tasks.max_gold_calls must be >= 2 when train asks for I2 or I3"),
    ("tasks.train.I1", 100000, "tasks.train.I1 must be at most 5000"),
    ("annotate.temperature", -1, "annotate.temperature must be in [0, 2]"),
    # each passed the check before and then raised a traceback inside the warm start
    ("warmstart.paths_per_task", 0, "warmstart.paths_per_task must be >= 1, got 0"),
    ("warmstart.max_length", 0, "warmstart.max_length must be >= 1, got 0"),
    ("warmstart.lora_r", 0, "warmstart.lora_r must be >= 1, got 0"),
    ("warmstart.max_tasks", -5, "warmstart.max_tasks must be >= 0, got -5"),
    ("warmstart.batch_size", 0, "warmstart.batch_size must be >= 1, got 0"),
    # a subset read twice put the same query into train and test
    ("tasks.stabletoolbench_subsets", ["G1_tool", "G2_category", "G1_tool"],
     "tasks.stabletoolbench_subsets lists G1_tool more than once"),
])
def test_params_that_make_no_sense_are_refused(key, value, says):
    from pipeline.config import parse_params
    from pipeline.errors import ConfigError

    raw: dict = {}
    cur = raw
    *head, last = key.split(".")
    for h in head:
        cur = cur.setdefault(h, {})
    cur[last] = value
    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    assert says in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("raw, says", [
    ({"evaluate": {"samples": 3, "temperature": 0.0}}, "evaluate.samples is 3 with temperature 0: greedy plays are identical"),
    ({"env": {"kind": "http", "url": "not a url"}}, "env.url must be an http(s) URL such as http://127.0.0.1:8080/virtual, got 'not a url'"),
    ({"env": {"kind": "http", "url": "http://127.0.0.1:99999/virtual"}}, "env.url must be an http(s) URL"),
])
def test_keys_that_make_no_sense_together_are_refused(raw, says):
    """Before: 3 identical greedy samples reported as a spread of 0; every call to 'not a url' an error observation."""
    from pipeline.config import parse_params
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_params(raw)
    assert says in str(e.value) and "\n" not in str(e.value)
    parse_params({**raw, **({"evaluate": {"samples": 3, "temperature": 0.7}} if "evaluate" in raw else
                            {"env": {"kind": "toolworld", "url": raw["env"]["url"]}})})  # fine in another setting


def test_non_utf8_pass_rate_and_import_files_areone_error_line(tmp_path):
    bad = tmp_path / "G1_instruction.json"
    bad.write_bytes(b'{"q": "\xff\xfe"}')
    assert "not UTF-8 text" in one_error_line(steptool("import-annotations", str(bad), "--out", str(tmp_path / "o")))
    run = tmp_path / "runs" / "m"
    run.mkdir(parents=True)
    (run / "G1_instruction.json").write_bytes(b'{"q": "\xff"}')
    assert "not UTF-8 text" in one_error_line(steptool("pass-rate", str(run)))


def test_collect_and_evaluate_refuse_an_empty_task_list(tmp_path):
    """A task file with no row (params cannot ask for one; a hand-made or foreign file can be): one line naming
    the file, before any model is loaded."""
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import TASKS
    from stages import collect, evaluate

    params = parse_params({})
    for split in ("train", "test"):
        write_table([], tmp_path / layout.tasks_file(split), TASKS)
    with pytest.raises(SteptoolError, match=r"train\.parquet: no train task to play"):
        collect.run(params, tmp_path, 0)
    (tmp_path / layout.SFT_MODEL).mkdir(parents=True)
    (tmp_path / layout.SFT_MODEL / "config.json").write_text("{}")
    with pytest.raises(SteptoolError, match=r"test\.parquet: no task to evaluate on"):
        evaluate.run(params, tmp_path, "sft", "cot")


def test_annotate_refuses_a_trajectory_of_an_unknown_task(tmp_path):
    """Trajectories whose task is in no task file (collected against other tasks): one line, nothing written."""
    from pipeline.config import parse_params
    from pipeline.schema import STEPS, TRAJECTORIES
    from stages import tasks as tasks_stage

    tasks_stage.run(parse_params({}), tmp_path)
    traj = {"traj_id": "t1", "task_id": "no-such-task", "policy": "sft", "strategy": "cot", "sample_idx": 0, "seed": 0,
            "n_steps": 1, "finish_type": "give_answer", "final_answer": "x", "split": "train", "level": "I1",
            "actions_generated": 1, "tree_json": None}
    step = {k: v for k, v in _rows()[2].items() if k in STEPS.names} | {"traj_id": "t1", "task_id": "no-such-task",
                                                                         "api_name": "Finish", "is_finish": True}
    folder = tmp_path / layout.trajectories_dir(0)
    write_table([traj], layout.table(folder, "trajectories"), TRAJECTORIES)
    write_table([step], layout.table(folder, "steps"), STEPS)
    line = one_error_line(_cli("annotate", "0", cwd=tmp_path))
    assert "not in the task files" in line and "no-such-task" in line
    assert not (tmp_path / layout.annotated_dir(0)).exists()


def test_annotate_refuses_a_trajectory_whose_steps_are_missing(tmp_path):
    """Before: "2 trajectories, 0 failed" with one trajectory's steps gone, and only the other written."""
    from pipeline.annotate.run import annotate_folder
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import STEPS, TRAJECTORIES

    base = {"policy": "sft", "strategy": "cot", "sample_idx": 0, "seed": 0, "finish_type": "give_answer",
            "final_answer": "x", "split": "train", "level": "I1", "actions_generated": 1, "tree_json": None}
    trajs = [{**base, "traj_id": "t1", "task_id": "k1", "n_steps": 1}, {**base, "traj_id": "t2", "task_id": "k2", "n_steps": 2}]
    step = {k: v for k, v in _rows()[1].items() if k in STEPS.names}
    folder = tmp_path / layout.trajectories_dir(0)
    write_table(trajs, layout.table(folder, "trajectories"), TRAJECTORIES)
    write_table([step | {"traj_id": "t1", "task_id": "k1", "step_idx": 0},
                 step | {"traj_id": "t2", "task_id": "k2", "step_idx": 0}], layout.table(folder, "steps"), STEPS)
    with pytest.raises(SteptoolError, match=r"steps.parquet: trajectory t2 has 1 steps, .*trajectories.parquet record 1 "
                                            r"field 'n_steps' says 2"):
        annotate_folder(parse_params({}), tmp_path, folder, tmp_path / "out", tmp_path / "m.json")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_train_refuses_an_empty_advantages_table(tmp_path, tiny_model_dir):
    import shutil

    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import ADVANTAGES, STEPS, TOKENS, TRAJECTORIES
    from stages import train

    shutil.copytree(tiny_model_dir, tmp_path / layout.SFT_MODEL)
    folder = tmp_path / layout.trajectories_dir(0)
    for name, schema in (("trajectories", TRAJECTORIES), ("steps", STEPS), ("tokens", TOKENS)):
        write_table([], layout.table(folder, name), schema)
    write_table([], tmp_path / layout.advantages_file("steptool", 0), ADVANTAGES)
    write_table([], tmp_path / layout.table(layout.annotated_dir(0), "steps"), ANNOTATED_STEPS)
    with pytest.raises(SteptoolError, match=r"steptool/s0\.parquet: no trajectory to train on \(0 read"):
        train.run(parse_params({}), tmp_path, "steptool", 0)
    assert not (tmp_path / layout.model_dir("steptool", 0)).exists()


@pytest.mark.parametrize("keep, says", [
    ({"a"}, "1 trajectories annotated but missing here (b; "),
    ({"a", "b", "z"}, "1 trajectories not collected (z; "),
])
def test_train_refuses_advantages_that_are_not_this_rounds_annotation(tmp_path, keep, says):
    """Before: an advantages table holding 1 of the annotated trajectories, or one never collected, trained."""
    import polars as pl

    from pipeline import advantages
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import ADVANTAGES, STEPS
    from trainer import rounds

    annotated = tmp_path / layout.table(layout.annotated_dir(0), "steps")
    write_table(_rows(), annotated, ANNOTATED_STEPS)
    write_table([{k: r[k] for k in STEPS.names} for r in _rows()], tmp_path / layout.table(layout.trajectories_dir(0), "steps"), STEPS)
    table, _ = advantages.reward_table(parse_params({"rewards": {"shaping": "min_form"}}), annotated, "steptool")
    if "z" in keep:
        table = pl.concat([table, table.filter(pl.col("traj_id") == "b").with_columns(pl.lit("z").alias("traj_id"))])
    adv = tmp_path / layout.advantages_file("steptool", 0)
    write_table(table.filter(pl.col("traj_id").is_in(list(keep))).to_arrow(), adv, ADVANTAGES)
    with pytest.raises(SteptoolError) as e:
        rounds.check_rewards_match(adv, annotated, tmp_path / layout.table(layout.trajectories_dir(0), "steps"))
    assert str(adv) in str(e.value) and says in str(e.value), str(e.value)
    write_table(table.filter(pl.col("traj_id").is_in(["a", "b"])).to_arrow(), adv, ADVANTAGES)
    rounds.check_rewards_match(adv, annotated, tmp_path / layout.table(layout.trajectories_dir(0), "steps"))


def test_params_into_a_closed_pipe_is_quiet():
    """`steptool params | head -1`: the reader leaves early; no BrokenPipeError traceback, exit 0."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "steptool", "params"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err and b"BrokenPipe" not in err, err


# ---- writes that never destroy: an --out that is a user's folder (a canary inside) is refused, kept whole -----

def _canary_folder(tmp_path):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "canary.txt").write_text("keep me")
    return folder


def _intact(folder) -> bool:
    return (folder / "sub" / "canary.txt").read_text() == "keep me"


def test_atomic_writes_replace_only_their_own_kind(tmp_path):
    from pipeline.errors import SteptoolError
    from pipeline.fsutil import atomic_path, write_json

    folder = _canary_folder(tmp_path)
    with pytest.raises(SteptoolError, match="is a folder, and this writes a file: refusing"):
        write_json(folder, {"a": 1})
    assert _intact(folder) and not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]  # no temporary left
    f = tmp_path / "f.json"
    f.write_text("{}")
    with pytest.raises(SteptoolError, match="is a file, and this writes a folder"):
        with atomic_path(f) as tmp:
            tmp.mkdir()
            (tmp / "x").write_text("y")
    assert f.read_text() == "{}"
    write_json(f, {"b": 2})  # a file over a file, as always
    assert f.read_text().strip().startswith("{")
    with pytest.raises(SteptoolError, match="neither a file nor a folder"):
        write_json("/dev/null", {})


@pytest.mark.parametrize("command", ["params", "build-replay", "study-save"])
def test_commands_with_an_out_path_never_replace_a_users_folder(tmp_path, command):
    """Before: `params --write DIR` and `build-replay ... --out DIR` exited 0 and replaced the folder (recursively)
    with a file; `study-save` replaced any DEST whole."""
    folder = _canary_folder(tmp_path)
    if command == "params":
        args = ["params", "--write", folder]
    elif command == "build-replay":
        rec = tmp_path / "rec" / "m"
        rec.mkdir(parents=True)
        (rec / "G1_instruction.json").write_text('{"1": {"query": "q", "answer_steps": "Step 1: {\'name\': \'f\', '
                                                 '\'arguments\': \'{}\', \'response\': \'{\\"error\\": \\"\\", '
                                                 '\\"response\\": 1}\'}", "final_step": "", "is_solved": {}}}')
        args = ["build-replay", tmp_path / "rec", "--out", folder]
    else:
        ws = tmp_path / "ws"
        (ws / layout.EVAL / "sft-cot").mkdir(parents=True)
        (ws / layout.EVAL / "sft-cot" / "results.parquet").write_bytes(b"x")
        args = ["study-save", folder, "--root", ws]
    line = one_error_line(steptool(*args, cwd=REPO))
    assert str(folder) in line and "refusing to replace" in line, line
    assert _intact(folder)


# ---- a stage that fails under DVC puts back what DVC removed ---------------------------------------------------

@pytest.mark.parametrize("failure", ["refusal", "crash"])
def test_a_stage_that_fails_under_dvc_restores_its_outputs(tmp_path, monkeypatch, failure):
    """DVC deletes a stage's outputs before running it. Before, only a params refusal put them back: a refusal
    or crash inside the stage (the annotate endpoint answering 401, warmstart dividing by zero) left them gone.
    A file and a folder output, restored from the DVC cache as dvc.lock records them."""
    import argparse
    import hashlib
    import json

    from pipeline.errors import SteptoolError
    from pipeline.runner import run_parsed

    root = tmp_path / "repo"
    cache = root / ".dvc" / "cache" / "files" / "md5"

    def put(data: bytes) -> str:
        md5 = hashlib.md5(data).hexdigest()
        (cache / md5[:2]).mkdir(parents=True, exist_ok=True)
        (cache / md5[:2] / md5[2:]).write_bytes(data)
        return md5

    manifest = json.dumps([{"md5": put(b"weights"), "relpath": "model.safetensors"}]).encode()
    dir_md5 = hashlib.md5(manifest).hexdigest() + ".dir"
    (cache / dir_md5[:2]).mkdir(parents=True, exist_ok=True)
    (cache / dir_md5[:2] / dir_md5[2:]).write_bytes(manifest)
    sft, metrics = str(layout.SFT_MODEL), str(layout.metrics_file("warmstart"))
    (root / "dvc.lock").write_text(json.dumps({"schema": "2.0", "stages": {"warmstart": {"outs": [
        {"path": sft, "md5": dir_md5}, {"path": metrics, "md5": put(b"{}")}]}}}))
    (root / "params.yaml").write_text("warmstart:\n  max_tasks: 3\n")
    monkeypatch.setenv("DVC_STAGE", "warmstart")
    monkeypatch.setenv("DVC_ROOT", str(root))

    def run(params, root_):
        if failure == "refusal":
            raise SteptoolError("warmstart: the endpoint refused the key")
        return 1 / 0

    args = argparse.Namespace(params=str(root / "params.yaml"), root=str(root))
    if failure == "refusal":
        with pytest.raises(SteptoolError, match=re.escape(f"refused the key (the previous outputs are back: {sft}, "
                                                          f"{metrics})")):
            run_parsed(run, args)
    else:
        with pytest.raises(ZeroDivisionError):
            run_parsed(run, args)
    assert (root / sft / "model.safetensors").read_bytes() == b"weights"
    assert (root / metrics).read_bytes() == b"{}"


# ---- one line, never a traceback: huge numbers, deep nesting, broken caches, odd flags ---------------------------

HUGE = "1" * 5000  # past Python's 4,300-digit int conversion limit: json raises a plain ValueError
DEEP = "[" * 100_000 + "]" * 100_000  # past the interpreter's stack: RecursionError
# past Python's recursion limit (1,000) but not CPython 3.13's C stack: json parses it there, and every Python-level
# walk over it would recurse too deep (pipeline/untrusted.py, MAX_DEPTH)
DEEP_3_13 = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize("value", [HUGE, DEEP, DEEP_3_13])
def test_huge_numbers_and_deep_nesting_are_parse_failures(tmp_path, world, value):
    """Before: a ValueError / RecursionError traceback out of the parsers, the pass-rate reader and the servers."""
    import json

    from pipeline.agent.parse import parse_action
    from pipeline.errors import SchemaError
    from pipeline.formats.stabletoolbench import load_json_records

    text = '{"query": ' + value + "}"
    for fmt, action in (("react", f"Thought: t\nAction: f\nAction Input: {text}"),
                        ("chat_tools", f'<tool_call>{{"name": "f", "arguments": {text}}}</tool_call>')):
        parsed = parse_action(action, fmt)
        assert not parsed.parse_ok and parsed.error.startswith("malformed JSON"), parsed.error
    api = world.apis[0] if isinstance(world.apis, list) else next(iter(world.apis.values()))
    out = world.call(api.category, api.tool_name, api.api_name, text)
    assert set(out) == {"error", "response"} and out["error"]
    f = tmp_path / "G1_instruction.json"
    f.write_text('{"1": ' + text + "}")
    with pytest.raises(SchemaError, match=f"{f}: cannot read JSON"):
        load_json_records(f)
    json.dumps(out)


def test_a_broken_judge_cache_is_one_line(tmp_path):
    from pipeline.annotate.cache import JudgeCache
    from pipeline.errors import SteptoolError

    with pytest.raises(SteptoolError, match="a folder, not a judge cache file"):
        JudgeCache(tmp_path)
    bad = tmp_path / "judge.sqlite"
    bad.write_bytes(b"not a database " * 200)
    with pytest.raises(SteptoolError, match="judge.sqlite: not a usable judge cache"):
        JudgeCache(bad)
    assert bad.read_bytes().startswith(b"not a database")  # left for the user to look at


@pytest.mark.parametrize("flag, value", [("--latency", "-1"), ("--p-429", "5"), ("--p-malformed", "nan")])
def test_serve_judge_refuses_impossible_fault_settings(flag, value):
    proc = steptool("serve-judge", "--port", "0", flag, value, timeout=30)
    assert proc.returncode == 2 and "invalid number in" in proc.stderr and "Traceback" not in proc.stderr


def test_the_judge_servers_batch_endpoints_answer_non_json_with_400():
    import urllib.error
    import urllib.request

    from pipeline.annotate.scripted_judge_server import JudgeServer

    server = JudgeServer()
    try:
        req = urllib.request.Request(f"{server.url}/batches", data=b"\xff not json {", method="POST",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and b"not a JSON object" in e.value.read()
    finally:
        server.close()


@pytest.mark.parametrize("change, says", [
    ({"api_list": "[{not json"}, "record 0 field 'api_list' is not JSON text"),
    ({"api_list": '{"a": 1}'}, "record 0 field 'api_list' must be a JSON list of API objects"),
    ({"gold": None}, "has no gold facts, which evaluate.judge rule reads: use judge openai"),
])
def test_evaluate_refuses_a_hand_edited_task_before_playing(tmp_path, tiny_model_dir, change, says):
    """Before: a JSONDecodeError or TypeError traceback, the second after every task had been played."""
    import shutil

    import polars as pl

    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline.schema import TASKS
    from stages import evaluate
    from stages import tasks as tasks_stage

    tasks_stage.run(parse_params({}), tmp_path)
    test = tmp_path / layout.tasks_file("test")
    rows = pl.read_parquet(test).to_dicts()
    rows[0].update(change)
    write_table(rows, test, TASKS)
    shutil.copytree(tiny_model_dir, tmp_path / layout.SFT_MODEL)
    with pytest.raises(SteptoolError, match=re.escape(says)):
        evaluate.run(parse_params({}), tmp_path, "sft", "cot")
    assert not (tmp_path / layout.eval_dir("sft", "cot")).exists()  # nothing played


@pytest.mark.parametrize("rows, says", [
    ([], "no evaluated task (rerun the stage evaluate@sft-cot)"),
    ([{"statuses": ["Solved", "Maybe"]}], "record 0 field 'statuses' holds 'Maybe', not Solved, Unsure or Unsolved"),
    ([{"statuses": []}], "record 0 field 'statuses' holds None"),
])
def test_report_refuses_an_empty_or_unreadable_results_table(tmp_path, rows, says):
    """Before: a ZeroDivisionError traceback on an empty table, and an unknown status counted as nothing."""
    from pipeline.config import parse_params
    from pipeline.errors import SteptoolError
    from pipeline import report
    from pipeline.schema import EVAL_RESULTS

    base = {"model": "sft", "strategy": "cot", "task_id": "t", "level": "I1", "seed": None, "sample_idx": 0,
            "traj_id": "x", "judge": "rule", "statuses": ["Solved"], "pass_score": 1.0, "finish_type": "give_answer",
            "final_answer": "a", "n_steps": 2, "n_calls": 1, "n_calls_ok": 1, "facts_stated": 1, "n_facts": 1,
            "actions_generated": 2}
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / layout.table(layout.eval_dir("sft", "cot"), "results")
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**base, **r} for r in rows], schema=EVAL_RESULTS), path)
    with pytest.raises(SteptoolError, match=re.escape(says)):
        report.load_results(tmp_path, parse_params({"evaluate": {"models": ["sft"]}}))
