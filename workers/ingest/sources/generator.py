"""A synthetic, seeded post stream: brands, hashtags, languages and scheduled sentiment spikes."""

from __future__ import annotations

import argparse
import random
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from pulse.settings import Settings
from workers.ingest.pipeline import Batch, Item
from workers.ingest.scenario import Scenario, parse_spike, parse_weights

# {b} brand, {h} a hashtag, {p} a product word. Three sentiments per language.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "negative": (
            "{b} support kept me on hold for two hours and then hung up. Never again.",
            "My {b} {p} died after a week. Absolutely useless. #{h}",
            "Is {b} down again? Third outage this month, this is a joke",
            "Really disappointed with the new {b} {p}, it feels cheap and the battery is awful",
            "{b} charged me twice and nobody answers. Terrible service #{h}",
            "Worst update ever from {b}. Everything is slower now.",
        ),
        "neutral": (
            "Anyone know when the {b} {p} ships in Europe? #{h}",
            "{b} just announced their quarterly results, details here https://news.example.com/{b}/q3",
            "Comparing the {b} {p} with last year's model this weekend",
            "Picked up a {b} {p} today, will report back",
            "The {b} store on Main Street opens at 9 tomorrow",
        ),
        "positive": (
            "Loving my new {b} {p}! Setup took two minutes #{h}",
            "Shout out to {b} support, fixed my issue in five minutes. Great service!",
            "The {b} {p} is honestly the best thing I bought this year",
            "{b} nailed it with this launch, the camera is amazing #{h}",
            "Big thanks to @{b}Help for the quick replacement, really happy",
        ),
    },
    "es": {
        "negative": (
            "El servicio de {b} es terrible, llevo dos horas esperando #{h}",
            "Mi {p} de {b} se rompió en una semana, qué decepción",
        ),
        "neutral": (
            "¿Alguien sabe cuándo llega el nuevo {p} de {b} a México?",
            "Hoy presentan el {p} de {b}, lo veremos en directo",
        ),
        "positive": (
            "Me encanta mi nuevo {p} de {b}, funciona de maravilla #{h}",
            "Gracias {b} por resolver mi problema tan rápido, excelente atención",
        ),
    },
    "de": {
        "negative": (
            "Der Kundendienst von {b} ist eine Katastrophe, niemand antwortet #{h}",
            "Mein {b} {p} ist nach einer Woche kaputt, wirklich ärgerlich",
        ),
        "neutral": (
            "Weiß jemand, wann das neue {b} {p} in Deutschland erscheint?",
            "Heute Abend stellt {b} das neue {p} vor",
        ),
        "positive": (
            "Das neue {b} {p} ist großartig, bin sehr zufrieden #{h}",
            "Danke {b} für den schnellen Austausch, super Service",
        ),
    },
    "fr": {
        "negative": (
            "Le service client de {b} est vraiment nul, deux heures d'attente #{h}",
            "Mon {p} {b} est tombé en panne après une semaine, quelle déception",
        ),
        "neutral": (
            "Quelqu'un sait quand le nouveau {p} de {b} sort en France ?",
            "{b} présente son nouveau {p} ce soir",
        ),
        "positive": (
            "J'adore mon nouveau {p} {b}, il marche parfaitement #{h}",
            "Merci {b} pour le remplacement rapide, service au top",
        ),
    },
    "pt": {
        "negative": (
            "O atendimento da {b} é péssimo, ninguém responde #{h}",
            "Meu {p} da {b} quebrou em uma semana, que decepção",
        ),
        "neutral": (
            "Alguém sabe quando o novo {p} da {b} chega ao Brasil?",
            "A {b} apresenta hoje o novo {p}",
        ),
        "positive": (
            "Adorei meu novo {p} da {b}, funciona perfeitamente #{h}",
            "Obrigado {b} pela troca rápida, atendimento excelente",
        ),
    },
}
# Posts that mention no brand: background chatter that trends must see past.
CHATTER = {
    "en": (
        "Coffee first, then emails #{h}",
        "What a match last night!",
        "Rainy Monday again",
        "Reading a great book about distributed systems #{h}",
        "Who else is watching the launch stream?",
    ),
    "es": ("Qué partido anoche", "Lunes lluvioso otra vez"),
    "de": ("Endlich Wochenende", "Schon wieder Regen in Berlin"),
    "fr": ("Enfin le week-end", "Encore de la pluie à Paris"),
    "pt": ("Que jogo ontem à noite", "Segunda-feira chuvosa de novo"),
}
PRODUCTS = ("phone", "laptop", "router", "headphones", "watch", "app", "tablet")
FIRST = (
    "alex",
    "sam",
    "maria",
    "jon",
    "lea",
    "kim",
    "noah",
    "ana",
    "li",
    "omar",
    "eva",
    "tom",
    "yuki",
    "ines",
)
LAST = ("smith", "garcia", "muller", "rossi", "dubois", "silva", "tanaka", "nowak", "ito", "berg")


