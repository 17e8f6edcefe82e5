"""Runtime pieces that need no model: providers, variants, word offsets, entity normalisation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.inference.onnx_models import (
    GpuUnavailableError,
    ModelLoadError,
    ModelMetadata,
    OnnxSentimentModel,
    case_flag,
    choose_variant,
    normalise_entity,
    resolve_providers,
    softmax,
    split_words,
)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def test_providers_keep_order_expand_aliases_and_drop_unavailable() -> None:
    assert resolve_providers(["tensorrt", "cuda", "cpu"], [TRT, CUDA, CPU]) == [TRT, CUDA, CPU]
    assert resolve_providers([CUDA, CPU], [CPU]) == [CPU]
    assert resolve_providers([TRT], [CPU]) == [CPU]
    assert resolve_providers([CPU, CPU], [CPU]) == [CPU]


def test_variant_is_int8_on_cpu_fp16_on_gpu_unless_named() -> None:
    files = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
    assert choose_variant(files, [CPU], None) == "int8"
    assert choose_variant(files, [CUDA, CPU], None) == "fp16"
    assert choose_variant({"fp32": "model.onnx", "int8": "m"}, [CUDA, CPU], None) == "fp32"
    assert choose_variant(files, [CPU], "fp32") == "fp32"
    with pytest.raises(ModelLoadError):
        choose_variant({"fp32": "model.onnx"}, [CPU], "int8")


def test_words_carry_exact_offsets_and_keep_handles_hashtags_urls_whole() -> None:
    text = "Thanks @Delta! Flying to São Paulo #travel https://t.co/x1 😡"
    words = split_words(text)
    assert [w for w, _, _ in words] == [
        "Thanks",
        "@Delta",
        "!",
        "Flying",
        "to",
        "São",
        "Paulo",
        "#travel",
        "https://t.co/x1",
        "😡",
    ]
    assert all(text[s:e] == w for w, s, e in words)


@given(st.text(max_size=80))
def test_word_offsets_always_slice_back_to_the_word(text: str) -> None:
    for w, s, e in split_words(text):
        assert text[s:e] == w and w.strip()


def test_entity_normal_form_folds_case_space_and_handle_marks() -> None:
    assert normalise_entity("@Apple") == "apple"
    assert normalise_entity("New   York") == "new york"
    assert normalise_entity("#DeflateGate") == "deflategate"
    assert normalise_entity("Tim Cook's.") == "tim cook's"
    assert normalise_entity("#") == "#"


def test_case_flag_marks_capitalised_words_handles_included() -> None:
    assert [case_flag(w) for w in ["Apple", "apple", "@Delta", "#NYC", "@", "", "東京", "ÉCOLE", "1st"]] == [
        1,
        0,
        1,
        1,
        0,
        0,
        0,
        1,
        0,
    ]


def test_softmax_rows_sum_to_one_and_keep_order() -> None:
    p = softmax(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[0].argmax() == 0 and np.allclose(p[1], 1 / 3)


def test_missing_or_bad_metadata_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        ModelMetadata.from_dir(tmp_path)
    (tmp_path / "metadata.json").write_text(json.dumps({"task": "sentiment"}))
    with pytest.raises(ModelLoadError, match="bad metadata"):
        ModelMetadata.from_dir(tmp_path)


def test_require_gpu_without_a_gpu_provider_requested_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "metadata.json").write_text(
        json.dumps(
            {
                "task": "sentiment",
                "version": "x",
                "labels": ["a"],
                "max_length": 8,
                "files": {"fp32": "m.onnx"},
            }
        )
    )
    with pytest.raises(GpuUnavailableError):
        OnnxSentimentModel(tmp_path, providers=[CPU], require_gpu=True)


def test_runtime_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import workers.inference.onnx_models, workers.inference.bio, workers.training.cli\n"
        "print(','.join(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
