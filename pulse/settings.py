"""Process settings: one frozen object built once in ``main()`` from the environment and ``.env``.

Nested sections use ``__`` in variable names: ``KAFKA__BOOTSTRAP_SERVERS``, ``REDIS__URL``,
``INFERENCE__BATCH_SIZE``. librdkafka options pass through ``KAFKA__CLIENT`` as a JSON object.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# A list that reads from the environment as "a,b,c" (JSON arrays would be unkind to type in a shell).
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_split_commas)]
CommaInts = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_split_commas)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProducerSettings(_Section):
    """Producer tuning shared by every stage that produces (ingest, inference, dead letters, streams)."""

    compression: Literal["lz4", "zstd", "none"] = Field("lz4", description="compression.type of records.")
    linger_ms: int = Field(20, ge=0, description="linger.ms: how long a batch may wait to fill.")
    delivery_timeout_ms: int = Field(
        120_000,
        ge=1000,
        description="message.timeout.ms: give up on a record after this (the stage then exits non-zero).",
    )


class KafkaSettings(_Section):
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    client: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Extra librdkafka options for every client (security.protocol, sasl.*, ...).",
    )
    sasl_password: SecretStr | None = Field(None, description="Set as sasl.password on every client.")
    producer: ProducerSettings = ProducerSettings()

    def config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration for one client: bootstrap + pass-through + per-client overrides."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers, **self.client}
        if self.sasl_password is not None:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        conf.update(overrides)
        return conf


class TopicSettings(_Section):
    """Topic names by role; partitions, retention and compaction come from ``infra/topics.yaml``."""

    raw: str = Field("posts.raw", description="RawPost records from ingest.")
    enriched: str = Field("posts.enriched", description="EnrichedPost records from inference.")
    trends: str = Field("trends", description="TrendSnapshot records.")
    alerts: str = Field("alerts", description="Alert records.")
    dlq: str = Field("posts.dlq", description="DeadLetter records from every stage.")
    definitions: Path = Field(REPO_ROOT / "infra" / "topics.yaml", description="Topic definitions file.")

    def by_role(self) -> dict[str, str]:
        return {
            "raw": self.raw,
            "enriched": self.enriched,
            "trends": self.trends,
            "alerts": self.alerts,
            "dlq": self.dlq,
        }


class RedisSettings(_Section):
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (no password in it: see password).")
    password: SecretStr | None = Field(None, description="Redis password (AUTH).")
    key_prefix: str = Field("pulse", description="Prefix of every key this deployment writes.")

    @property
    def shown_url(self) -> str:
        """The URL as logs and messages show it: a password written into it anyway is masked."""
        return re.sub(r"^(\w+://)([^@/]*:)[^@/]*@", r"\1\2***@", self.url)


class LocalSettings(_Section):
    """The embedded dev services that ``pulse services up`` starts."""

    data_dir: Path = Field(REPO_ROOT / ".pulse", description="Where the local broker and Redis keep state.")
    start_timeout_s: float = Field(30.0, gt=0, description="How long `services up` waits for health.")


class IngestSettings(_Section):
    dedup_window: int = Field(1_000_000, ge=1, description="How many recent post ids dedup remembers.")
    dedup_warm_records: int = Field(
        100_000,
        ge=0,
        description="At start, read the keys of up to this many of the newest posts.raw records into the "
        "dedup window, so a restarted or re-run ingest does not republish them (0 = off).",
    )
    max_body_bytes: int = Field(1_048_576, ge=1, description="HTTP source: larger request bodies get 413.")
    max_posts_per_request: int = Field(
        1_000, ge=1, description="HTTP source: a request with more posts in its array gets 413."
    )
    http_host: str = "127.0.0.1"
    http_port: int = 8081
    http_token: SecretStr | None = Field(None, description="Bearer token the HTTP source requires.")
    http_ack_timeout_s: float = Field(30.0, gt=0, description="HTTP source: wait this long for broker acks.")
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="HTTP source: a connection that has not sent a whole request head this long after it "
        "opened (or after its last response) is closed.",
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="HTTP source: a request body not read in full this long gets 408."
    )
    http_max_connections: int = Field(
        256, ge=1, description="HTTP source: connections open at once; the next ones get 503 and are closed."
    )
    queue_max_messages: int = Field(
        200_000, ge=1, description="librdkafka queue.buffering.max.messages of ingest's producer."
    )
    batch_num_messages: int = Field(10_000, ge=1, description="librdkafka batch.num.messages for posts.raw.")
    compression: Literal["lz4", "zstd", "none"] | None = Field(
        None, description="Deprecated (removed in 0.3): use KAFKA__PRODUCER__COMPRESSION."
    )
    linger_ms: int | None = Field(
        None, description="Deprecated (removed in 0.3): use KAFKA__PRODUCER__LINGER_MS."
    )
    delivery_timeout_ms: int | None = Field(
        None, description="Deprecated (removed in 0.3): use KAFKA__PRODUCER__DELIVERY_TIMEOUT_MS."
    )
    flush_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM or end of input, wait this long for acks."
    )
    batch_size: int = Field(2000, ge=1, description="Records a source hands to the pipeline at once.")
    lang_min_confidence: float = Field(
        0.5, ge=0, le=1, description="Below this, the detected language is 'und'."
    )
    lang_min_letters: int = Field(
        12, ge=0, description="Texts with fewer letters get 'und' without detection."
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(
        9101, description="Port of /metrics and /healthz for non-HTTP sources (0: any)."
    )
    reconnect_max_s: float = Field(
        60.0, gt=0, description="Firehose sources: longest backoff between reconnects."
    )
    reconnect_attempts: int = Field(
        0,
        ge=0,
        description="Firehose sources: give up (exit non-zero) after this many failed connects in a row; "
        "0 = keep trying.",
    )


class InferenceSettings(_Section):
    group_id: str = "pulse-inference"
    batch_size: int = Field(64, ge=1, description="Max records per consumed batch.")
    max_wait_ms: int = Field(50, ge=0, description="Max time to fill a batch.")
    micro_batch: int = Field(32, ge=1, description="Texts per model call, length-sorted.")
    providers: CommaList = Field(
        ("CPUExecutionProvider",),
        description="ONNX Runtime providers in order, e.g. CUDAExecutionProvider,CPUExecutionProvider.",
    )
    require_gpu: bool = Field(False, description="Fail at start when the session falls back to CPU.")
    device_id: int = Field(0, ge=0, description="GPU to pin this worker to.")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores.")
    model_dir: Path = Field(
        REPO_ROOT / "models",
        description="Directory of the shipped or exported models: one sub-directory per task, each with "
        "metadata.json (or, for one set, the directories' parent).",
    )
    variant: Literal["int8", "fp32", "fp16"] | None = Field(
        None, description="Model file variant; default int8 on CPU, fp16 on GPU, else fp32."
    )
    watchlist: Path = Field(REPO_ROOT / "infra" / "watchlist.yaml", description="Brands and keywords file.")
    http_port: int = Field(9102, ge=0, description="Port of /metrics and /healthz; 0 picks a free one.")
    http_host: str = Field(
        "127.0.0.1", description="Address of /metrics and /healthz (0.0.0.0 in a container)."
    )
    queue_batches: int = Field(
        2, ge=1, description="Consumed batches that may wait for the tokeniser before partitions are paused."
    )
    pause_after_ms: int = Field(
        50, ge=0, description="How long a full tokeniser queue may last before partitions are paused."
    )
    queue_micro_batches: int = Field(
        4, ge=1, description="Tokenised micro-batches that may wait for the model (bounds memory)."
    )
    drain_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM or partition revocation: how long to wait for in-flight records."
    )
    assignment_strategy: str = Field(
        "roundrobin",
        description="partition.assignment.strategy of the worker group. Eager by default: the local broker "
        "(noida-db 0.2.3) never completes the second phase of a cooperative-sticky rebalance, leaving the "
        "revoked partitions unowned; cooperative-sticky is fine on Apache Kafka.",
    )
    instance_id: str | None = Field(
        None,
        description="Static group membership (group.instance.id), unique per worker, e.g. the pod name: "
        "a restarted worker gets its partitions back at once instead of after a rebalance.",
    )
    stats_interval_ms: int = Field(
        5000, ge=0, description="librdkafka statistics period, the source of the consumer-lag gauge; 0 = off."
    )


class StreamsSettings(_Section):
    """The streams stage: trend counts in Redis from posts.enriched (faust-streaming)."""

    group_id: str = Field(
        "pulse-streams", description="Consumer group (faust app id) shared by every streams process."
    )
    batch_size: int = Field(
        10_000, ge=1, description="Records per batch applied to Redis (faust take_events)."
    )
    batch_within_s: float = Field(1.0, gt=0, description="Longest wait to fill a batch.")
    lateness_s: int = Field(
        30,
        ge=0,
        description="Allowed lateness: a post more than this behind its partition's newest event time is "
        "late (dead-lettered with reason 'late', not counted).",
    )
    idle_after_s: int = Field(
        10,
        ge=1,
        description="A partition without records for this long lets windows close on the wall clock.",
    )
    shards: int = Field(
        1, ge=1, le=1024, description="Term shards (Redis Cluster hash tags). Fixed for the life of the data."
    )
    sample_size: int = Field(
        10, ge=1, description="Sample posts kept per watched brand and keyword and minute (the newest)."
    )
    sample_ttl_s: int = Field(
        86_400, ge=60, description="Sample post texts expire this long after their last write (privacy)."
    )
    dedup_ttl_s: int = Field(
        3600,
        ge=0,
        description="A post delivered again (inference is at-least-once) within this long of its first copy "
        "is not counted twice, and an edit or a deletion within it can revise the post's counts; about "
        "130 bytes of Redis per post, about 100 more while edits or deletions revise counts (0: off).",
    )
    revise_counts: bool = Field(
        True,
        description="An edit (within STREAMS__DEDUP_TTL_S) moves its post's counts to the new version: "
        "the latest sentiment and terms are the ones reported. False: counts keep the first version.",
    )
    count_deleted: bool = Field(
        True,
        description="Counts keep deleted posts (aggregates name no one). False: a deletion within "
        "STREAMS__DEDUP_TTL_S takes the post out of the counts (not out of distinct-author estimates).",
    )
    redis_retry_s: float = Field(
        120.0,
        gt=0,
        description="How long a batch waits for Redis to come back before the process exits non-zero.",
    )
    http_host: str = Field(
        "127.0.0.1", description="Address of /metrics and /healthz (0.0.0.0 in a container)."
    )
    http_port: int = Field(9103, ge=0, description="Port of /metrics and /healthz; 0 picks a free one.")
    stream_buffer_maxsize: int = Field(
        131_072, ge=1, description="faust stream_buffer_maxsize (records buffered per partition)."
    )
    max_poll_records: int = Field(10_000, ge=1, description="faust broker_max_poll_records.")
    detectors: bool = Field(
        True,
        description="Run trending and alerts on this process while it owns partition 0 of posts.enriched "
        "(false: counting only).",
    )
    instance_id: str | None = Field(
        None,
        description="Static group membership (group.instance.id), unique per streams process: a restarted "
        "process gets its partitions back at once (the local broker never expires a killed member).",
    )


class TrendSettings(_Section):
    """Trending terms: each term's count in a window against its own baseline (the streams stage)."""

    windows: CommaInts = Field(
        (300, 3600), description="Window sizes in seconds a TrendSnapshot is published for, every step."
    )
    step_s: int = Field(
        10, ge=10, description="Snapshots (and alert checks) every this many seconds of event time."
    )
    baseline_windows: int = Field(
        12, ge=2, description="Past windows of the same size the baseline (EWMA) is computed from."
    )
    ewma_alpha: float = Field(
        0.3, gt=0, le=1, description="Weight of the most recent past window in the baseline."
    )
    min_count: int = Field(5, ge=1, description="Terms with fewer mentions in the window are not scored.")
    min_score: float = Field(2.0, description="Velocity z-score a term needs to be listed as trending.")
    top_k: int = Field(20, ge=1, le=200, description="Terms per kind in a snapshot.")
    candidates: int = Field(200, ge=1, description="Terms per kind scored each step (the most mentioned).")


