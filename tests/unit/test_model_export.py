"""`pulse models export` end to end on a tiny randomly initialised BERT (built from a config, no download)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from workers.inference.onnx_models import ModelLoadError, OnnxEntityModel, OnnxSentimentModel  # noqa: E402
from workers.training.export import ExportError, export_joint, export_model, load_model  # noqa: E402

pytestmark = pytest.mark.slow

WORDS = [
    "the",
    "a",
    "flight",
    "was",
    "great",
    "awful",
    "thank",
    "you",
    "paris",
    "obama",
    "apple",
    "!",
    "@",
    "#",
    "§",
    "##s",
]
SENT_LABELS = ["negative", "neutral", "positive"]
NER_LABELS = ["O", "B-person", "I-person", "B-company", "I-company"]


def _tiny_checkpoint(root: Path, task: str) -> Path:
    """A 2-layer, 32-wide BERT with random weights and a word-level vocab, saved like a hub checkpoint."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = list(
        dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz"])
    )
    tok = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert tok.vocab_size == len(vocab)
    labels = SENT_LABELS if task == "sentiment" else NER_LABELS
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(0)
    cls = (
        transformers.BertForSequenceClassification
        if task == "sentiment"
        else transformers.BertForTokenClassification
    )
    cls(config).save_pretrained(str(root))
    tok.save_pretrained(str(root))
    return root


def _export(tmp_path: Path, task: str, **kwargs: object) -> tuple[Path, Path, dict]:
    hf = _tiny_checkpoint(tmp_path / "hf", task)
    out = tmp_path / "onnx"
    with warnings.catch_warnings():
        # The TorchScript exporter warns about tracing and its own deprecation; not ours to fix.
        warnings.simplefilter("ignore")
        meta = export_model(hf, task, out, max_length=128, **kwargs)
    return hf, out, meta


def test_sentiment_export_matches_pytorch_and_writes_metadata(tmp_path: Path) -> None:
    hf, out, meta = _export(tmp_path, "sentiment", int8=True)
    written = json.loads((out / "metadata.json").read_text())
    assert written["task"] == "sentiment"
    assert written["labels"] == SENT_LABELS
    assert written["max_length"] == 64  # capped by the model's position embeddings
    assert written["opset"] >= 17
    assert written["version"] and written["source"]["hf_dir"] == str(hf)
    assert written["files"] == {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    assert meta["check"]["fp32"]["max_abs_diff"] < 1e-4
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json"):
        assert (out / name).is_file()

    # Dynamic axes: the runtime runs batches and lengths the trace never saw, and matches PyTorch.
    texts = ["thank you", "the flight was awful ! " * 5, "", "a"]
    model = OnnxSentimentModel(out, variant="fp32", intra_op_threads=1)
    probs = model.probabilities(texts, batch_size=3)
    ref_model = load_model(hf, "sentiment")
    tok = transformers.AutoTokenizer.from_pretrained(str(hf))
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        ref = torch.softmax(ref_model(**enc).logits, -1).numpy()
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs, ref, atol=1e-4)
    assert [s.label for s in model.predict(texts)] == [SENT_LABELS[i] for i in ref.argmax(1)]


def test_ner_export_runs_in_the_entity_runtime(tmp_path: Path) -> None:
    _, out, meta = _export(tmp_path, "ner", int8=True)
    assert meta["check"]["fp32"]["max_abs_diff"] < 1e-4
    model = OnnxEntityModel(out, intra_op_threads=1)
    assert model.variant == "int8"
    texts = ["obama thanks apple in paris", "", "🙂 " * 300]
    results = model.predict(texts)
    assert len(results) == 3
    for text, ents in zip(texts, results, strict=True):
        for e in ents:
            assert text[e.start : e.end] == e.text
            assert e.type in {"person", "company"}


