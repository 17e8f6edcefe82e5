"""`pulse ingest http` as a real process against the real local broker: status codes and records read back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from pulse.settings import Settings
from schemas import DeadLetter, RawPost, decode
from tests.harness import free_port, stage_env
from tests.kafka_io import read_topic

pytestmark = pytest.mark.timeout(120)
TOKEN = "s3cret-token"


class Server:
    def __init__(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.proc = proc

    def request(
        self, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN
    ) -> tuple[int, dict[str, Any] | str]:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, raw.decode()

    def post(self, doc: Any, **kw: Any) -> tuple[int, Any]:
        return self.request("POST", "/v1/posts", orjson.dumps(doc), **kw)


def start_server(settings: Settings, **env_overrides: str) -> Server:
    port = free_port()
    env = stage_env(
        settings, **{"INGEST__HTTP_TOKEN": TOKEN, "INGEST__MAX_BODY_BYTES": "20000", **env_overrides}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli", "ingest", "http", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
    )
    srv = Server(port, proc)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if srv.request("GET", "/healthz", token=None)[0] == 200:
                return srv
        except OSError:
            pass
        assert time.monotonic() < deadline, "the HTTP source did not come up"
        time.sleep(0.2)


def stop_server(srv: Server) -> None:
    if srv.proc.poll() is None:
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.communicate(timeout=30)


@pytest.fixture
def server(settings: Settings) -> Iterator[Server]:
    srv = start_server(settings)
    yield srv
    stop_server(srv)


def post(i: int, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f"web:{i}",
        "platform": "web",
        "author": {"id": "u1"},
        "text": f"Hello #Acme number {i}",
        "lang": "en",
        "created_at": "2026-11-28T10:00:00Z",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def test_posts_are_accepted_only_after_the_broker_acknowledged(server: Server, settings: Settings) -> None:
    assert server.post(post(1)) == (202, {"accepted": 1, "duplicates": 0})
    # 202 means acknowledged: the record is readable right away, not eventually
    assert [k for k, _ in read_topic(settings, settings.topics.raw, expect=1, timeout=10, settle=0)] == [
        b"web:1"
    ]
    assert server.post([post(2), post(3), post(1)]) == (202, {"accepted": 2, "duplicates": 1})
    posts = {k: decode(v, RawPost) for k, v in read_topic(settings, settings.topics.raw, expect=3)}
    assert sorted(posts) == [b"web:1", b"web:2", b"web:3"]
    assert posts[b"web:2"].hashtags == ("acme",) and posts[b"web:2"].text == "Hello #Acme number 2"


def test_wrong_or_missing_token_is_401(server: Server, settings: Settings) -> None:
    assert server.post(post(1), token=None)[0] == 401
    assert server.post(post(1), token="guess")[0] == 401
    assert read_topic(settings, settings.topics.raw, expect=1, timeout=3) == []


def test_oversize_body_is_413(server: Server, settings: Settings) -> None:
    big = [post(i, text="x" * 1000) for i in range(30)]  # ~33 kB > 20 kB
    status, body = server.post(big)
    assert status == 413, body
    assert read_topic(settings, settings.topics.raw, expect=1, timeout=3) == []


def test_invalid_posts_are_400_naming_the_field_and_are_dead_lettered(
    server: Server, settings: Settings
) -> None:
    status, body = server.post([post(1), post(2, created_at="not a time"), post(3, author={"handle": "x"})])
    assert status == 400
    assert body["error"].startswith("invalid post at index 1: field 'created_at'")
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "created_at"), (2, "author.id")]
    status, body = server.post(post(4, id=""))
    assert status == 400 and body["error"].startswith("invalid post: field 'id'")
    assert server.request("POST", "/v1/posts", b"{nope")[0] == 400
    # nothing of a rejected request is published, and a corrected retry is not a "duplicate"
    assert server.post([post(1), post(2)]) == (202, {"accepted": 2, "duplicates": 0})
    assert sorted(k for k, _ in read_topic(settings, settings.topics.raw, expect=2)) == [b"web:1", b"web:2"]
    letters = [decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=4)]
    assert [(d.reason, d.source) for d in letters] == [("validation", "http")] * 3 + [("decode", "http")]
    assert orjson.loads(letters[0].original)["created_at"] == "not a time"


def test_health_metrics_and_a_clean_sigterm(server: Server) -> None:
    assert server.post(post(9)) == (202, {"accepted": 1, "duplicates": 0})
    status, text = server.request("GET", "/metrics", token=None)
    assert status == 200
    assert 'pulse_messages_total{outcome="published",stage="ingest"} 1.0' in str(text)
    server.proc.send_signal(signal.SIGTERM)
    _, err = server.proc.communicate(timeout=30)
    assert server.proc.returncode == 0, err.decode()


def test_202_waits_for_the_broker_acknowledgement(settings: Settings) -> None:
    # A 2 s linger holds every record in the producer for 2 s: a 202 sooner could not be an ack.
    srv = start_server(settings, INGEST__LINGER_MS="2000")
    try:
        started = time.monotonic()
        assert srv.post(post(1)) == (202, {"accepted": 1, "duplicates": 0})
        assert time.monotonic() - started >= 1.5
        assert [k for k, _ in read_topic(settings, settings.topics.raw, expect=1, timeout=5, settle=0)] == [
            b"web:1"
        ]
    finally:
        stop_server(srv)


def test_no_ack_in_time_is_503_and_the_retry_is_not_called_a_duplicate(settings: Settings) -> None:
    srv = start_server(settings, INGEST__LINGER_MS="3000", INGEST__HTTP_ACK_TIMEOUT_S="0.5")
    try:
        status, body = srv.post(post(1))
        assert status == 503 and "did not acknowledge" in body["error"]
        # at-least-once: the post was not remembered as seen, so the client's retry is accepted again
        assert srv.post(post(1))[0] == 503
    finally:
        stop_server(srv)


def test_an_invalid_post_near_the_body_limit_is_a_400_and_a_dead_letter_that_fits(settings: Settings) -> None:
    # Its dead letter (the original, base64) was over the record limit: a 500 and no dead letter.
    srv = start_server(settings, INGEST__MAX_BODY_BYTES="1048576")
    try:
        huge = orjson.dumps(post(1, created_at="not a time", text="y" * 95_000, extra="z" * 850_000))
        assert 900_000 < len(huge) < 1_048_576
        status, body = srv.request("POST", "/v1/posts", huge)
        assert status == 400, body
        assert srv.post(post(2)) == (202, {"accepted": 1, "duplicates": 0})  # and the source still works
    finally:
        stop_server(srv)
    [letter] = [decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=1)]
    assert letter.truncated and letter.original_bytes == len(huge) and huge.startswith(letter.original)


def test_unreadable_bodies_are_a_400_and_a_dead_letter_as_in_the_file_source(
    server: Server, settings: Settings
) -> None:
    bodies = [
        b"",  # empty
        b"{nope",  # not JSON
        b'{"id": "web:1", "text": "caf\xff"}',  # invalid UTF-8
        b'{"id": "web:1", "text": "a\x01b"}',  # a raw control byte inside a string
        b"[]",
        b"[" * 300 + b"]" * 300,  # deeper than orjson writes (254): a 500 with a traceback before
        orjson.dumps(
            post(
                1,
                author={"id": "u1", "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
            )
        ),
    ]
    for body in bodies:
        status, answer = server.request("POST", "/v1/posts", body)
        assert status == 400, (body[:40], answer)
        assert isinstance(answer, dict) and "Traceback" not in str(answer)
    letters = [
        decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=len(bodies))
    ]
    assert [(d.reason, d.source, d.original) for d in letters] == [("decode", "http", b) for b in bodies]
    assert "empty body" in letters[0].error and "nested deeper than 32" in letters[5].error


def test_a_flood_of_invalid_elements_costs_a_dozen_dead_letters_and_memory_stays_flat(
    settings: Settings,
) -> None:
    import psutil

    srv = start_server(settings, INGEST__MAX_BODY_BYTES="1048576")
    try:
        ones = b"[" + b",".join([b"1"] * 50_000) + b"]"  # the user test's 100 KB body of 50,000 bad posts
        status, answer = srv.request("POST", "/v1/posts", ones)
        assert status == 413 and "at most 1000" in answer["error"]
        bad = orjson.dumps([post(i, created_at="never") for i in range(1_000)])
        status, answer = srv.request("POST", "/v1/posts", bad)
        assert status == 400 and answer["invalid"] == 1_000 and len(answer["errors"]) == 20
        letters = [decode(v, DeadLetter) for _, v in read_topic(settings, settings.topics.dlq, expect=11)]
        assert len(letters) == 11 and letters[-1].original == bad
        assert letters[-1].error.startswith("990 more invalid posts in this request (posts[10]")
        process = psutil.Process(srv.proc.pid)
        before = process.memory_info().rss
        for _ in range(8):
            assert srv.request("POST", "/v1/posts", ones)[0] == 413
            assert srv.request("POST", "/v1/posts", bad)[0] == 400
        grown = (process.memory_info().rss - before) / 2**20
        assert grown < 40, f"RSS grew {grown:.0f} MB over 16 hostile requests"
    finally:
        stop_server(srv)


def _connect(srv: Server) -> Any:
    import socket

    host, port = srv.base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _closed_by_server_within(sock: Any, seconds: float, trickle: bytes) -> tuple[bool, bytes]:
    """Send ``trickle`` a byte every 0.5 s; (whether the server closed the connection, what it sent)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + seconds
    sent = 0
    received = b""
    while time.monotonic() < deadline:
        try:
            if sent < len(trickle):
                sock.sendall(trickle[sent : sent + 1])
                sent += 1
            chunk = sock.recv(4096)
            if not chunk:
                return True, received
            received += chunk
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return True, received
    return False, received