class Generator:
    """Deterministic for a given seed: the same scenario and seed give the same posts, in order."""

    platform = "synthetic"

    def __init__(
        self, scenario: Scenario, seed: int = 7, start: datetime | None = None, no_lang: float = 0.0
    ) -> None:
        self.scenario = scenario
        self.seed = seed
        self.start = start or datetime.now(UTC)
        self.no_lang = no_lang
        self._rng = random.Random(seed)
        self._langs = [lang for lang, _ in scenario.langs]
        self._weights = [w for _, w in scenario.langs]
        self.sent = 0
        self.t = 0.0  # seconds of event time since start

    def next(self) -> dict[str, Any]:
        rng, sc = self._rng, self.scenario
        self.t += rng.expovariate(sc.rate)  # Poisson arrivals at the scenario's rate
        lang = rng.choices(self._langs, self._weights)[0]
        if lang not in TEMPLATES:
            lang = "en"
        brand = rng.choice(sc.brands) if sc.brands and rng.random() < sc.brand_share else None
        hashtag = rng.choice(sc.hashtags) if sc.hashtags else "news"
        if brand is None:
            text = rng.choice(CHATTER[lang]).format(h=rng.choice(("coffee", "books", "weekend", "sports")))
        else:
            neg, neu, _ = sc.sentiment_shares(brand, self.t)
            r = rng.random()
            label = "negative" if r < neg else "neutral" if r < neg + neu else "positive"
            text = rng.choice(TEMPLATES[lang][label]).format(b=brand, h=hashtag, p=rng.choice(PRODUCTS))
            if rng.random() < 0.15:
                text += f" #{brand.lower()}"
        user = rng.randrange(5000)
        first, last = FIRST[user % len(FIRST)], LAST[(user // len(FIRST)) % len(LAST)]
        n = self.sent
        self.sent += 1
        created = self.start + timedelta(seconds=self.t)
        record: dict[str, Any] = {
            "id": f"synthetic:{self.seed}:{n}",
            "platform": self.platform,
            "author": {
                "id": f"synthetic:user{user}",
                "handle": f"{first}{last}{user}",
                "display_name": f"{first.title()} {last.title()}",
            },
            "text": text,
            "created_at": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if self.no_lang <= 0 or rng.random() >= self.no_lang:
            record["lang"] = lang
        return record

    def records(self, count: int | None = None) -> Iterator[dict[str, Any]]:
        while count is None or self.sent < count:
            yield self.next()


class GeneratorSource:
    """The generator as a ``PostSource``; wall-time pacing is the runner's (``RatePacer``)."""

    name = "generator"

    def __init__(self, generator: Generator, count: int | None, batch_size: int) -> None:
        self.generator = generator
        self.count = count
        self.batch_size = batch_size

    def rewind(self) -> bool:
        return False

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        gen, dumps = self.generator, orjson.dumps
        while not stop.is_set() and (self.count is None or gen.sent < self.count):
            n = self.batch_size if self.count is None else min(self.batch_size, self.count - gen.sent)
            batch = []
            for _ in range(n):
                record = gen.next()
                batch.append(Item(dumps(record), record))
            yield Batch(batch, "generator")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    kw: dict[str, Any] = {}
    if args.brands:
        kw["brands"] = tuple(b.strip() for b in args.brands.split(",") if b.strip())
    if args.hashtags:
        kw["hashtags"] = tuple(h.strip().lstrip("#") for h in args.hashtags.split(",") if h.strip())
    if args.langs:
        kw["langs"] = parse_weights(args.langs)
    if args.rate:
        kw["rate"] = args.rate
    kw["spikes"] = tuple(parse_spike(s) for s in args.spike)
    return Scenario(**kw)


def write_jsonl(generator: Generator, count: int, out: Any) -> None:
    dumps = orjson.dumps
    buf = []
    for record in generator.records(count):
        buf.append(dumps(record))
        if len(buf) >= 10_000:
            out.write(b"\n".join(buf) + b"\n")
            buf = []
    if buf:
        out.write(b"\n".join(buf) + b"\n")


def run_cli(args: argparse.Namespace, settings: Settings) -> int:
    from workers.ingest import app
    from workers.ingest.pacing import RatePacer
    from workers.ingest.publisher import PublishError
    from workers.ingest.runner import Progress, Runner

    try:
        scenario = scenario_from_args(args)
        start = datetime.fromisoformat(args.start).astimezone(UTC) if args.start else None
    except ValueError as exc:
        print(f"pulse ingest: error: {exc}", file=sys.stderr)
        return 2
    generator = Generator(scenario, args.seed, start, args.no_lang)
    if args.out:
        if args.count is None:
            print("pulse ingest: error: --out needs --count", file=sys.stderr)
            return 2
        if args.out == "-":
            write_jsonl(generator, args.count, sys.stdout.buffer)
        else:
            with open(args.out, "wb") as fh:
                write_jsonl(generator, args.count, fh)
        return 0
    try:
        pipeline, publisher = app.pipeline(settings, warm=not args.no_warm, success_reports=False)
    except PublishError as exc:
        print(f"pulse ingest: error: {exc}", file=sys.stderr)
        return 2
    stop = app.serve(settings, args.metrics_port, publisher)
    rate = scenario.rate
    batch = max(1, min(settings.ingest.batch_size, int(rate // 10) or 1))
    runner = Runner(
        GeneratorSource(generator, args.count, batch),
        pipeline,
        publisher,
        pacer=RatePacer(rate),
        progress=Progress() if sys.stderr.isatty() else None,
        stop=stop,
        flush_timeout=settings.ingest.flush_timeout_s,
    )
    return runner.run()
