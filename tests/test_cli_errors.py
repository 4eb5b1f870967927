"""User errors on the command line and in the environment: one line on stderr, no traceback,
exit status 2 (Ctrl-C: 130; a closed pipe: quiet). Each case runs ``mise-twilio`` as a real
process, the way a user meets it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FIXTURES, ROOT

from mise_twilio.server.app import STREAM_PATH
from mise_twilio.server.config import Settings

FIXTURE = str(FIXTURES / "connect_inbound.jsonl")
AUTH_TOKEN = "0123456789abcdef0123456789abcdef"


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
    return subprocess.run(
        [sys.executable, "-m", "mise_twilio.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env=base | (env or {}),
        cwd=cwd,
    )


def assert_one_line(
    result: subprocess.CompletedProcess[str], *expected: str, code: int = 2
) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, lines
    assert lines[0].startswith("mise-twilio: error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MISE_PORT": "abc"}, ["MISE_PORT='abc'", "valid integer"]),
        ({"MISE_PORT": "70000"}, ["MISE_PORT", "65535"]),
        ({"MISE_TURN_AUDIO": "bogus"}, ["MISE_TURN_AUDIO='bogus'", "'none' or 'wav'"]),
        ({"MISE_KEEP_PII": "maybe"}, ["MISE_KEEP_PII='maybe'", "boolean"]),
        ({"MISE_LOG_LEVEL": "bogus"}, ["MISE_LOG_LEVEL='bogus'", "'debug'"]),
        ({"MISE_LOG_FORMAT": "xml"}, ["MISE_LOG_FORMAT='xml'"]),
        ({"MISE_VAD__HANGOVER_MS": "soon"}, ["MISE_VAD__HANGOVER_MS='soon'"]),
        # a misspelt knob of the core's is refused, as the lifecycle's always was (pydantic
        # ignores a dataclass's unknown keys: it ran with the default, unannounced)
        (
            {"MISE_VAD__HANGOVR_MS": "300"},
            ["MISE_VAD__HANGOVR_MS is not a setting (did you mean MISE_VAD__HANGOVER_MS?)"],
        ),
        ({"MISE_FEATURES__F0_MIN": "50"}, ["did you mean MISE_FEATURES__F0_MIN_HZ?"]),
        ({"MISE_TURNS": '{"bogus": 1}'}, ["MISE_TURNS__BOGUS is not a setting"]),
        ({"MISE_VAD": '{"HANGOVER_MS": 300}'}, ["MISE_VAD: write 'HANGOVER_MS' as 'hangover_ms'"]),
        ({"MISE_LIFECYCLE__BOGUS": "1"}, ["MISE_LIFECYCLE__BOGUS='1'", "Extra inputs"]),
        ({"MISE_TWILIO_AUTH_TOKEN": "tok"}, ["MISE_TWILIO_AUTH_TOKEN needs MISE_PUBLIC_URL"]),
        ({"MISE_PUBLIC_URL": "ingest.example.com"}, ["MISE_PUBLIC_URL", "valid URL"]),
        ({"MISE_PUBLIC_URL": "ftp://ingest.example.com"}, ["MISE_PUBLIC_URL", "'http' or 'https'"]),
        ({"MISE_REDIS_URL": "notaurl"}, ["MISE_REDIS_URL='notaurl'", "valid URL"]),
        ({"MISE_REDIS_URL": "http://localhost:6379"}, ["MISE_REDIS_URL", "'redis'"]),
        ({"MISE_HTTP_URL": "notaurl"}, ["MISE_HTTP_URL='notaurl'", "valid URL"]),
        ({"MISE_HTTP_TOKEN": "x", "MISE_HTTP_URL": "nope"}, ["MISE_HTTP_URL"]),
    ],
)
def test_bad_setting_is_one_line_exit_2(
    env: dict[str, str], expected: list[str], data_dir: Path
) -> None:
    result = run("serve", env={"MISE_DATA_DIR": str(data_dir), **env})
    assert_one_line(result, *expected)


def test_a_variable_that_names_no_setting_is_a_warning_with_the_likely_one(
    tmp_path: Path,
) -> None:
    """A misspelt top-level name is ignored (other tools share the prefix) but said, with the
    setting it was likely meant for, and the server starts."""
    env = {"MISE_API_KY": "secret", "MISE_SHELL": "bash"}
    lines = serve_until_listening(tmp_path, env)
    warned = [line for line in lines if line["event"] == "unknown_setting"]
    assert {w["level"] for w in warned} == {"warning"}
    assert [w["detail"] for w in warned] == [
        "MISE_API_KY is not a mise_twilio setting, ignored (did you mean MISE_API_KEY?)",
        "MISE_SHELL is not a mise_twilio setting, ignored",
    ]
    assert "secret" not in json.dumps(lines)
    assert not [line for line in serve_until_listening(tmp_path) if "unknown" in str(line["event"])]


def test_a_misspelt_keyword_in_code_is_refused() -> None:
    """Embedding (``create_app(Settings(...))``): a keyword that names no setting is an error,
    as a misspelt environment variable under a nested setting is."""
    from pydantic import ValidationError

    from mise_twilio.server.config import validation_error_lines

    misspelt: dict[str, int] = {"prot": 8081}  # as untyped code would pass it
    with pytest.raises(ValidationError) as info:
        Settings(**misspelt)  # type: ignore[arg-type]
    assert validation_error_lines(info.value) == ["MISE_PROT=8081: Extra inputs are not permitted"]
    assert Settings(port=8081).port == 8081


def test_a_secret_is_never_echoed() -> None:
    from pydantic import ValidationError

    from mise_twilio.server.config import validation_error_lines

    with pytest.raises(ValidationError) as info:
        Settings(api_key=31337, port="x")
    lines = validation_error_lines(info.value)
    assert any(line.startswith("MISE_API_KEY: ") for line in lines), lines
    assert any(line.startswith("MISE_PORT='x': ") for line in lines), lines
    assert "31337" not in " ".join(lines)


@pytest.mark.parametrize("kind", ["directory", "under a file"])
def test_unwritable_jsonl_path(tmp_path: Path, kind: str) -> None:
    # As root nothing is "permission denied"; a path that is a directory, or whose parent is a
    # regular file, cannot be opened for appending by anyone.
    target = tmp_path / "events.jsonl"
    if kind == "directory":
        target.mkdir()
    else:
        (tmp_path / "plain").write_text("")
        target = tmp_path / "plain" / "events.jsonl"
    env = {"MISE_DATA_DIR": str(tmp_path / "data"), "MISE_JSONL_PATH": str(target)}
    assert_one_line(run("serve", env=env), f"MISE_JSONL_PATH={target}")


def test_unwritable_data_dir(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    result = run("serve", env={"MISE_DATA_DIR": str(tmp_path / "plain" / "data")})
    assert_one_line(result, "MISE_DATA_DIR=")


@pytest.mark.parametrize("flag", [True, False])
def test_demo_with_an_unwritable_data_dir(tmp_path: Path, flag: bool) -> None:
    # Without the flag the demo writes under ./mise-data, here a regular file (as root nothing
    # is "permission denied"; in the container image it was /app, owned by root).
    (tmp_path / "plain").write_text("")
    if flag:
        result = run("demo", "--data-dir", str(tmp_path / "plain" / "data"))
        assert_one_line(result, f"--data-dir={tmp_path / 'plain' / 'data'}", "Not a directory")
    else:
        (tmp_path / "mise-data").write_text("")
        assert_one_line(run("demo", cwd=tmp_path), "--data-dir=mise-data")
    assert (tmp_path / "plain").read_text() == ""


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("missing.jsonl", "cannot read missing.jsonl: No such file or directory"),
        ("README.md", "README.md: no Twilio Media Streams 'start' message"),
    ],
)
def test_demo_of_a_fixture_that_is_no_capture(tmp_path: Path, target: str, expected: str) -> None:
    (tmp_path / "README.md").write_text("# notes\n")
    result = run("demo", "--fixture", target, "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert_one_line(result, expected)
    assert (
        not (tmp_path / "data" / "events.jsonl").exists()
        or not (tmp_path / "data" / "events.jsonl").read_text()
    )


@pytest.mark.parametrize("command", ["demo", "replay"])
@pytest.mark.parametrize("speed", ["-1", "nan", "inf", "fast"])
def test_a_speed_that_is_no_factor_of_real_time(command: str, speed: str) -> None:
    args = [FIXTURE] if command == "replay" else []
    result = run(command, *args, "--speed", speed)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "argument --speed: " in result.stderr.splitlines()[-1], result.stderr


def test_port_in_use(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"MISE_DATA_DIR": str(data_dir), "MISE_PORT": str(port)}
        assert_one_line(run("serve", env=env), f"127.0.0.1:{port}", "Address already in use")


def test_bad_flag_is_argparse_exit_2() -> None:
    result = run("serve", "--port", "abc")
    assert result.returncode == 2 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("missing.jsonl", "cannot read missing.jsonl: No such file or directory"),
        (".", ". is a directory"),
    ],
)
def test_replay_of_a_path_that_is_no_capture(tmp_path: Path, target: str, expected: str) -> None:
    assert_one_line(run("replay", target, cwd=tmp_path), expected)


@pytest.mark.parametrize(
    "content",
    [b"hello\n", b"\x00\x01\x02\xff" * 100, b'{"type":"turn","id":"x"}\n', b""],
    ids=["text", "binary", "records-not-a-capture", "empty"],
)
@pytest.mark.parametrize("to", [False, True])
def test_replay_of_a_file_that_is_not_twilio_json(tmp_path: Path, content: bytes, to: bool) -> None:
    path = tmp_path / "capture.jsonl"
    path.write_bytes(content)
    args = ["replay", str(path)] + (["--to", "ws://127.0.0.1:1/v1/stream/twilio"] if to else [])
    assert_one_line(run(*args), "no Twilio Media Streams 'start' message")


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["replay"], ": replay takes a capture (mise-twilio report --events draws records)"),
        (["report", "-o", "call.html"], ": give it with --events"),
        (["demo", "--fixture"], ""),
    ],
)
def test_a_file_of_records_given_as_a_capture_is_named_as_such(
    tmp_path: Path, command: list[str], hint: str
) -> None:
    records = run("replay", FIXTURE, "--format", "jsonl")
    assert records.returncode == 0 and records.stdout.count("\n") > 5
    (tmp_path / "events.jsonl").write_text(records.stdout)
    result = run(*command, "events.jsonl", cwd=tmp_path)
    message = "events.jsonl holds mise_twilio records (a sink's JSONL), not a capture of "
    assert_one_line(result, message + "Twilio's messages" + hint)
    assert result.stderr.rstrip().endswith("Twilio's messages" + hint)
    assert not (tmp_path / "call.html").exists()


def test_replay_to_a_closed_port() -> None:
    url = f"ws://127.0.0.1:{free_port()}{STREAM_PATH}"
    assert_one_line(run("replay", FIXTURE, "--to", url), f"cannot connect to {url}", "refused")


def test_replay_to_something_that_is_not_a_websocket_url() -> None:
    assert_one_line(run("replay", FIXTURE, "--to", "http://127.0.0.1:1/"), "not a ws://")


@pytest.fixture
def signed_server(tmp_path: Path) -> Iterator[str]:
    """``mise-twilio serve`` checking signatures, as a child process; yields its stream URL."""
    import urllib.request

    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
    env = base | {
        "MISE_PORT": str(port),
        "MISE_DATA_DIR": str(tmp_path / "server-data"),
        "MISE_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "MISE_PUBLIC_URL": "https://ingest.example.com",
        "MISE_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "mise_twilio.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"ws://127.0.0.1:{port}{STREAM_PATH}"
    finally:
        server.terminate()
        server.wait(30)


def test_replay_to_a_server_that_refuses_the_handshake(signed_server: str) -> None:
    result = run("replay", FIXTURE, "--to", signed_server, "--speed", "0")
    assert_one_line(result, "refused the WebSocket handshake: HTTP 403", "--auth-token")
    result = run("replay", FIXTURE, "--to", signed_server.replace("twilio", "nope"))
    assert_one_line(result, "HTTP 404")


def test_ctrl_c_during_a_replay(signed_server: str, tmp_path: Path) -> None:
    # A paced replay of a long call, signed so the server takes it, interrupted mid-way.
    base = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mise_twilio.cli",
            "replay",
            str(FIXTURES / "fork_two_track.jsonl"),
            "--to",
            signed_server,
            "--speed",
            "1",
            "--auth-token",
            AUTH_TOKEN,
            "--sign-url",
            "wss://ingest.example.com" + STREAM_PATH,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base,
        cwd=ROOT,
        # a suite started in the background (nohup, `&`) inherits SIGINT ignored: the child
        # gets Ctrl-C's default back, as a terminal would give it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # Interrupt once it is connected and sending (the call is ~40 s long at speed 1): when the
    # server has written the stream's start. A fixed sleep could land in the child's start-up
    # on a loaded machine, which is the next test's case, not this one's.
    events = tmp_path / "server-data" / "events.jsonl"
    deadline = time.monotonic() + 60
    while not (events.is_file() and '"stream.started"' in events.read_text()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the replay never started its stream"
        time.sleep(0.05)
    time.sleep(0.5)  # mid-call
    assert process.poll() is None, process.communicate()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "mise-twilio: interrupted"
    assert out == ""


# A real SIGINT, sent by the child to itself the moment it first imports pydantic: Ctrl-C at a
# known point of a command's start-up (numpy, pydantic and the server stack take most of a
# second to import), which a timed signal from outside cannot hit reliably.
CTRL_C_WHILE_IMPORTING = """
import os, signal, sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "pydantic":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
from mise_twilio.cli import main
sys.exit(main(["config"]))
"""


def test_ctrl_c_while_the_command_is_still_importing() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_WHILE_IMPORTING],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=base,
        cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert result.returncode == 130, result.stderr[-2000:]
    assert result.stderr == "mise-twilio: interrupted\n"
    assert result.stdout == ""


def test_replay_progress_lines_when_stderr_is_not_a_terminal(signed_server: str) -> None:
    result = run(
        "replay",
        FIXTURE,
        "--to",
        signed_server,
        "--speed",
        "0",
        "--auth-token",
        AUTH_TOKEN,
        "--sign-url",
        "wss://ingest.example.com" + STREAM_PATH,
    )
    assert result.returncode == 0, result.stderr
    assert '"messages_sent"' in result.stdout
    assert "Traceback" not in result.stderr


def test_replay_signs_with_the_token_in_the_environment(signed_server: str) -> None:
    """The token need not be on the command line, where ``ps`` shows it."""
    sign_url = ["--sign-url", "wss://ingest.example.com" + STREAM_PATH]
    args = ["replay", FIXTURE, "--to", signed_server, "--speed", "0", "-q", *sign_url]
    result = run(*args, env={"MISE_TWILIO_AUTH_TOKEN": AUTH_TOKEN})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["messages_sent"] > 0
    assert AUTH_TOKEN not in result.stdout + result.stderr
    wrong = run(*args, env={"MISE_TWILIO_AUTH_TOKEN": AUTH_TOKEN[::-1]})
    assert_one_line(wrong, "HTTP 403", "MISE_TWILIO_AUTH_TOKEN")
    flag = run(*args, "--auth-token", AUTH_TOKEN, env={"MISE_TWILIO_AUTH_TOKEN": "stale"})
    assert flag.returncode == 0, flag.stderr  # the flag wins


def test_broken_pipe_is_quiet() -> None:
    # ``mise-twilio config | head -n 0``: the reader is gone before the first write.
    reader = subprocess.Popen(["head", "-n", "0"], stdin=subprocess.PIPE)
    assert reader.stdin is not None
    reader.wait(10)
    writer = subprocess.run(
        [sys.executable, "-m", "mise_twilio.cli", "config"],
        stdout=reader.stdin,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    reader.stdin.close()
    assert writer.stderr == "", writer.stderr
    assert writer.returncode == 141


def test_progress_line_and_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from mise_twilio.cli import _Progress

    lines = _Progress(10_000, tty=False, every_s=0.0)
    lines.update(10, 5_000)
    lines.close()
    assert capsys.readouterr().err == (
        "replay: 5.0 of 10.0 s of call audio sent (50 %), 10 messages\n"
    )
    bar = _Progress(10_000, tty=True)
    for ms in range(0, 10_001, 20):
        bar.update(ms // 20, ms)
    bar.close()
    err = capsys.readouterr().err
    assert "replay: 100%" in err and "10.0/10.0 s of audio" in err


def serve_until_listening(
    tmp_path: Path, env: dict[str, str] | None = None, check: bool = False
) -> list[dict[str, object]]:
    """``mise-twilio serve`` on a free port (``MISE_PORT=0``) with ``env`` and no other
    ``MISE_*``: its log lines up to ``listening``, then it is stopped; with ``check``, the
    health endpoint must answer first."""
    import urllib.request

    base = {k: v for k, v in os.environ.items() if not k.startswith("MISE_")}
    env = base | {"MISE_PORT": "0", "MISE_DATA_DIR": str(tmp_path / "data")} | (env or {})
    server = subprocess.Popen(
        [sys.executable, "-m", "mise_twilio.cli", "serve"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    lines: list[dict[str, object]] = []
    try:
        while True:
            line = server.stderr.readline()
            assert line, f"server exited: {lines}"
            lines.append(json.loads(line))  # every line JSON, the banner included
            if lines[-1]["event"] == "listening":
                break
        if check:
            url = str(lines[-1]["url"])
            assert not url.endswith(":0") and lines[-1]["stream_path"] == STREAM_PATH
            with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                assert response.status == 200
    finally:
        server.terminate()
        server.wait(30)
    assert server.returncode == 0
    return lines


def test_listening_is_a_json_line_once_the_port_is_bound(tmp_path: Path) -> None:
    """``MISE_PORT=0``: the line names the port actually bound, and it answers at once."""
    lines = serve_until_listening(tmp_path, check=True)
    assert [e["event"] for e in lines].index("sinks") < len(lines) - 1  # sinks first


# Names that look like settings but are not: the load balancer's own (deploy/haproxy.cfg),
# another tool's (why unknown names are only reported) and the misspellings the documents give
# as examples.
NOT_SETTINGS = {"MISE_LB_BIND", "MISE_LB_CHECK_INTER", "MISE_REPLICA_A", "MISE_REPLICA_B"}
NOT_SETTINGS |= {"MISE_SHELL", "MISE_API_KY", "MISE_VAD__HANGOVR_MS"}
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file()),
    *sorted((ROOT / "mise_twilio").rglob("*.py")),
]


def test_every_setting_the_documents_name_exists() -> None:
    """A variable renamed or removed in the code and left in a document (as
    ``MISE_VAD__START_MARGIN_DB`` was in ``Settings``' own docstring) would now be refused or
    warned about where a reader sets it."""
    import re

    from mise_twilio.server.config import describe_settings

    known = {s.env for s in describe_settings()}
    nested = {env.split("__")[0] for env in known if "__" in env} | {"MISE_UPSTREAM_HEADERS"}
    stale = set()
    for path in DOCUMENTS:
        for name in re.findall(r"MISE_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            head, sep, rest = name.partition("__")
            if name in known or name in NOT_SETTINGS or (sep == "" and head in nested):
                continue
            if head == "MISE_UPSTREAM_HEADERS" and rest:  # a bot's name: any
                continue
            stale.add(f"{path.relative_to(ROOT)}: {name}")
    assert not stale, sorted(stale)
