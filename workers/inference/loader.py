"""Finds the models in ``INFERENCE__MODEL_DIR`` and opens them as the stage's seams.

The ONNX Runtime classes (``OnnxSentimentModel``, ``OnnxEntityModel``) own their sessions and read
everything else from each model directory's ``metadata.json``; this module only decides which
directories to open, with which providers and device, and turns their load errors into one. It
returns one ``PostModel``: when both directories name the same graph (one encoder with two heads)
the heads share a session and run as one, otherwise they run in turn.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pulse.settings import InferenceSettings
from workers.inference.protocols import PostModel


class ModelLoadError(RuntimeError):
    """The models cannot be opened: missing files, bad metadata, a GPU required but absent."""


def model_dirs(model_dir: Path) -> dict[str, Path]:
    """Task ("sentiment", "ner") to model directory: ``model_dir`` itself or its sub-directories."""
    found: dict[str, list[Path]] = {}
    candidates = (
        [model_dir, *sorted(p for p in model_dir.iterdir() if p.is_dir())] if model_dir.is_dir() else []
    )
    for directory in candidates:
        meta = directory / "metadata.json"
        if not meta.is_file():
            continue
        try:
            task = json.loads(meta.read_text(encoding="utf-8")).get("task")
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{meta}: unreadable ({exc})") from None
        found.setdefault(str(task), []).append(directory)
    out: dict[str, Path] = {}
    for task in ("sentiment", "ner"):
        dirs = found.get(task, [])
        if not dirs:
            raise ModelLoadError(
                f"no {task} model under {model_dir} (a directory with metadata.json, "
                f"task '{task}'; see `pulse models export`)"
            )
        if len(dirs) > 1:
            raise ModelLoadError(
                f"more than one {task} model under {model_dir}: "
                f"{', '.join(str(d) for d in dirs)}; point INFERENCE__MODEL_DIR at one set"
            )
        out[task] = dirs[0]
    return out


def load_model(cfg: InferenceSettings) -> PostModel:
    """Open both heads with the configured providers; fail fast when a required GPU is missing."""
    from workers.inference import onnx_models as runtime

    dirs = model_dirs(cfg.model_dir)
    options: dict[str, Any] = {
        "providers": tuple(cfg.providers),
        "intra_op_threads": cfg.intra_op_threads,
        "require_gpu": cfg.require_gpu,
        "device_id": cfg.device_id,
        "variant": cfg.variant,
        "batch_size": cfg.micro_batch,
    }
    try:
        sentiment = runtime.OnnxSentimentModel(dirs["sentiment"], **options)
        # Heads of one graph (`pulse models export-joint`) share its session.
        entities = runtime.OnnxEntityModel(dirs["ner"], share_with=sentiment, **options)
    except (runtime.ModelLoadError, runtime.GpuUnavailableError) as exc:
        raise ModelLoadError(str(exc)) from None
    return runtime.post_model(sentiment, entities)
