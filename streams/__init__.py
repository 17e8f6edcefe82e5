"""The streams stage: effectively-once sliding-window trend counts in Redis, trending, alerts.

Pure parts (bucket maths, aggregation, scoring) are plain modules; ``store`` and ``app`` are the
shells that talk to Redis and Kafka. The API reads through ``streams.read`` only.
"""

STAGE = "streams"
