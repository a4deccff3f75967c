"""The command line: helpful --help, and one clear line with a non-zero exit for every user error."""
from __future__ import annotations

import socket

import pytest

from pipeline import layout
from tests.conftest import REPO
from tests.support.cli import one_error_line, steptool


@pytest.mark.parametrize("sub", ["tasks", "base_model", "warmstart", "collect", "annotate", "advantages", "train", "evaluate", "report", "serve-tools", "params", "describe", "play"])
def test_help(sub):
    proc = steptool(sub, "--help")
    assert proc.returncode == 0 and "usage: steptool" in proc.stdout


def test_malformed_params_unknown_key_and_wrong_type(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("toolworld:\n  seed: 1\n  sede: 2\n")
    line = one_error_line(steptool("tasks", "--params", str(p), "--root", str(tmp_path)))
    assert "unknown key 'toolworld.sede'" in line
    p.write_text("tasks:\n  seed: seven\n")
    line = one_error_line(steptool("tasks", "--params", str(p), "--root", str(tmp_path)))
    assert "tasks.seed must be an integer, got str 'seven'" in line
    assert not (tmp_path / layout.DATA).exists()


def test_missing_model_path(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base_model:\n  source: ./no/such/model\n")
    line = one_error_line(steptool("base_model", "--params", str(p), "--root", str(tmp_path)))
    assert "model path ./no/such/model does not exist" in line


def test_port_in_use(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = one_error_line(steptool("serve-tools", "--port", str(port), "--params", str(REPO / "params.yaml")))
    assert f"port {port} on 127.0.0.1 is already in use" in line


def test_tasks_stage_writes_its_outputs(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("tasks:\n  train: {I1: 6, I2: 3, I3: 3}\n  test: {I1: 3, I2: 2, I3: 2}\n")
    proc = steptool("tasks", "--params", str(p), "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "33 tools" in proc.stdout and "train {'I1': 6, 'I2': 3, 'I3': 3}" in proc.stdout
    for f in (layout.tasks_file("train"), layout.tasks_file("test"), layout.CATALOG):
        assert (tmp_path / f).exists()
    described = steptool("describe", str(tmp_path / layout.tasks_file("train")))
    assert "gold" in described.stdout


def test_params_check_is_one_line_either_way(tmp_path):
    ok = steptool("params", "--check")
    assert ok.returncode == 0 and ok.stdout.strip() == "params.yaml: valid"
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  cliprange: -1\n")
    assert "train.cliprange must be > 0" in one_error_line(steptool("params", "--check", "--params", str(bad)))
    assert "no such file" in one_error_line(steptool("params", "--check", "--params", str(tmp_path / "none.yaml")))


def test_params_lists_every_knob():
    proc = steptool("params")
    assert proc.returncode == 0
    assert "toolworld.rate_limit_prob" in proc.stdout and "params.yaml: valid" in proc.stdout
