"""The local broker stopped and started again under running stages, with posts in flight.

What it checks: a clean `down`/`up` loses no acknowledged write (``services.down`` stops the broker's
Kafka service before the process); the HTTP source, the file source, the generator and inference go on
through it, and every acknowledged post is on its topic afterwards (inference at least once: its
duplicates are counted and printed); no POST ever gets a 500. The fatal OUT_OF_ORDER_SEQUENCE_NUMBER of
the user test (issue 15, defects 1 and 2) is made certain by a restart with the broker's data dropped
(``_restart_empty``): the HTTP source and inference must then end with exit code 1 and the reason.
Each test runs its own broker.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson
import pytest

from pulse import services, topics
from pulse.settings import Settings
from tests.harness import free_port, stage_env
from tests.integration.test_ingest_http import TOKEN, Server, post
from tests.kafka_io import read_topic

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def private(services_settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A broker of this test's own (the session's Redis), topics provisioned."""
    settings = services_settings.model_copy(
        update={
            "kafka": services_settings.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{free_port()}"}
            ),
            "local": services_settings.local.model_copy(update={"data_dir": tmp_path / "broker"}),
        }
    )
    services.up(settings)
    topics.provision(settings)
    try:
        yield settings
    finally:
        services.down(settings)


def test_a_broker_restart_leaves_the_http_source_publishing_or_saying_it_cannot(
    private: Settings, tmp_path: Path
) -> None:
    err = (tmp_path / "http.err").open("wb")
    srv = _http_source(private, err)
    proc = srv.proc
    try:
        accepted = [f"web:{i}" for i in range(20) if srv.post(post(i))[0] == 202]
        assert len(accepted) == 20
        # Posts keep coming while the broker goes away (as in the user test): records are in flight.
        stop = threading.Event()

        window: list[str] = []  # acknowledged while the broker was shutting down

        def keep_posting(first: int) -> None:
            n = first
            while not stop.is_set():
                if _status(srv, post(n)) == 202:
                    (window if shutting_down.is_set() else accepted).append(f"web:{n}")
                n += 1

        shutting_down = threading.Event()
        senders = [threading.Thread(target=keep_posting, args=(k * 100_000,), daemon=True) for k in (1, 2, 3)]
        for sender in senders:
            sender.start()
        time.sleep(1)
        shutting_down.set()
        services.down(private, only=["kafka"])
        time.sleep(10)
        services.up(private)
        stop.set()
        for sender in senders:
            sender.join(60)
        answers: list[tuple[int, int]] = []  # (POST status, /healthz status) pairs
        deadline = time.monotonic() + 90
        i = 100
        while proc.poll() is None and time.monotonic() < deadline:
            status = _status(srv, post(i))
            health = _status(srv, None)
            answers.append((status, health))
            if status == 202:
                accepted.append(f"web:{i}")
                if sum(1 for s, _ in answers if s == 202) >= 5:
                    break  # it survived the restart
            i += 1
            time.sleep(0.5)
        assert all(s != 500 for s, _ in answers), answers
        survived = any(s == 202 for s, _ in answers)
        if not survived:  # then health never said ok after a post failed
            assert not [(s, h) for s, h in answers if s not in (0, 202) and h == 200], answers
        if proc.poll() is not None:  # it could not go on: it said so, in one line, and exited 1
            assert proc.returncode == 1
            assert "cannot publish" in (tmp_path / "http.err").read_text()
        else:
            assert sum(1 for s, _ in answers if s == 202) >= 5, answers
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        err.close()
    # Everything acknowledged, before, while and after the broker stopped, is on the topic.
    acked = set(accepted) | set(window)
    got = {k.decode() for k, _ in read_topic(private, private.topics.raw, expect=len(acked), timeout=30)}
    print(
        f"after the restart: {answers}; exit code {proc.returncode}; acked while it shut down: {len(window)}"
    )
    assert acked <= got, sorted(acked - got)[:5]


