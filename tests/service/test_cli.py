"""engine.service.cli: an operating error is one line on stderr and exit code 2,
in-process and as a real process; a bug keeps its traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import engine.service
from engine.service import cli
from engine.service.config import Config
from servers import MINIMAL_CONFIG

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "exchange.toml"
GOOD = MINIMAL_CONFIG


@pytest.fixture
def bad(tmp_path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD.replace('role = "trading"', 'role = "root"'))
    return path


@pytest.fixture
def fake_server(monkeypatch):
    """engine.service.server replaced by a module whose run() the test decides."""
    server = types.SimpleNamespace(calls=[], run=None)
    module = types.ModuleType("engine.service.server")

    def run(config):
        server.calls.append(config)
        return server.run(config) if server.run else 0
    module.run = run
    monkeypatch.setitem(sys.modules, "engine.service.server", module)
    monkeypatch.setattr(engine.service, "server", module, raising=False)
    return server


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("exchange: error: "), err
    return lines[0]


# ================================================================ in-process
def test_a_config_error_is_one_line_and_exit_2(bad, capsys, fake_server):
    assert cli.main(["serve", "--config", str(bad)]) == 2
    out, err = capsys.readouterr()
    line = one_error_line(err)
    assert f"{bad}: server.sessions[0].role: " in line and "root" in line
    assert out == "" and fake_server.calls == []


def test_a_missing_config_file(tmp_path, capsys):
    assert cli.main(["serve", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: cannot read" in one_error_line(capsys.readouterr().err)


def test_serve_hands_the_loaded_config_to_the_server(tmp_path, fake_server):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)
    fake_server.run = lambda config: 7
    assert cli.main(["serve", "--config", str(path)]) == 7
    (config,) = fake_server.calls
    assert isinstance(config, Config) and config.server.sessions[0].token == "tok-1"


def test_an_operating_error_from_the_server_is_one_line(tmp_path, capsys, fake_server):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)

    def run(config):
        raise OSError(98, "error while attempting to bind on address ('127.0.0.1', 7001):\n"
                          "address already in use")
    fake_server.run = run
    assert cli.main(["serve", "--config", str(path)]) == 2
    assert "address already in use" in one_error_line(capsys.readouterr().err)


def test_a_bug_keeps_its_traceback(tmp_path, fake_server):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)

    def run(config):
        raise AssertionError("broken invariant")
    fake_server.run = run
    with pytest.raises(AssertionError, match="broken invariant"):
        cli.main(["serve", "--config", str(path)])


def test_interrupted(tmp_path, fake_server):
    path = tmp_path / "good.toml"
    path.write_text(GOOD)

    def run(config):
        raise KeyboardInterrupt
    fake_server.run = run
    assert cli.main(["serve", "--config", str(path)]) == 130


def test_usage_errors_help_and_version(capsys):
    assert cli.main([]) == 2
    assert "usage: exchange" in capsys.readouterr().err
    assert cli.main(["serve"]) == 2
    assert "--config" in capsys.readouterr().err
    assert cli.main(["nonsense"]) == 2
    capsys.readouterr()
    assert cli.main(["serve", "--help"]) == 0
    assert "--config FILE" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("exchange ")


def test_a_subcommand_is_one_decorated_function(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_COMMANDS", dict(cli._COMMANDS))

    @cli.command("echo", help="print a word", args=[cli.arg("word")])
    def echo(args):
        print(args.word)
        return 0
    assert cli.main(["echo", "hi"]) == 0
    assert capsys.readouterr().out == "hi\n"
    with pytest.raises(AssertionError):
        cli.command("echo", help="again")(echo)


# ================================================================ a real process
def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    # EXCHANGE_PURE_PYTHON: a stale compiled core in a working tree warns on import,
    # which is not what this test is about
    env = dict(os.environ, EXCHANGE_PURE_PYTHON="1")
    return subprocess.run(
        [sys.executable, "-c", "from engine.service.cli import main; raise SystemExit(main())",
         *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_as_a_process_a_config_error_is_one_line_and_exit_2(bad):
    p = run_cli("serve", "--config", bad.name, cwd=bad.parent)
    assert p.returncode == 2, p.stderr
    line = one_error_line(p.stderr)
    assert line.startswith("exchange: error: bad.toml: server.sessions[0].role: "), line
    assert p.stdout == ""


@pytest.mark.parametrize("text, key", [
    ("[server\n", ""),                                  # TOML syntax
    (GOOD.replace('token = "tok-1"', 'token_env = "EXCHANGE_TEST_UNSET_VAR"'),
     "server.sessions[0].token_env: "),
    (GOOD.replace('qty_lot = "0.0001"', 'qty_lot = "0.00000001"'), "instruments[0]: BTC-USDT"),
], ids=["syntax", "token_env unset", "engine refuses the instrument"])
def test_as_a_process_other_config_errors(tmp_path, text, key):
    (tmp_path / "bad.toml").write_text(text)
    p = run_cli("serve", "--config", "bad.toml", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert key in one_error_line(p.stderr)


def test_as_a_process_usage_error_has_no_traceback(tmp_path):
    p = run_cli("serve", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "the following arguments are required: --config" in p.stderr
