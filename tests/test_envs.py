"""The environment protocol, the embedded ToolWorld and the real HTTP tool server give the same answers."""
from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from pipeline.envs import HttpToolEnv, ToolWorldEnv
from pipeline.errors import SteptoolError
from pipeline.toolworld.oracle import run_oracle
from pipeline.toolworld.server import make_server, serve_in_thread


@pytest.fixture()
def server(world):
    srv, url = serve_in_thread(world)
    yield url
    srv.shutdown()
    srv.server_close()


def _script(task):
    """Gold calls plus the mistakes agents make, then Finish."""
    calls = [(c.function_name, c.arguments) for c in task.gold_calls]
    first = task.gold_calls[0].function_name
    return calls + [
        (first, "{broken json"),
        (first, json.dumps({"nope": 1})),
        (first, "{}"),
        ("made_up_function_for_nothing", "{}"),
        ("Finish", json.dumps({"return_type": "give_answer", "final_answer": "done"})),
    ]


def test_same_task_same_answers_embedded_and_over_http(world, splits, server):
    local, remote = ToolWorldEnv(world), HttpToolEnv(server)
    for task in splits["test"][:: 7]:
        assert local.reset(task, "ep-1") == remote.reset(task, "ep-1") == task.query
        assert local.functions() == remote.functions()
        for name, args in _script(task):
            a, b = local.step(name, args), remote.step(name, args)
            assert a == b, (task.task_id, name, args)


def test_http_oracle_solves_like_embedded(world, splits, server):
    remote = HttpToolEnv(server)
    for task in splits["train"][:20]:
        run = run_oracle(remote, task)
        assert run.final.finish_type == "give_answer"


def test_unknown_function_and_finish_rules(world, splits):
    env = ToolWorldEnv(world)
    env.reset(splits["train"][0])
    r = env.step("nope_for_nothing", "{}")
    assert r.observation == '{"error": "No such function name: nope_for_nothing", "response": ""}'
    assert r.status == "no_such_function" and not r.done
    assert env.step("Finish", "{}").status == "finish_error"
    assert env.step("Finish", '{"return_type": "give_answer"}').observation == '{error:"must have "final_answer""}'
    assert env.step("Finish", '{"return_type": "maybe"}').status == "finish_error"
    gu = env.step("Finish", '{"return_type": "give_up_and_restart"}')
    assert gu.done and gu.finish_type == "give_up"
    # ToolBench's lenient reading of a Finish whose JSON is broken
    ok = env.step("Finish", '{"return_type": "give_answer", "final_answer": "It is 42 }')
    assert ok.done and ok.finish_type == "give_answer" and ok.final_answer.startswith("It is 42")


def test_functions_are_the_task_apis_plus_finish(world, splits):
    env = ToolWorldEnv(world)
    task = splits["train"][0]
    env.reset(task)
    names = [f["name"] for f in env.functions()]
    assert names[-1] == "Finish" and len(names) == len(task.api_list) + 1
    spec = env.functions()[0]
    assert spec["description"].startswith('This is the subfunction for tool "')
    assert set(spec["parameters"]) == {"type", "properties", "required", "optional"}


def test_retry_after_rate_limit_counts_attempts():
    from pipeline.task import Task
    from pipeline.toolworld.world import RATE_LIMIT_ERROR, ToolWorld

    world = ToolWorld(1234, 12, rate_limit_prob=0.5)
    task = Task("t", "train", "I1", "q", [a.doc() for a in world.tool_apis("CineVault")])
    env = ToolWorldEnv(world)
    env.reset(task, "episode-a")
    errors = [env.step("search_movies_for_cinevault", '{"query": "harbor"}').envelope["error"] for _ in range(12)]
    assert RATE_LIMIT_ERROR in errors and "" in errors, "attempts vary: some fail, a retry succeeds"
    env.reset(task, "episode-a")
    again = [env.step("search_movies_for_cinevault", '{"query": "harbor"}').envelope["error"] for _ in range(12)]
    assert again == errors, "reset restarts the attempt count: the same episode replays identically"


