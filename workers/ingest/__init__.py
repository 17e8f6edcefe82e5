"""Ingest: sources → normalise → validate → dedup → posts.raw (see docs/ingest.md)."""