def test_a_clean_down_and_up_keeps_every_write_the_broker_acknowledged(private: Settings) -> None:
    # Issue 15, defect 11: writes acknowledged in the moments after `down` began were gone after `up`.
    from confluent_kafka import Producer

    settings = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "log_level": 0}
    producer = Producer(private.kafka.config(**settings))
    acked: list[bytes] = []
    stop = threading.Event()

    def delivered(err: object, msg: object) -> None:
        if err is None:
            acked.append(msg.key())  # type: ignore[attr-defined]

    def write() -> None:  # as fast as the broker takes them, through the stop
        i = 0
        while not stop.is_set():
            with contextlib.suppress(BufferError):
                producer.produce(private.topics.raw, b"v", key=b"k%d" % i, on_delivery=delivered)
                i += 1
            producer.poll(0 if i % 50 else 0.001)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(1.5)
        services.down(private, only=["kafka"])
        time.sleep(1)
    finally:
        stop.set()
        writer.join(30)
    services.up(private)
    got = {k for k, _ in read_topic(private, private.topics.raw, expect=len(acked), timeout=30)}
    lost = [k for k in acked if k not in got]
    print(f"{len(acked)} acknowledged, {len(lost)} lost across down/up")
    assert len(acked) > 1000 and not lost, f"{len(lost)} of {len(acked)} acknowledged writes lost"


def test_the_file_source_and_inference_go_on_through_a_broker_restart_and_lose_nothing(
    private: Settings, tmp_path: Path
) -> None:
    # Issue 15, defect 2 (the survival half): transient broker loss must be survived.
    from schemas import EnrichedPost, decode, encode
    from tests.factories import post_factory
    from tests.integration.test_inference_worker import enriched_count, start_process, wait_for

    settings = _with_inference(private, tmp_path, "infer-restart")
    ids = [f"file:{i}" for i in range(1200)]
    source = tmp_path / "posts.jsonl"
    source.write_bytes(b"".join(encode(post_factory(id=i, text=f"Acme outage {i}")) + b"\n" for i in ids))
    # 1,200 posts at 150/s: 8 s, and the broker goes down once inference is under way
    infer_log = tmp_path / "infer.log"
    infer = start_process(settings, infer_log)
    file_log = tmp_path / "file.log"
    ingest: subprocess.Popen[bytes] | None = None
    try:
        with file_log.open("wb") as out:
            ingest = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pulse.cli",
                    "ingest",
                    "file",
                    str(source),
                    "--rate",
                    "150",
                    "--no-warm",
                ],
                env=stage_env(settings, INGEST__METRICS_PORT="0"),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: enriched_count(settings) >= 100, 120, "inference under way")  # mid-stream
        services.down(settings, only=["kafka"])
        time.sleep(5)
        services.up(settings)
        assert ingest.wait(120) == 0, file_log.read_text()[-3000:]  # every line published
        raw = [k.decode() for k, _ in read_topic(settings, settings.topics.raw, expect=len(ids), timeout=60)]
        deadline = time.monotonic() + 120
        while True:  # replays after the restart count towards the records: wait for every post
            enriched = [
                decode(v, EnrichedPost).post.id
                for _, v in read_topic(settings, settings.topics.enriched, 0, timeout=5, to_end=True)
            ]
            if set(enriched) >= set(ids) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert infer.poll() is None, infer_log.read_text()[-3000:]  # still running
    finally:
        for proc in (infer, ingest):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(60)
    print(
        f"through the restart: {len(raw)} raw records for {len(ids)} posts, {len(enriched)} enriched "
        f"({len(enriched) - len(set(enriched))} duplicates, at least once)"
    )
    assert set(raw) == set(ids) and set(enriched) == set(ids)
    assert len(raw) == len(ids), "the idempotent producer wrote a post twice"


def _with_inference(private: Settings, tmp_path: Path, group: str) -> Settings:
    """``private`` with inference on the shipped models, the test watchlist and a group of its own."""
    from tests.integration.test_inference_worker import SHIPPED, WATCHLIST

    watchlist = tmp_path / "watchlist.yaml"
    watchlist.write_text(WATCHLIST)
    update = {"group_id": group, "model_dir": SHIPPED, "watchlist": watchlist}
    return private.model_copy(update={"inference": private.inference.model_copy(update=update)})


def _restart_empty(settings: Settings) -> None:
    """Stop the broker, drop its data, start it again: a broker that lost every acknowledged write,
    which makes an idempotent producer's next write fatal (OUT_OF_ORDER_SEQUENCE_NUMBER) every time,
    as the user test's lost acks did by chance."""
    services.down(settings, only=["kafka"])
    shutil.rmtree(settings.local.data_dir / "kafka")
    services.up(settings)
    topics.provision(settings)


