"""What `make run` runs, headless and bounded: every stage on the sample stream, the dashboard in Debian's
Chromium, the spike alert live on the page with its evidence, delivered to a webhook with a valid
signature, and Ctrl-C stopping every stage with exit code 0.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from pulse import redis_client
from pulse.settings import Settings
from schemas import Alert, Sentiment, WatchMatch, decode, encode
from streams.keys import Keys
from streams.read import TrendReader
from tests.browser import click, texts
from tests.factories import enriched_factory, post_factory
from tests.harness import WebhookReceiver, free_port, stage_env
from workers.notify.delivery import SIGNATURE_HEADER, verify

# One `pulse run` at a time (its stages use their default ports): one pytest-xdist worker runs them all.
pytestmark = [pytest.mark.timeout(420), pytest.mark.xdist_group("pulse-run")]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SECRET = "e2e-webhook-secret"
HOSTILE = "Evilcorp <script>document.title='pwned'</script> <img src=x onerror=alert(1)> is great"


def wait(what: str, done: Callable[[], Any], timeout: float, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = done()
        if result:
            return result
        if proc.poll() is not None:
            raise AssertionError(
                f"pulse run exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def inject_hostile_post(settings: Settings) -> None:
    """A post about a brand of its own whose text is markup, at the newest event time the store has."""
    with redis_client.client(settings) as client:
        latest = TrendReader(client, Keys(settings.redis.key_prefix)).latest_event_ms() or int(
            time.time() * 1000
        )
    created = datetime.fromtimestamp(latest / 1000, UTC)
    post = post_factory(id="e2e:hostile", text=HOSTILE, created_at=created, ingested_at=created, hashtags=())
    match = WatchMatch(term="Evilcorp", kind="brand", text="Evilcorp", start=0, end=8)
    enriched = enriched_factory(
        post, sentiment=Sentiment(label="positive", scores={"positive": 0.9}), entities=(), matches=(match,)
    )
    producer = Producer(settings.kafka.config())
    producer.produce(settings.topics.enriched, encode(enriched), b"e2e:hostile")
    assert producer.flush(30) == 0


def test_make_run_is_the_whole_product(settings: Settings, tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    hook = WebhookReceiver()
    hook.start()
    port = free_port()
    env = stage_env(
        settings,
        LOCAL__DATA_DIR=str(tmp_path / "pulse"),
        API__PORT=str(port),
        NOTIFY__WEBHOOKS=f"http://127.0.0.1:{hook.port}/alerts",
        NOTIFY__SECRET=SECRET,
        STREAMS__GROUP_ID=f"e2e-streams-{settings.redis.key_prefix}",
        INFERENCE__GROUP_ID=f"e2e-inference-{settings.redis.key_prefix}",
    )
    log = tmp_path / "run.log"
    started = time.monotonic()
    with log.open("wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "pulse.cli", "run", "--duration", "360"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait(
            "the dashboard URL, printed first",
            lambda: log.read_text().startswith(f"dashboard: {url}"),
            30,
            run,
            log,
        )
        wait("the dashboard", lambda: answers(url + "healthz"), 90, run, log)
        browser.get(url)
        # Brand cards and charts render with data.
        wait(
            "brand cards",
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "#brands .card")) >= 5,
            120,
            run,
            log,
        )
        points = "return (Chart.getChart(arguments[0])?.data.datasets[0]?.data || []).length"
        wait(
            "the share-of-voice chart",
            lambda: browser.execute_script(points, browser.find_element(By.ID, "sov-chart")) > 0,
            60,
            run,
            log,
        )
        wait(
            "the sentiment chart",
            lambda: browser.execute_script(points, browser.find_element(By.ID, "sentiment-chart")) > 0,
            60,
            run,
            log,
        )
        # The sample's spike on Globex arrives live (server-sent events).
        spike = "#alerts li.negative_sentiment"
        wait(
            "the Globex alert",
            lambda: any("Globex" in t for t in texts(browser, spike)),
            240,  # the sample schedules it to show within two minutes; the bound leaves room for a slow CI
            run,
            log,
        )
        print(f"the spike alert reached the dashboard {time.monotonic() - started:.0f} s after start")
        click(browser, spike, "Globex")
        wait(
            "the evidence",
            lambda: browser.execute_script("return document.getElementById('evidence').open"),
            10,
            run,
            log,
        )
        samples = texts(browser, "#ev-samples li")
        assert samples and all("Globex" in s for s in samples)
        assert "Negative spike: Globex" in texts(browser, "#ev-title")[0]
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "alert-evidence.png"))
        click(browser, "#evidence .close")
        # Markup in a post is shown as text, never run.
        inject_hostile_post(settings)
        wait(
            "the hostile post's brand",
            lambda: browser.find_elements(By.CSS_SELECTOR, '#brands .card[data-brand="Evilcorp"]'),
            60,
            run,
            log,
        )
        click(browser, '#brands .card[data-brand="Evilcorp"]')
        wait(
            "the hostile post",
            lambda: any(HOSTILE in t for t in texts(browser, "#posts li")),
            30,
            run,
            log,
        )
        assert browser.title == "Social Pulse"  # the <script> did not run
        assert not browser.find_elements(
            By.CSS_SELECTOR, "#posts li img, #posts li script"
        )  # nor became elements
        click(browser, '#brands .card[data-brand="Globex"]')
        time.sleep(2)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        # The alert reached the webhook, signed.
        wait("the webhook delivery", lambda: hook.requests, 60, run, log)
        path, headers, body = hook.requests[0]
        assert path == "/alerts" and verify(
            SECRET.encode(), headers[SIGNATURE_HEADER], body, int(time.time())
        )
        delivered = decode(body, Alert)
        assert (delivered.kind, delivered.subject) == ("negative_sentiment", "Globex")
        assert headers["Idempotency-Key"] == delivered.id
    finally:
        run.send_signal(signal.SIGINT)  # Ctrl-C
        code = run.wait(120)
        hook.stop()
    output = log.read_text()
    assert code == 0, output[-3000:]
    for stage in ("streams", "inference", "ingest", "api", "notify"):
        assert f"stopped {stage:10} exit code 0" in output, output[-3000:]
    assert orjson.loads(body)["id"] == delivered.id