def test_server_rejects_bad_requests(server):
    def post(body: bytes):
        req = urllib.request.Request(server, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert post(b"not json")[0] == 422
    code, body = post(json.dumps({"category": "Movies"}).encode())
    assert code == 422 and "tool_name" in body["detail"]
    code, body = post(json.dumps({"category": "Movies", "tool_name": "CineVault", "api_name": "Search Movies",
                                  "tool_input": {"query": "harbor"}, "strip": "", "toolbench_key": "k"}).encode())
    assert code == 200 and set(body) == {"error", "response"}
    with urllib.request.urlopen(server.replace("/virtual", "/health"), timeout=5) as r:
        assert json.loads(r.read())["status"] == "ok"


def test_port_in_use_is_one_clear_error(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SteptoolError, match=f"port {port} on 127.0.0.1 is already in use"):
            make_server(world, "127.0.0.1", port)


def test_unreachable_server_is_one_clear_error(splits):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        env = HttpToolEnv(f"http://127.0.0.1:{port}/virtual", timeout_s=2)
        task = splits["train"][0]
        env.reset(task)
        with pytest.raises(SteptoolError, match="cannot reach the tool server"):
            env.step(task.gold_calls[0].function_name, task.gold_calls[0].arguments)


def test_toolbench_key_is_sent_but_never_in_observations(world, splits, server, monkeypatch):
    from pipeline.config import EnvConfig, ToolWorldConfig
    from pipeline.envs import make_env

    monkeypatch.setenv("MY_TB_KEY", "sk-secret-123")
    env = make_env(EnvConfig(kind="http", url=server, toolbench_key_env="MY_TB_KEY"), ToolWorldConfig())
    task = splits["train"][0]
    env.reset(task)
    r = env.step(task.gold_calls[0].function_name, task.gold_calls[0].arguments)
    assert "sk-secret-123" not in r.observation and "sk-secret-123" not in repr(r)


def test_dropped_connections_are_retried_then_become_an_error_observation(world, splits):
    """A server that closes the connection without answering: the first calls are retried (counted) and
    succeed once it answers again; one that never answers gives an error observation, not an exception."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    drops = {"left": 2}

    class Flaky(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if drops["left"] > 0:
                drops["left"] -= 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)  # no status line: RemoteDisconnected
                return
            info = json.loads(body)
            out = json.dumps(world.call(info["category"], info["tool_name"], info["api_name"], info["tool_input"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out.encode())

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        task = splits["train"][0]
        call = task.gold_calls[0]
        env = HttpToolEnv(f"http://127.0.0.1:{srv.server_port}/virtual", timeout_s=5)
        env.reset(task)
        res = env.step(call.function_name, call.arguments)
        assert res.status == "ok" and env.transport_retries == 2 and '"error": ""' in res.observation
        drops["left"] = 100
        res = env.step(call.function_name, call.arguments)
        assert res.status == "ok" and "the connection failed: RemoteDisconnected" in res.observation
        assert env.transport_retries == 4  # 3 tries for this call: 2 retries
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_exception_inside_an_environment_is_an_error_observation(world, splits):
    class Broken(ToolWorldEnv):
        def _call(self, doc, arguments, attempt):
            raise ValueError("the tool blew up")

    task = splits["train"][0]
    env = Broken(world)
    env.reset(task)
    res = env.step(task.gold_calls[0].function_name, task.gold_calls[0].arguments)
    assert res.status == "env_error" and not res.done
    assert "Environment error" in res.observation and "ValueError: the tool blew up" in res.observation


def test_the_tool_calls_of_a_batch_go_out_together_over_http(world, splits, server, tokenizer):
    """Chains advancing together call their HTTP environments at once: 4 chains x 3 steps with 0.2 s of latency
    per call take about 3 x 0.2 s, not 12 x 0.2 s, and play exactly what one-at-a-time calls play."""
    import time

    from pipeline.agent.policy import ScriptedPolicy
    from pipeline.agent.prompts import ChatRenderer, format_action
    from pipeline.agent.rollout import run_cot

    tasks = splits["train"][:4]

    class Slow(HttpToolEnv):
        def _call(self, doc, arguments, attempt):
            time.sleep(0.2)
            return super()._call(doc, arguments, attempt)

    class SlowSerial(Slow):
        parallel_calls = False

    def script(prompt, seed):
        text = tokenizer.decode(prompt)
        task = next(t for t in tasks if t.query in text)
        call = task.gold_calls[0]
        return format_action("I call it.", call.function_name, call.arguments)

    renderer = ChatRenderer(tokenizer)
    played, took = {}, {}
    for env_cls in (Slow, SlowSerial):
        t0 = time.perf_counter()
        rollouts = run_cot([(t, 0) for t in tasks], ScriptedPolicy(tokenizer, script), renderer,
                           lambda: env_cls(server), max_steps=3)
        took[env_cls.__name__] = time.perf_counter() - t0
        played[env_cls.__name__] = [[(s.parsed.api_name, s.result.observation) for s in r.steps] for r in rollouts]
    assert played["Slow"] == played["SlowSerial"] and all(len(p) == 3 for p in played["Slow"])
    assert took["SlowSerial"] >= 12 * 0.2 and took["Slow"] < 0.5 * took["SlowSerial"], took