class AlertSettings(_Section):
    """Spike alerts on watched brands and keywords (the streams stage raises them)."""

    window_s: int = Field(300, ge=10, description="Window the alert metrics are read over (seconds).")
    baseline_s: int = Field(3600, ge=60, description="Period before the window the baseline is read from.")
    min_volume: int = Field(30, ge=1, description="Mentions in the window an alert needs.")
    min_baseline_volume: int = Field(
        50, ge=1, description="Mentions in the baseline period a sentiment baseline needs (else: all posts')."
    )
    min_share_delta: float = Field(
        0.15, ge=0, le=1, description="Sentiment alerts: how far above its baseline the share must be."
    )
    min_volume_ratio: float = Field(
        2.0, ge=1, description="Volume alerts: mentions / baseline mentions needed."
    )
    z: float = Field(
        4.0,
        gt=0,
        description="Sensitivity: the z-score an alert needs (lower = more alerts; every step tests every "
        "subject, so 3 raises chance alerts on quiet subjects).",
    )
    cooldown_s: int = Field(
        1800,
        ge=0,
        description="After an alert, the same kind for the same subject waits this long (event time).",
    )
    samples: int = Field(5, ge=0, le=50, description="Sample posts carried as evidence.")
    retention_s: int = Field(
        2_592_000,
        ge=3600,
        description="Alerts (and the sample texts in their evidence) are kept in Redis for the API this "
        "long (30 days, as the alerts topic's retention.ms).",
    )


