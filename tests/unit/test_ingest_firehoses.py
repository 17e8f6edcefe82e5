"""Bluesky Jetstream and Mastodon message mapping, SSE parsing and reconnect backoff (no sockets)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from pulse.retry import Backoff
from schemas import RawPost, decode
from workers.ingest.dedup import RecentIds
from workers.ingest.pipeline import Batch, Item, Pipeline
from workers.ingest.records import RecordBuilder
from workers.ingest.sources.bluesky import HandleCache, post_record, subscribe_url
from workers.ingest.sources.mastodon import SseParser, html_to_text
from workers.ingest.sources.mastodon import post_record as status_record

# Shapes as Jetstream sends them (https://github.com/bluesky-social/jetstream, README examples).
JETSTREAM_POST = {
    "did": "did:plc:eygmaihciaxprqvxpfvl6flk",
    "time_us": 1732791962329308,
    "kind": "commit",
    "commit": {
        "rev": "3l3qo2vutsw2b",
        "operation": "create",
        "collection": "app.bsky.feed.post",
        "rkey": "3l3qo2vuowo2b",
        "record": {
            "$type": "app.bsky.feed.post",
            "createdAt": "2026-11-28T10:46:02.102Z",
            "langs": ["en"],
            "text": "Acme's new phone is great #acme @bob.bsky.social",
            "facets": [
                {
                    "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": "acme"}],
                    "index": {"byteStart": 27, "byteEnd": 32},
                }
            ],
        },
        "cid": "bafyreidwaivazkwu67xztlmuobx35hs2lnfh3kolmgfmucldvhd3sgzcqi",
    },
}
JETSTREAM_IDENTITY = {
    "did": "did:plc:eygmaihciaxprqvxpfvl6flk",
    "time_us": 1732791962329000,
    "kind": "identity",
    "identity": {
        "did": "did:plc:eygmaihciaxprqvxpfvl6flk",
        "handle": "ann.bsky.social",
        "seq": 1409752997,
        "time": "2026-11-28T10:46:02.000Z",
    },
}
JETSTREAM_DELETE = {
    "did": "did:plc:x",
    "time_us": 1732791962330000,
    "kind": "commit",
    "commit": {"rev": "3l", "operation": "delete", "collection": "app.bsky.feed.post", "rkey": "3k"},
}
JETSTREAM_LIKE = {
    "did": "did:plc:x",
    "time_us": 1732791962331000,
    "kind": "commit",
    "commit": {
        "rev": "3l",
        "operation": "create",
        "collection": "app.bsky.feed.like",
        "rkey": "3k",
        "record": {
            "$type": "app.bsky.feed.like",
            "createdAt": "2026-11-28T10:46:02.102Z",
            "subject": {"cid": "bafy", "uri": "at://did:plc:y/app.bsky.feed.post/3k"},
        },
    },
}

MASTODON_STATUS = {
    "id": "113565442938394122",
    "created_at": "2026-11-28T10:46:02.000Z",
    "in_reply_to_id": None,
    "sensitive": False,
    "spoiler_text": "",
    "visibility": "public",
    "language": "de",
    "uri": "https://chaos.social/users/ann/statuses/113565442938394122",
    "url": "https://chaos.social/@ann/113565442938394122",
    "replies_count": 0,
    "reblogs_count": 0,
    "content": '<p>Der <a href="https://chaos.social/tags/Acme" class="mention hashtag" rel="tag">'
    "#<span>Acme</span>"
    '</a> Support ist super! <span class="h-card"><a href="https://mastodon.social/@bob" '
    'class="u-url mention">@<span>bob</span></a></span><br />Mehr: <a href="https://acme.example/'
    'blog/2026/x" rel="nofollow noopener" target="_blank"><span class="invisible">https://</span>'
    '<span class="ellipsis">acme.example/blog/</span><span class="invisible">2026/x</span></a> &amp; '
    "so</p>",
    "reblog": None,
    "account": {
        "id": "1",
        "username": "ann",
        "acct": "ann",
        "display_name": "Ann",
        "url": "https://chaos.social/@ann",
    },
    "media_attachments": [],
    "mentions": [
        {"id": "2", "username": "bob", "acct": "bob@mastodon.social", "url": "https://mastodon.social/@bob"}
    ],
    "tags": [{"name": "acme", "url": "https://chaos.social/tags/acme"}],
    "emojis": [],
}
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def publish(record: dict) -> RawPost:
    out = Pipeline(RecordBuilder(), detector=None, dedup=RecentIds(10), clock=lambda: NOW).process(  # type: ignore[arg-type]
        Batch([Item(b"{}", record)])
    )
    assert not out.dead, out.dead
    return decode(out.posts[0].value, RawPost)


def test_jetstream_post_creates_become_posts_with_handle_from_identity_events() -> None:
    handles = HandleCache()
    assert post_record(JETSTREAM_IDENTITY, handles) is None
    record = post_record(JETSTREAM_POST, handles)
    assert record is not None
    post = publish(record)
    assert post.id == "bluesky:at://did:plc:eygmaihciaxprqvxpfvl6flk/app.bsky.feed.post/3l3qo2vuowo2b"
    assert (post.platform, post.author.id, post.author.handle, post.lang) == (
        "bluesky",
        "did:plc:eygmaihciaxprqvxpfvl6flk",
        "ann.bsky.social",
        "en",
    )
    assert post.url == "https://bsky.app/profile/did:plc:eygmaihciaxprqvxpfvl6flk/post/3l3qo2vuowo2b"
    assert post.hashtags == ("acme",) and post.mentions == ("bob.bsky.social",)


def test_jetstream_facet_links_give_the_full_urls_the_text_shortens() -> None:
    record = dict(JETSTREAM_POST["commit"]["record"])  # type: ignore[call-overload]
    record["text"] = "Read this: acme.example/blog/2026... and https://x.example/a"
    record["facets"] = [
        {
            "features": [
                {"$type": "app.bsky.richtext.facet#link", "uri": "https://acme.example/blog/2026/launch"}
            ],
            "index": {"byteStart": 11, "byteEnd": 35},
        },
        {
            "features": [{"$type": "app.bsky.richtext.facet#link", "uri": "https://x.example/a"}],
            "index": {"byteStart": 40, "byteEnd": 59},
        },
        {"features": [{"$type": "app.bsky.richtext.facet#mention", "did": "did:plc:y"}]},
    ]
    message = {**JETSTREAM_POST, "commit": {**JETSTREAM_POST["commit"], "record": record}}  # type: ignore[dict-item]
    found = post_record(message)
    assert found is not None
    post = publish(found)
    assert post.urls == ("https://acme.example/blog/2026/launch", "https://x.example/a")


def test_jetstream_deletes_and_other_collections_are_not_posts() -> None:
    assert post_record(JETSTREAM_DELETE) is None
    assert post_record(JETSTREAM_LIKE) is None


def test_jetstream_subscribe_url_carries_collection_and_cursor() -> None:
    assert subscribe_url("wss://jetstream2.us-east.bsky.network/subscribe", 123) == (
        "wss://jetstream2.us-east.bsky.network/subscribe?wantedCollections=app.bsky.feed.post&cursor=123"
    )
    assert subscribe_url("ws://h/subscribe?compress=false", None) == (
        "ws://h/subscribe?compress=false&wantedCollections=app.bsky.feed.post"
    )


def test_mastodon_status_html_becomes_the_visible_text() -> None:
    record = status_record(MASTODON_STATUS, "chaos.social")
    assert record is not None
    post = publish(record)
    assert post.text == "Der #Acme Support ist super! @bob Mehr: https://acme.example/blog/2026/x & so"
    assert post.id == "mastodon:chaos.social:113565442938394122"
    assert (post.author.id, post.author.handle, post.lang) == (
        "https://chaos.social/@ann",
        "ann@chaos.social",
        "de",
    )
    assert post.hashtags == ("acme",) and post.urls == ("https://acme.example/blog/2026/x",)


def test_mastodon_boosts_are_not_new_posts_and_content_warnings_are_kept() -> None:
    assert status_record({**MASTODON_STATUS, "reblog": MASTODON_STATUS}, "chaos.social") is None
    record = status_record({**MASTODON_STATUS, "spoiler_text": "Rant"}, "chaos.social")
    assert record is not None and record["text"].startswith("Rant\n")
    assert html_to_text("<p>a</p><p>b<br>c</p>").split() == ["a", "b", "c"]


def test_sse_parser_handles_split_chunks_heartbeats_and_multiline_data() -> None:
    parser = SseParser()
    stream = b':thump\n\nevent: update\ndata: {"a":\ndata: 1}\n\nevent: delete\r\ndata: 12\r\n\r\n'
    events = []
    for i in range(0, len(stream), 7):  # arbitrary chunk boundaries
        events += parser.feed(stream[i : i + 7])
    assert events == [("update", '{"a":\n1}'), ("delete", "12")]


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff, rng = Backoff(base=0.5, cap=8.0), random.Random(1)
    delays = [backoff.next_delay(rng) for _ in range(8)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert delays[0] <= 0.5 and min(delays[5:]) >= 4.0
    backoff.reset()
    assert backoff.next_delay(rng) <= 0.5


def test_a_mastodon_edit_is_a_new_version_that_dedup_does_not_drop() -> None:
    original = status_record(MASTODON_STATUS, "chaos.social")
    edit = {**MASTODON_STATUS, "content": "<p>Der Acme Support ist super, sogar am Sonntag!</p>"}
    edited = status_record({**edit, "edited_at": "2026-11-28T13:00:00.000Z"}, "chaos.social", edited=True)
    assert original is not None and edited is not None
    p = Pipeline(RecordBuilder(), None, RecentIds(100), clock=lambda: NOW)  # type: ignore[arg-type]
    first = p.process(Batch([Item(b"{}", original)]))
    again = p.process(Batch([Item(b"{}", edited), Item(b"{}", edited)]))
    assert [post.key for post in first.posts] == [post.key for post in again.posts]  # same id
    assert again.duplicates == [1]  # the same edit twice is one edit
    version = decode(again.posts[0].value, RawPost)
    assert version.edited_at == datetime(2026, 11, 28, 13, tzinfo=UTC) and "Sonntag" in version.text
    assert decode(first.posts[0].value, RawPost).edited_at is None
    assert p.process(Batch([Item(b"{}", original)])).duplicates == [0]  # still a repeat
