"""Runtime pieces that need no model: providers, variants, word offsets, entity normalisation."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from workers.inference.onnx_models import (
    GpuUnavailableError,
    ModelLoadError,
    ModelMetadata,
    OnnxSentimentModel,
    choose_variant,
    normalise_entity,
    resolve_providers,
    softmax,
)
from workers.inference.wordpieces import word_spans

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


def _wordpiece(marks: bool = False) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer over a small vocabulary, optionally with case marks."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "§", "!", "@", "#", "/", ":", ".", "thanks", "delta"]
    vocab += ["fly", "##ing", "to", "sao", "paulo", "travel", "https", "t", "co", "x", "##1"]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    bert = normalizers.BertNormalizer(lowercase=True)
    marks_steps = [normalizers.Replace(Regex(rf"\b{c}"), "§" + c) for c in string.ascii_uppercase]
    tok.normalizer = normalizers.Sequence([*marks_steps, bert]) if marks else bert
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


TEXT = "Thanks @Delta! Flying to São Paulo #travel https://t.co/x1 😡"


def test_words_start_at_every_non_continuation_token_with_offsets_into_the_text() -> None:
    enc = _wordpiece().encode(TEXT)
    words = word_spans(TEXT, enc, "##", 1)
    # "Flying" is fly + ##ing: one word; punctuation and the unknown emoji are words of their own.
    assert [TEXT[s:e] for _, s, e in words] == [
        "Thanks", "@", "Delta", "!", "Flying", "to", "São", "Paulo", "#", "travel",
        "https", ":", "/", "/", "t", ".", "co", "/", "x1", "😡",
    ]  # fmt: skip
    assert [enc.tokens[p] for p, _, _ in words][:5] == ["thanks", "@", "delta", "!", "fly"]


def test_case_marks_are_words_aligned_to_the_capital_they_mark() -> None:
    enc = _wordpiece(marks=True).encode(TEXT)
    words = word_spans(TEXT, enc, "##", 1)
    marks = [(s, e) for p, s, e in words if enc.tokens[p] == "§"]
    assert [TEXT[s:e] for s, e in marks] == ["T", "D", "F", "S", "P"]
    # The marked word itself still spans the whole word, capital included.
    assert [TEXT[s:e] for p, s, e in words if enc.tokens[p] in {"delta", "paulo"}] == ["Delta", "Paulo"]


def test_without_a_continuation_prefix_words_start_after_spaces() -> None:
    enc = _wordpiece().encode("thanks delta")
    assert [(s, e) for _, s, e in word_spans("thanks delta", enc, None, None)] == [(0, 6), (7, 12)]


@given(st.text(max_size=80))
def test_word_spans_stay_inside_the_text_in_order(text: str) -> None:
    enc = _wordpiece(marks=True).encode(text)
    words = word_spans(text, enc, "##", 1)
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts)
    assert all(0 <= s < e <= len(text) for _, s, e in words)


def test_entity_normal_form_folds_case_space_and_handle_marks() -> None:
    assert normalise_entity("@Apple") == "apple"
    assert normalise_entity("New   York") == "new york"
    assert normalise_entity("#DeflateGate") == "deflategate"
    assert normalise_entity("Tim Cook's.") == "tim cook's"
    assert normalise_entity("#") == "#"


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