class ApiSettings(_Section):
    """The query API and dashboard (``pulse api``)."""

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in a container).")
    port: int = Field(8080, ge=0, description="Port of the API and the dashboard (0: any).")
    token: SecretStr | None = Field(
        None, description="Bearer token /v1 requires (the dashboard asks for it once); unset: no auth."
    )
    max_k: int = Field(200, ge=1, description="Largest k a request may ask for.")
    max_window_s: int = Field(7 * 86400, ge=60, description="Longest window a request may ask for.")
    max_points: int = Field(500, ge=10, description="Most steps a timeline or share-of-voice answer has.")


class NotifySettings(_Section):
    """Alert delivery to webhooks (``pulse notify``)."""

    group_id: str = Field("pulse-notify", description="Consumer group of the alerts topic.")
    webhooks: CommaList = Field(
        (),
        description="Where alerts go: comma-separated URLs; 'slack+https://…' for a Slack incoming webhook, "
        "plain https:// for a signed JSON POST.",
    )
    secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key for the X-Pulse-Signature header of JSON webhooks."
    )
    timeout_s: float = Field(10.0, gt=0, description="Per request.")
    retry_s: float = Field(
        300.0, gt=0, description="How long one alert is retried (5xx, timeouts) before it is dead-lettered."
    )
    http_host: str = Field("127.0.0.1", description="Address of /metrics and /healthz.")
    http_port: int = Field(9104, ge=0, description="Port of /metrics and /healthz; 0 picks a free one.")