def test_a_fatal_producer_error_turns_the_http_source_unhealthy_and_ends_it_with_exit_code_1(
    private: Settings, tmp_path: Path
) -> None:
    # Issue 15, defect 1: the delivery thread died, /healthz said 200 and every POST got a 500.
    err_path = tmp_path / "http.err"
    with err_path.open("wb") as err:
        srv = _http_source(private, err, INGEST__HTTP_ACK_TIMEOUT_S="5")
        proc = srv.proc
        try:
            assert all(srv.post(post(i))[0] == 202 for i in range(12))  # every partition has a sequence
            _restart_empty(private)
            answers = []
            deadline = time.monotonic() + 60
            i = 100
            while proc.poll() is None and time.monotonic() < deadline:
                answers.append((_status(srv, post(i)), _status(srv, None)))
                i += 1
            code = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    text = err_path.read_text()
    assert code == 1, (answers, text[-3000:])
    assert answers and all(s in (0, 503) for s, _ in answers), answers  # never a 500, never a 202
    assert all(h in (0, 503) for s, h in answers if s == 503), answers  # unhealthy once it failed
    assert "Traceback" not in text, text[-3000:]
    assert "cannot publish" in text and "OUT_OF_ORDER_SEQUENCE_NUMBER" in text, text[-3000:]


def test_a_fatal_producer_error_ends_inference_with_one_line_and_exit_code_1(
    private: Settings, tmp_path: Path
) -> None:
    # Issue 15, defect 2: inference aborted with "terminate called without an active exception" (134).
    from tests.integration.test_inference_worker import (
        enriched_count,
        posts_factory,
        produce_posts,
        start_process,
        wait_for,
    )

    settings = _with_inference(private, tmp_path, "infer-fatal")
    log = tmp_path / "infer.log"
    proc = start_process(settings, log)
    try:
        produce_posts(settings, posts_factory(60, "before"))
        wait_for(lambda: enriched_count(settings) >= 60, 120, "the first posts enriched")
        _restart_empty(settings)
        produce_posts(settings, posts_factory(120, "after"))
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "Traceback" not in text and "terminate called" not in text, text[-3000:]
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in text, text[-3000:]


def _http_source(settings: Settings, err: IO[bytes], **env: str) -> Server:
    """`pulse ingest http` on a free port, stderr to ``err``, once its /healthz answers 200."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli", "ingest", "http", "--port", str(port)],
        env=stage_env(settings, INGEST__HTTP_TOKEN=TOKEN, **env),
        stderr=err,
    )
    srv = Server(port, proc)
    deadline = time.monotonic() + 60
    while _status(srv, None) != 200:
        assert proc.poll() is None and time.monotonic() < deadline, "the HTTP source did not come up"
        time.sleep(0.2)
    return srv


def _status(srv: Server, doc: object) -> int:
    """A POST's status (``doc``) or /healthz's (None); 0 when nothing answers."""
    try:
        if doc is None:
            return srv.request("GET", "/healthz", token=None)[0]
        return srv.request("POST", "/v1/posts", orjson.dumps(doc))[0]
    except OSError:
        return 0


@pytest.mark.parametrize("data", ["kept", "lost"])
def test_the_generator_goes_on_through_a_broker_restart_or_ends_with_one_line_and_exit_code_1(
    data: str, private: Settings, tmp_path: Path
) -> None:
    # The user test: a SystemError traceback after thousands of "out of order sequence number" lines.
    out = tmp_path / "generator.log"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli", "ingest", "generator", "--rate", "3000", "--count", "60000"],
            env=stage_env(private, INGEST__METRICS_PORT="0"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(4)
        if data == "kept":
            services.down(private, only=["kafka"])
            time.sleep(8)
            services.up(private)
        else:
            _restart_empty(private)
        code = proc.wait(120)
    text = out.read_text()
    print(f"generator exit code {code}, {len(text.splitlines())} log lines")
    assert "Traceback" not in text and "SystemError" not in text, text[-3000:]
    assert len(text.splitlines()) < 200, "a failed delivery is a few lines, not one per record"
    if data == "kept":
        assert code == 0, text[-3000:]  # a clean restart loses nothing, so nothing fences the producer
        return
    # The broker lost what it had acknowledged. Under a stream that never pauses, what librdkafka
    # makes of that depends on timing, and CI has seen both: usually the empty broker rejects a
    # produce as out of sequence and the fenced producer must say so once and exit 1; sometimes the
    # producer goes on unfenced, and the run must then end cleanly with every record accounted for.
    # (The HTTP source and inference tests make the fence certain: they are idle at the restart.)
    if code == 0:
        assert "published=60000" in text and "unsent=0" in text, text[-3000:]
        return
    assert code == 1 and '"giving up"' in text, text[-3000:]
    # the reason, on the last line itself: librdkafka hands it over after the produce call that
    # failed, which once made the generator exit before any line said why (CI)
    [last] = [line for line in text.splitlines() if '"giving up"' in line]
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in last or "out of order sequence number" in last, text[-3000:]
