"""Server configuration: flags beat GANSERVE_* variables, which beat the defaults; bad values are refused."""

import pytest

from server.config import Config, from_args


def test_defaults_are_safe_for_a_shared_machine():
    c = from_args([], env={})
    assert c.address == "localhost:50051"  # localhost unless told otherwise
    assert c.intra_op_threads == 1 and c.max_queue_delay_ms == 0 and c.providers == "auto"
    assert c.token() == "" and not c.tls_cert


def test_flag_beats_env_beats_default(tmp_path):
    env = {"GANSERVE_ADDRESS": "0.0.0.0:6000", "GANSERVE_MAX_SAMPLES": "64", "GANSERVE_LOG_FORMAT": "json"}
    c = from_args(["--max-samples", "32"], env=env)
    assert (c.address, c.max_samples, c.log_format) == ("0.0.0.0:6000", 32, "json")
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    assert from_args([], env={"GANSERVE_AUTH_TOKEN_FILE": str(token)}).token() == "from-a-file"
    assert from_args([], env={"GANSERVE_AUTH_TOKEN": "env", "GANSERVE_AUTH_TOKEN_FILE": str(token)}).token() == "env"


@pytest.mark.parametrize("argv", [["--auth-token", "s3cret"], ["--auth-token=s3cret"]])
def test_a_token_on_the_command_line_is_refused_with_the_alternatives(argv, capsys):
    """Every user of the machine can read a process's command line."""
    with pytest.raises(SystemExit) as exit_:
        from_args(argv, env={})
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--auth-token is refused" in err and "--auth-token-file" in err and "GANSERVE_AUTH_TOKEN" in err
    assert "s3cret" not in err


@pytest.mark.parametrize("argv,env,message", [
    (["--providers", "tpu"], {}, "providers must be auto, cpu or cuda"),
    (["--max-batch-samples", "0"], {}, "max_batch_samples must be >= 1"),
    (["--idle-threads", "0"], {}, "idle_threads must be >= 1"),
    (["--batch-halve-ms", "-1"], {}, "batch_halve_ms must be >= 0"),
    (["--tls-cert", "only-a-cert.pem"], {}, "tls_cert and tls_key go together"),
    ([], {"GANSERVE_MAX_SAMPLES": "many"}, "GANSERVE_MAX_SAMPLES: invalid literal for int() with base 10: 'many'"),
])
def test_bad_settings_are_refused(argv, env, message, capsys):
    """Refused for the reason given, not for another (a misspelled flag is argparse's 'unrecognized arguments')."""
    with pytest.raises(SystemExit) as exit_:
        from_args(argv, env=env)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"python -m server: error: {message}"


def test_config_validates_itself():
    with pytest.raises(ValueError, match="log_format"):
        Config(log_format="xml")


def test_boolean_settings_parse_words_and_refuse_others(capsys):
    assert from_args([]).inline_when_idle is True
    assert from_args(["--inline-when-idle", "false"]).inline_when_idle is False
    assert from_args([], env={"GANSERVE_INLINE_WHEN_IDLE": "off"}).inline_when_idle is False
    assert from_args(["--inline-when-idle", "1"], env={"GANSERVE_INLINE_WHEN_IDLE": "no"}).inline_when_idle is True
    for argv, env, message in ((["--inline-when-idle", "maybe"], {}, "invalid boolean value: 'maybe'"),
                               ([], {"GANSERVE_INLINE_WHEN_IDLE": "2"}, "expected true or false, got '2'")):
        with pytest.raises(SystemExit) as exit_:
            from_args(argv, env=env)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--providers", "cuda"], "error: --providers cuda: providers=cuda but onnxruntime offers only"),
    (["--store", "/nonexistent/store"], "error: --store /nonexistent/store: no such folder"),
    (["--tls-cert", "/nope/cert.pem", "--tls-key", "/nope/key.pem"], "error: --tls-cert /nope/cert.pem: no such file"),
    (["--auth-token-file", "/nope/token"], "error: --auth-token-file /nope/token: no such file"),
    (["--address", "BUSY"], "error: --address: [Errno 98] cannot serve on 127.0.0.1:"),
])
def test_start_up_configuration_errors_are_one_line_and_exit_2(flags, message, tmp_path):
    """No traceback: the setting, what is wrong, the fix; exit status 2 (as argparse's own refusals)."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    if "cuda" in flags:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this machine has CUDA: --providers cuda is valid here")
    root = Path(__file__).resolve().parent.parent
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        flags = [address if f == "BUSY" else f for f in flags]
        done = subprocess.run([sys.executable, "-m", "server", "--address", "127.0.0.1:0", "--metrics-port", "-1",
                               "--store", str(root / "model_store"), *flags], cwd=root, capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