REDACTABLE = ("email", "phone", "card", "ip")


class PrivacySettings(_Section):
    """What ingest removes from posts before they leave it (see docs/privacy.md)."""

    pseudonymize_authors: bool = Field(
        False,
        description="Replace author ids and handles (and post ids and permalinks, which name the author) "
        "by a keyed HMAC at ingest, and drop display names; distinct-author counts still work.",
    )
    hmac_key: SecretStr | None = Field(
        None,
        description="The key of that HMAC (required with PSEUDONYMIZE_AUTHORS; keep it secret and stable).",
    )
    redact: CommaList = Field(
        (),
        description=f"Personal data replaced in post text by a placeholder at ingest: any of "
        f"{', '.join(REDACTABLE)} (e.g. 'email,phone').",
    )
    phone_region: str = Field(
        "US",
        min_length=2,
        max_length=2,
        description="Region (ISO 3166 code) for phone numbers written without a '+' country code.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PrivacySettings:
        unknown = sorted(set(self.redact) - set(REDACTABLE))
        if unknown:
            raise ValueError(f"cannot redact {', '.join(unknown)}: choose from {', '.join(REDACTABLE)}")
        if self.pseudonymize_authors and (self.hmac_key is None or not self.hmac_key.get_secret_value()):
            raise ValueError("PRIVACY__PSEUDONYMIZE_AUTHORS needs PRIVACY__HMAC_KEY (a long random secret)")
        return self


class Settings(BaseSettings):
    """Everything a Social Pulse process can be told. Built once per process, passed down."""

    model_config = SettingsConfigDict(
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    local: LocalSettings = LocalSettings()
    ingest: IngestSettings = IngestSettings()
    inference: InferenceSettings = InferenceSettings()
    streams: StreamsSettings = StreamsSettings()
    trends: TrendSettings = TrendSettings()
    alerts: AlertSettings = AlertSettings()
    api: ApiSettings = ApiSettings()
    notify: NotifySettings = NotifySettings()
    privacy: PrivacySettings = PrivacySettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Root log level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: key=value lines; json: one object."
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_producer_settings(cls, data: Any) -> Any:
        """INGEST__COMPRESSION / LINGER_MS / DELIVERY_TIMEOUT_MS (0.1) still tune the producers for one
        release, unless the KAFKA__PRODUCER__ variable is set too (it wins); see ``deprecations``."""
        if not isinstance(data, dict) or not isinstance(data.get("ingest"), dict):
            return data
        ingest = data["ingest"]
        moved = {old: ingest[old] for old in DEPRECATED_PRODUCER_FIELDS if ingest.get(old) is not None}
        if not moved:
            return data
        kafka = data.get("kafka")
        kafka = (
            dict(kafka)
            if isinstance(kafka, dict)
            else kafka.model_dump()
            if isinstance(kafka, BaseModel)
            else {}
        )
        producer = kafka.get("producer")
        producer = dict(producer) if isinstance(producer, dict) else producer.model_dump() if producer else {}
        kafka["producer"] = {**moved, **producer}
        return {**data, "kafka": kafka}

    @model_validator(mode="after")
    def _one_group_per_stage(self) -> Settings:
        """Each consuming stage needs its own consumer group: a faust member joining the inference
        workers' group (measured here) revoked their partitions and crashed librdkafka
        (``rd_slice_init_full: Assertion `r == 0' failed``)."""
        groups = {
            "INFERENCE__GROUP_ID": self.inference.group_id,
            "STREAMS__GROUP_ID": self.streams.group_id,
            "NOTIFY__GROUP_ID": self.notify.group_id,
        }
        seen: dict[str, str] = {}
        for name, group in groups.items():
            if group in seen:
                raise ValueError(
                    f"{seen[group]} and {name} are both {group!r}: each stage needs a group of its own"
                )
            seen[group] = name
        return self

    def deprecations(self) -> list[str]:
        """One line per deprecated variable in use, for ``main()`` to log once logging is set up."""
        return [
            f"INGEST__{name.upper()} is deprecated and goes in 0.3: set KAFKA__PRODUCER__{name.upper()} "
            f"(it tunes every stage's producer)"
            for name in DEPRECATED_PRODUCER_FIELDS
            if getattr(self.ingest, name) is not None
        ]


def _as_dict(section: Any) -> dict[str, Any]:
    """A section as given to the constructor: a dict, a model, or absent."""
    if isinstance(section, BaseModel):
        return section.model_dump()
    return dict(section) if isinstance(section, dict) else {}


# Producer settings that lived in the ingest section in 0.1 (they tuned inference's producer too).
DEPRECATED_PRODUCER_FIELDS = ("compression", "linger_ms", "delivery_timeout_ms")


def load(**overrides: Any) -> Settings:
    """Build the settings from the environment (and ``.env``), with explicit overrides on top."""
    return Settings(**overrides)


def reference() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for the README and `pulse config`."""
    rows: list[tuple[str, str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name.upper()}__")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, Path):
                default = default.relative_to(REPO_ROOT) if default.is_relative_to(REPO_ROOT) else default
            if isinstance(default, tuple):
                default = ",".join(map(str, default))
            shown = "" if default is None else "{}" if default == {} else str(default)
            rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))

    walk(Settings, "")
    return rows


def markdown_reference() -> str:
    """The README's configuration table."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for variable, default, meaning in reference():
        shown = f"`{default}`" if default else ""
        lines.append(f"| `{variable}` | {shown} | {meaning} |")
    return "\n".join(lines) + "\n"