def test_slow_clients_are_cut_off_and_connections_are_capped(settings: Settings) -> None:
    # The user test: ten connections trickling a byte every 10 s stayed open for minutes.
    srv = start_server(
        settings,
        INGEST__HTTP_HEADER_TIMEOUT_S="2",
        INGEST__HTTP_BODY_TIMEOUT_S="2",
        INGEST__HTTP_MAX_CONNECTIONS="4",
    )
    try:
        headers = b"POST /v1/posts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
        with _connect(srv) as slow_headers:
            closed, _ = _closed_by_server_within(slow_headers, 20, headers + b"\r\nX-Pad: " + b"a" * 100)
            assert closed, "a client trickling its headers kept the connection"
        head = headers + b"\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        with _connect(srv) as slow_body:
            slow_body.sendall(head)
            closed, answer = _closed_by_server_within(slow_body, 20, b"[" + b" " * 300)
            assert closed, "a client trickling its body kept the connection"
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        held = [_connect(srv) for _ in range(4)]
        try:
            time.sleep(0.5)
            with _connect(srv) as one_too_many:
                one_too_many.settimeout(10)
                answer = one_too_many.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
            assert b"too many connections" in answer
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while srv.request("GET", "/healthz", token=None)[0] != 200:  # freed slots serve again
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        stop_server(srv)


