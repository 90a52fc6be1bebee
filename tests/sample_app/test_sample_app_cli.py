"""`lacewing sample-app serve|load` as an operator runs them: real processes, real signals."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys

import pytest

from lacewing.cli import main

CLI = [sys.executable, "-m", "lacewing.cli", "sample-app"]


def _start_serve(tmp_path, *flags: str, env: dict | None = None, cli: list[str] = CLI) -> tuple[subprocess.Popen, int]:
    stderr = open(tmp_path / "serve.err", "wb")  # a file, so a chatty log never blocks the server
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("POD_", "NODE_NAME"))}
    child_env.update(env or {})
    proc = subprocess.Popen([*cli, "serve", "--host", "127.0.0.1", "--port", "0", *flags],
                            stdout=subprocess.PIPE, stderr=stderr, env=child_env)
    stderr.close()
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening on 127.0.0.1:"):
            raise AssertionError(f"serve did not start: {line!r}; stderr: {(tmp_path / 'serve.err').read_text()}")
        return proc, int(line.rsplit(":", 1)[1])
    except BaseException:
        _end(proc)
        raise


def _end(proc: subprocess.Popen) -> None:
    """Kill the server we started, by its pid, if it is still there."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def _load(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "load", *args], capture_output=True, text=True, timeout=60)


def test_serve_and_load_as_processes_then_sigterm_exits_cleanly(tmp_path):
    proc, port = _start_serve(
        tmp_path, "--fail-rate", "0.5", "--seed", "5",
        env={"POD_NAME": "ratings-v1-x7", "POD_NAMESPACE": "bookinfo", "NODE_NAME": "node-1",
             "POD_VERSION": "v1", "POD_IP": "10.244.0.5"},
    )
    idle = None
    try:
        done = _load(f"http://127.0.0.1:{port}/ratings", "-n", "60", "-c", "3", "-o", "json",
                     "-H", "x-user:alice")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["attempted"] == report["answered"] == 60
        assert set(report["status"]) == {"200", "503"}
        assert report["pods"] == {"ratings-v1-x7": 60}
        assert report["versions"] == {"v1": 60}

        # An idle keep-alive connection must not hold the stop up.
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = idle.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        assert b'"pod_ip": "10.244.0.5"' in first and b'"namespace": "bookinfo"' in first

        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
        assert idle.recv(1) == b""
        log = (tmp_path / "serve.err").read_text()
        assert log.count('"GET /ratings HTTP/1.1"') == 60  # one line per request
        assert "stopped" in log
    finally:
        if idle is not None:
            idle.close()
        _end(proc)


def test_sigint_also_stops_cleanly(tmp_path):
    proc, port = _start_serve(tmp_path, "--quiet", "--name", "quiet-pod")
    try:
        done = _load(f"http://127.0.0.1:{port}/", "-n", "5")
        assert done.returncode == 0
        assert "quiet-pod: 5" in done.stdout
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(30) == 0
        log = (tmp_path / "serve.err").read_text()
        assert '"GET' not in log  # --quiet mutes the per-request lines ...
        assert "listening on" in log and "stopped" in log  # ... but not start and stop
    finally:
        _end(proc)


def test_load_exits_1_when_nothing_could_be_sent(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["sample-app", "load", f"http://127.0.0.1:{port}/", "-n", "3"]) == 1
    out, err = capsys.readouterr()
    assert "connect_refused: 3" in out
    assert "nothing could be sent" in err


def test_load_exits_0_even_when_every_answer_is_an_error(start_server, capsys):
    server = start_server(fail_rate=1.0)
    assert main(["sample-app", "load", server.url, "-n", "4", "--no-keepalive"]) == 0
    assert "503: 4" in capsys.readouterr().out


def test_serve_reports_a_busy_port_as_an_operator_error(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        # SO_REUSEADDR does not let a second listener share a port that is listening.
        assert main(["sample-app", "serve", "--host", "127.0.0.1", "--port", str(port)]) == 1
    assert "already in use" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["serve", "--fail-rate", "1.5"], "0..1"),
        (["serve", "--close-rate", "lots"], "fraction"),
        (["serve", "--fail-status", "700"], "200 to 599"),
        (["serve", "--latency", "200"], "unit"),
        (["serve", "--latency-jitter=-5ms"], "unit"),
        (["serve", "--port", "70000"], "0 to 65535"),
        (["serve", "--close-mode", "explode"], "invalid choice"),
        (["load", "ftp://x/"], "only http://"),
        (["load", "http://127.0.0.1:9/", "--rate", "0"], "requests per second"),
        (["load", "http://127.0.0.1:9/", "-n", "0"], "whole number"),
        (["load", "http://127.0.0.1:9/", "--duration", "0"], "above zero"),
        (["load", "http://127.0.0.1:9/", "-n", "5", "--duration", "1s"], "not allowed with"),
        (["load", "http://127.0.0.1:9/", "--header", "no-colon"], "NAME:VALUE"),
        (["load", "http://127.0.0.1:9/", "--timeout", "5"], "unit"),
        (["load", "http://127.0.0.1:9/", "-c", "5000"], "1 to 1000"),
        (["load", "http://127.0.0.1:9/", "--body-bytes", "-1"], "size"),
        (["serve", "--response-bytes", "huge"], "size"),
        ([], "required"),
    ],
)
def test_bad_flags_are_refused_with_exit_2_and_a_reason(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["sample-app", *argv])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_python_dash_m_entry_serves_too(tmp_path):
    proc, port = _start_serve(tmp_path, "--name", "light", cli=[sys.executable, "-m", "lacewing.sample_app"])
    try:
        done = _load(f"http://127.0.0.1:{port}/", "-n", "3", "-o", "json")
        assert json.loads(done.stdout)["pods"] == {"light": 3}
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        _end(proc)


def test_bad_flag_exit_status_from_a_real_process():
    done = subprocess.run([*CLI, "serve", "--fail-rate", "2"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--fail-rate" in done.stderr and "0..1" in done.stderr


def test_sized_bodies_both_ways(tmp_path):
    proc, port = _start_serve(tmp_path, "--response-bytes", "3000", "--quiet")
    try:
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        conn.close()
        assert len(data.partition(b"\r\n\r\n")[2]) == 3000
        done = _load(f"http://127.0.0.1:{port}/", "-n", "2", "-X", "POST", "--body-bytes", "1234", "-o", "json")
        assert json.loads(done.stdout)["status"] == {"200": 2}
    finally:
        _end(proc)


def test_load_prints_a_readable_table(start_server, capsys):
    server = start_server(pod="web-7", version="v2")
    assert main(["sample-app", "load", server.url + "/x", "-n", "10", "-r", "1000/s", "-c", "2"]) == 0
    out = capsys.readouterr().out
    for expected in ("status     200: 10", "pods       web-7: 10", "versions   v2: 10", "latency    p50"):
        assert expected in out


def test_a_server_left_running_does_not_hold_its_process_open():
    script = (
        "import socket\n"
        "from lacewing.sample_app import Identity, SampleServer\n"
        "s = SampleServer(identity=Identity('p', 'ns', 'n', 'v1'), quiet=True).start()\n"
        "c = socket.create_connection((s.host, s.port))\n"
        "c.sendall(b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n"
        "assert c.recv(65536).startswith(b'HTTP/1.1 200')\n"
        "print('answered', flush=True)\n"  # then exit with the keep-alive connection still open
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.strip() == "answered"
    finally:
        _end(proc)