def test_ner_runtime_reads_entities_as_the_transformers_pipeline_does(tmp_path: Path) -> None:
    """Same words, tags, spans and offsets as `pipeline(aggregation_strategy="first")` on the
    checkpoint, case marks included: random weights tag nearly every word, so every boundary counts."""
    from transformers import AutoTokenizer, pipeline

    from workers.training.train import add_case_marks, save_tokenizer

    hf = _tiny_checkpoint(tmp_path / "hf", "ner")
    tok = AutoTokenizer.from_pretrained(str(hf))
    add_case_marks(tok)
    save_tokenizer(tok, hf, verbatim=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_model(hf, "ner", tmp_path / "onnx", max_length=64)
        ner = pipeline("token-classification", model=str(hf), aggregation_strategy="first", device=-1)
    texts = [
        "Obama thanks Apple in Paris!",
        "@apple #Paris flights were AWFUL",
        "the apples flight was great 🙂 you",
        "Thank you Obama, thank you Apple... the flight!",
        "",
    ]
    model = OnnxEntityModel(tmp_path / "onnx", variant="fp32", intra_op_threads=1)
    ours = [{(e.type, e.start, e.end) for e in ents} for ents in model.predict(texts, batch_size=2)]
    ref = [{(e["entity_group"], e["start"], e["end"]) for e in ents} for ents in ner(texts)]
    assert sum(map(len, ref)) > 5  # random weights: plenty of entities to compare
    assert ours == ref


def test_export_fails_when_logits_differ_beyond_tolerance(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differ from PyTorch"):
        _export(tmp_path, "sentiment", tolerance=-1.0)


def test_export_refuses_opset_below_17(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="opset"):
        export_model(tmp_path, "sentiment", tmp_path / "out", opset=16)


def _tiny_pair(root: Path, shared: bool = True) -> tuple[Path, Path]:
    """Tiny sentiment and NER checkpoints with one encoder, saved as `pulse models train joint` does."""
    from workers.training.train import _save_token_head, share_encoder

    seq_dir = _tiny_checkpoint(root / "sentiment-hf", "sentiment")
    tok_dir = _tiny_checkpoint(root / "ner-hf", "ner")
    sequence = transformers.BertForSequenceClassification.from_pretrained(str(seq_dir))
    token = transformers.BertForTokenClassification.from_pretrained(str(tok_dir))
    torch.manual_seed(1)
    with torch.no_grad():  # make the encoders differ, then (if shared) make them one
        for p in sequence.bert.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if shared:
        share_encoder(sequence, token)
    sequence.save_pretrained(str(seq_dir))
    _save_token_head(token, tok_dir)
    return seq_dir, tok_dir


def test_joint_export_runs_both_heads_in_one_pass_as_the_two_checkpoints_do(tmp_path: Path) -> None:
    from workers.inference.onnx_models import SeparateHeadsModel, SharedEncoderModel, post_model

    seq_dir, tok_dir = _tiny_pair(tmp_path / "hf")
    out = tmp_path / "onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metas = export_joint(seq_dir, tok_dir, out, int8=True, max_length=128, name="tiny")
    for name in ("model.onnx", "model.int8.onnx", "tokenizer.json"):
        assert (out / name).is_file()
    for task, labels in (("sentiment", SENT_LABELS), ("ner", NER_LABELS)):
        written = json.loads((out / task / "metadata.json").read_text())
        assert written == metas[task]
        assert written["task"] == task and written["labels"] == labels
        assert written["files"] == {"fp32": "../model.onnx", "int8": "../model.int8.onnx"}
        assert written["tokenizer"] == "../tokenizer.json" and written["shared_encoder"] is True
        assert written["check"]["fp32"]["max_abs_diff"] < 1e-4
    assert metas["sentiment"]["output"] != metas["ner"]["output"]
    assert metas["sentiment"]["version"] == metas["ner"]["version"]

    sentiment = OnnxSentimentModel(out / "sentiment", variant="fp32", intra_op_threads=1)
    entities = OnnxEntityModel(out / "ner", variant="fp32", intra_op_threads=1, share_with=sentiment)
    assert entities.session is sentiment.session
    pair = post_model(sentiment, entities)
    assert isinstance(pair, SharedEncoderModel)
    texts = ["thank you apple", "obama was in paris ! " * 4, "", "a", "🙂"]
    both = pair.predict(texts, batch_size=2)
    assert both == (sentiment.predict(texts), entities.predict(texts))
    # Each head of the graph is its own checkpoint's model.
    ref_model = load_model(seq_dir, "sentiment")
    tok = transformers.AutoTokenizer.from_pretrained(str(seq_dir))
    enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.inference_mode():
        ref = torch.softmax(ref_model(**enc).logits, -1).numpy()
    np.testing.assert_allclose(sentiment.probabilities(texts), ref, atol=1e-4)
    # The stage's loader finds the two heads under one directory and opens one session for both.
    from pulse.settings import load
    from workers.inference import loader

    cfg = load(inference={"model_dir": str(out), "variant": "int8", "intra_op_threads": 1}).inference
    loaded = loader.load_model(cfg)
    assert isinstance(loaded, SharedEncoderModel)
    assert loaded.entities.session is loaded.sentiment.session
    # Heads of different graphs never pair up: they run in turn.
    other = OnnxEntityModel(out / "ner", variant="int8", intra_op_threads=1, share_with=sentiment)
    assert other.session is not sentiment.session
    assert isinstance(post_model(sentiment, other), SeparateHeadsModel)
    with pytest.raises(ModelLoadError, match="not heads of one graph"):
        SharedEncoderModel(sentiment, other)


def test_joint_export_refuses_checkpoints_with_different_encoders(tmp_path: Path) -> None:
    seq_dir, tok_dir = _tiny_pair(tmp_path / "hf", shared=False)
    with pytest.raises(ExportError, match="do not share their encoder"):
        export_joint(seq_dir, tok_dir, tmp_path / "onnx")


def test_blockwise_int8_export_follows_pytorch_and_keeps_named_nodes_fp32(tmp_path: Path) -> None:
    _, out, meta = _export(
        tmp_path, "sentiment", int8=True, int8_block=32, int8_fp32_nodes=[r"/intermediate/dense/MatMul$"]
    )
    method = meta["check"]["int8_method"]
    assert method["method"] == "8-bit blocks of 32"
    assert method["fp32_nodes"]["count"] == 2  # one FFN up-projection per layer, 2 layers
    assert meta["check"]["int8"]["argmax_agreement"] == 1.0
    texts = ["thank you", "the flight was awful !", ""]
    int8 = OnnxSentimentModel(out, variant="int8", intra_op_threads=1).probabilities(texts)
    fp32 = OnnxSentimentModel(out, variant="fp32", intra_op_threads=1).probabilities(texts)
    np.testing.assert_allclose(int8, fp32, atol=0.02)


def test_fp16_tables_give_the_same_lookups_to_fp16_rounding(tmp_path: Path) -> None:
    import shutil

    from workers.training.export import fp16_gather_tables

    _, out, _ = _export(tmp_path, "ner")
    before = OnnxEntityModel(out, variant="fp32", intra_op_threads=1)
    texts = ["obama thanks apple in paris", "a"]
    ref = before.run(before.pad(before.encode(texts)))
    shutil.copy(out / "model.onnx", out / "model.fp16tables.onnx")
    # word, position and token-type embeddings: all three tables of the tiny model
    assert fp16_gather_tables(out / "model.fp16tables.onnx", min_elements=1) == 3
    meta = json.loads((out / "metadata.json").read_text())
    meta["files"]["fp32"] = "model.fp16tables.onnx"
    (out / "metadata.json").write_text(json.dumps(meta))
    after = OnnxEntityModel(out, variant="fp32", intra_op_threads=1)
    np.testing.assert_allclose(after.run(after.pad(after.encode(texts))), ref, atol=5e-3)


def test_fp32_node_patterns_that_match_nothing_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no MatMul node matches"):
        _export(tmp_path, "sentiment", int8=True, int8_fp32_nodes=["no-such-node"])