def test_delete_publishes_a_tombstone_after_the_post_and_the_id_may_come_again(
    server: Server, settings: Settings
) -> None:
    assert server.post(post(7))[0] == 202
    assert server.request("DELETE", "/v1/posts/web:7", token=None)[0] == 401
    status, answer = server.request("DELETE", "/v1/posts/web:7")
    assert (status, answer) == (202, {"deleted": "web:7"})
    assert server.request("DELETE", "/v1/posts/web%007")[0] == 400  # a NUL in the id
    assert server.post(post(7))[1] == {"accepted": 1, "duplicates": 0}  # posted again: a new post
    got = [(k, v is None) for k, v in read_topic(settings, settings.topics.raw, expect=3)]
    assert got == [(b"web:7", False), (b"web:7", True), (b"web:7", False)]


def test_a_re_post_with_edited_at_is_a_new_version_and_a_plain_re_post_a_duplicate(
    server: Server, settings: Settings
) -> None:
    assert server.post(post(8))[1] == {"accepted": 1, "duplicates": 0}
    assert server.post(post(8, text="changed, but no edited_at"))[1] == {"accepted": 0, "duplicates": 1}
    edit = post(8, text="Hello #Acme, edited", edited_at="2026-11-28T10:05:00Z")
    assert server.post(edit)[1] == {"accepted": 1, "duplicates": 0}
    assert server.post(edit)[1] == {"accepted": 0, "duplicates": 1}  # the same edit again
    versions = [decode(v, RawPost) for _, v in read_topic(settings, settings.topics.raw, expect=2)]
    assert [(p.id, p.edited_at is not None, p.text) for p in versions] == [
        ("web:8", False, "Hello #Acme number 8"),
        ("web:8", True, "Hello #Acme, edited"),
    ]
