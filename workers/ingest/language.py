"""Language detection for posts whose source did not say: py3langid, 'und' below a confidence floor."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from workers.ingest.normalise import text_for_language


class LanguageDetector(Protocol):
    def detect(self, texts: Sequence[str]) -> list[str]:
        """One BCP 47 tag per text, 'und' when not confident."""
        ...


class Py3LangidDetector:
    """py3langid (maintained fork of langid.py, ~97 languages, offline) with normalised probabilities.

    Very short texts are unreliable for every detector, so anything with fewer than ``min_letters``
    letters after removing URLs, mentions and hashtags is 'und' without asking the model.
    """

    def __init__(self, min_confidence: float = 0.5, min_letters: int = 12) -> None:
        self.min_confidence = min_confidence
        self.min_letters = min_letters
        self._model: Any = None
        self._lock = threading.Lock()

    def preload(self) -> threading.Thread:
        """Load the model on a thread now (it takes seconds: an lzma-packed pickle), not at the first
        post without a language."""
        thread = threading.Thread(target=self._identifier, name="langid-load", daemon=True)
        thread.start()
        return thread

    def _identifier(self) -> Any:
        with self._lock:
            if self._model is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
            return self._model

    def detect(self, texts: Sequence[str]) -> list[str]:
        out = []
        for text in texts:
            prose = text_for_language(text)
            if sum(c.isalpha() for c in prose) < self.min_letters:
                out.append("und")
                continue
            lang, confidence = self._identifier().classify(prose)
            out.append(str(lang) if confidence >= self.min_confidence else "und")
        return out
