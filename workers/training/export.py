"""Export of a Hugging Face checkpoint directory to ONNX (fp32, int8, fp16), checked against PyTorch."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from workers.training.fetch import sha256_file

log = logging.getLogger("pulse.models.export")

FORMAT_VERSION = 1
FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}

# Texts that exercise the awkward cases: empty, emoji, non-Latin scripts, a long post, mixed lengths.
CHECK_TEXTS = (
    "",
    "@united you lost my bag AGAIN. worst airline ever!!! 😡😡",
    "Thank you @Delta for the upgrade, you made my day 🙏",
    "Just landed in Paris with Barack Obama and Tim Cook #travel",
    "東京は今日とても暑いです",
    "Привет, как дела? Москва сегодня холодная.",
    "مرحبا بالعالم",
    "ok",
    " ".join(["this is a very long post about nothing in particular"] * 40),
)


class ExportError(RuntimeError):
    """The export could not be produced or did not match PyTorch within tolerance."""


def _model_class(task: str) -> type[PreTrainedModel]:
    if task == "sentiment":
        return AutoModelForSequenceClassification  # type: ignore[return-value]
    if task == "ner":
        return AutoModelForTokenClassification  # type: ignore[return-value]
    raise ExportError(f"unknown task {task!r}")


def load_model(hf_dir: Path, task: str) -> PreTrainedModel:
    """A freshly loaded PyTorch model in eval mode (after export, the exported instance may differ)."""
    model = _model_class(task).from_pretrained(str(hf_dir))
    model.eval()
    return model


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: PreTrainedModel, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs, strict=True))).logits


def _labels(config: Any) -> list[str]:
    id2label = {int(k): v for k, v in config.id2label.items()}
    return [id2label[i] for i in range(len(id2label))]


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(tok: Any, texts: list[str], input_names: list[str], max_length: int) -> dict[str, np.ndarray]:
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {name: enc[name].astype(np.int64) for name in input_names}


def compare(
    model: PreTrainedModel,
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    task: str,
    output: str = "logits",
) -> dict[str, float]:
    """Max abs logit difference (over real tokens for NER) and arg-max agreement, PyTorch vs ONNX."""
    with torch.inference_mode():
        ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.float().numpy()
    got = session.run([output], {i.name: feeds[i.name] for i in session.get_inputs()})[0].astype(np.float32)
    if task == "ner":
        mask = feeds["attention_mask"].astype(bool)
        ref, got = ref[mask], got[mask]
    return {
        "max_abs_diff": float(np.abs(ref - got).max()),
        "argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
    }


@dataclass(frozen=True)
class _Source:
    """A checkpoint's tokenizer and the input names and length limit the export uses."""

    hf_dir: Path
    config: Any
    tok: Any
    max_length: int
    input_names: list[str]


def _source(hf_dir: Path, max_length: int) -> _Source:
    config = AutoConfig.from_pretrained(str(hf_dir))
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    if not getattr(tok, "is_fast", False):
        raise ExportError("the runtime needs a fast tokenizer (tokenizer.json); this checkpoint has none")
    limit = int(getattr(config, "max_position_embeddings", max_length))
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert"}:
        limit -= 2  # positions start after the padding index
    model_max = getattr(tok, "model_max_length", limit)
    max_length = int(min(max_length, limit, model_max if model_max and model_max < 1_000_000 else limit))
    input_names: list[str] = [
        n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tok.model_input_names
    ]
    if "input_ids" not in input_names or "attention_mask" not in input_names:
        raise ExportError(f"unsupported tokenizer inputs {tok.model_input_names}")
    return _Source(Path(hf_dir), config, tok, max_length, input_names)


def _to_onnx(module: torch.nn.Module, src: _Source, path: Path, outputs: dict[str, str], opset: int) -> None:
    """Trace `module` to `path`: dynamic batch and sequence axes; `outputs` maps name -> task."""
    sample = _feeds(
        src.tok,
        ["hello world", "a slightly longer example text for tracing"],
        src.input_names,
        src.max_length,
    )
    dynamic: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in src.input_names}
    for name, task in outputs.items():
        dynamic[name] = {0: "batch", 1: "sequence"} if task == "ner" else {0: "batch"}
    with torch.inference_mode():
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(sample[n]) for n in src.input_names),
            str(path),
            input_names=src.input_names,
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def fp32_nodes(model_path: Path, patterns: Sequence[str]) -> list[str]:
    """Names of the graph's MatMul/Gemm nodes matching any regex in `patterns` (kept fp32 in int8)."""
    if not patterns:
        return []
    compiled = [re.compile(p) for p in patterns]
    graph = onnx.load(str(model_path), load_external_data=False).graph
    names = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    kept = [name for name in names if any(c.search(name) for c in compiled)]
    if not kept:
        raise ExportError(f"no MatMul node matches {list(patterns)}; names look like {names[:2]}")
    return kept


def fp16_gather_tables(path: Path, min_elements: int = 1 << 20) -> int:
    """Store large fp32 tables read by Gather (embeddings) as fp16, cast back to fp32 after the lookup.

    Halves the file's largest tensor without quantising it: the lookup returns the same rows to
    within fp16 rounding. Returns the number of tables converted.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    tables = {i.name: i for i in graph.initializer}
    nodes = []
    converted = 0
    for node in graph.node:
        nodes.append(node)
        table = tables.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or table.data_type != TensorProto.FLOAT or np.prod(table.dims) < min_elements:
            continue
        table.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(table).astype(np.float16), table.name))
        looked_up = node.output[0]
        node.output[0] = f"{looked_up}_fp16"
        nodes.append(
            helper.make_node(
                "Cast", [node.output[0]], [looked_up], to=TensorProto.FLOAT, name=f"{node.name}_to_fp32"
            )
        )
        converted += 1
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    return converted


def quantize_int8(src: Path, dest: Path, block: int = 0, fp32_patterns: Sequence[str] = ()) -> dict[str, Any]:
    """The int8 variant of `src`; returns how it was made (for the metadata).

    block == 0: `quantize_dynamic` (int8 weights with per-channel scales, activations quantised per
    tensor per batch at run time). block > 0: 8-bit weights in blocks of `block` along the input
    dimension (`MatMulNBits`), run by ORT with int8 arithmetic on activations quantised per block of
    each row (accuracy level 4), and the embedding tables stored as fp16. Per-block scales keep
    BERT's outlier activation dimensions from flattening a whole tensor's range.
    """
    keep = fp32_nodes(src, fp32_patterns)
    method: dict[str, Any] = {"method": "dynamic per-channel" if not block else f"8-bit blocks of {block}"}
    if keep:
        method["fp32_nodes"] = {"patterns": list(fp32_patterns), "count": len(keep)}
    if not block:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep
        )
        return method
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        bits=8,
        block_size=block,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=keep,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dest), False)
    method["fp16_tables"] = fp16_gather_tables(dest)
    return method


def _variants(
    fp32_path: Path,
    int8: bool,
    fp16: bool,
    check: Any,
    tolerance: float,
    int8_fp32_nodes: Sequence[str] = (),
    int8_block: int = 0,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Check fp32 (fails above `tolerance`), write and check the int8/fp16 variants beside it.

    `check(session)` compares a session's logits with freshly loaded PyTorch models and returns
    {"max_abs_diff", "argmax_agreement"} (or one such dict per output for a two-head graph).
    """
    out = fp32_path.parent
    checks: dict[str, Any] = {"texts": len(CHECK_TEXTS), "tolerance": tolerance}
    checks["fp32"] = check(_session(fp32_path))
    log.info("check fp32 %s", checks["fp32"])
    worst = max(_diffs(checks["fp32"]))
    if worst > tolerance:
        raise ExportError(f"fp32 ONNX logits differ from PyTorch by {worst:.3g} > {tolerance:g}")
    files = {"fp32": FILES["fp32"]}
    if int8:
        int8_path = out / FILES["int8"]
        checks["int8_method"] = quantize_int8(fp32_path, int8_path, int8_block, int8_fp32_nodes)
        checks["int8"] = check(_session(int8_path))
        log.info("check int8 %s", checks["int8"])
        files["int8"] = FILES["int8"]
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16_path = out / FILES["fp16"]
        onnx.save(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True), str(fp16_path))
        try:
            checks["fp16"] = check(_session(fp16_path))
        except Exception as exc:
            checks["fp16"] = {"skipped": f"not runnable on CPU here: {type(exc).__name__}"}
        log.info("check fp16 %s", checks["fp16"])
        files["fp16"] = FILES["fp16"]
    return files, checks


def _diffs(check: dict[str, Any]) -> list[float]:
    if "max_abs_diff" in check:
        return [float(check["max_abs_diff"])]
    return [float(c["max_abs_diff"]) for c in check.values()]


def _save_tokenizer(src: _Source, out: Path) -> None:
    src.tok.save_pretrained(str(out))
    for extra in ("special_tokens_map.json", "vocab.txt", "tokenizer_config.json"):
        if (src.hf_dir / extra).exists() and not (out / extra).exists():
            shutil.copy(src.hf_dir / extra, out / extra)
    if not (out / "tokenizer.json").exists():
        raise ExportError("tokenizer.json was not written")


def _metadata(
    src: _Source, task: str, *, name: str | None, version: str | None, fp32_path: Path, opset: int
) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "task": task,
        "name": name or src.hf_dir.resolve().name,
        "version": version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d") + "-" + sha256_file(fp32_path)[:8],
        "labels": _labels(src.config),
        "max_length": src.max_length,
        "inputs": src.input_names,
        "pad_token_id": int(src.tok.pad_token_id if src.tok.pad_token_id is not None else 0),
        "tokenizer": "tokenizer.json",
        "opset": opset,
        "source": {
            "hf_dir": str(src.hf_dir),
            "model_type": getattr(src.config, "model_type", None),
            "name_or_path": getattr(src.config, "_name_or_path", None),
        },
        "exported_with": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
        },
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def export_model(
    hf_dir: Path,
    task: str,
    out: Path,
    *,
    int8: bool = False,
    fp16: bool = False,
    opset: int = 17,
    max_length: int = 128,
    tolerance: float = 1e-3,
    version: str | None = None,
    name: str | None = None,
    int8_fp32_nodes: Sequence[str] = (),
    int8_block: int = 0,
) -> dict[str, Any]:
    """Write model.onnx (+ int8/fp16 variants), tokenizer.json and metadata.json to `out`.

    Raises ExportError when the fp32 graph differs from a freshly loaded PyTorch model by more
    than `tolerance` (max abs logit difference).
    """
    if opset < 17:
        raise ExportError("opset must be >= 17")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = _source(Path(hf_dir), max_length)
    fp32_path = out / FILES["fp32"]
    log.info("exporting task=%s source=%s opset=%d", task, hf_dir, opset)
    _to_onnx(
        _LogitsOnly(load_model(src.hf_dir, task), src.input_names), src, fp32_path, {"logits": task}, opset
    )

    # Checked against a freshly loaded copy: the exported instance may return different logits.
    fresh = load_model(src.hf_dir, task)
    feeds = _feeds(src.tok, list(CHECK_TEXTS), src.input_names, src.max_length)
    files, checks = _variants(
        fp32_path,
        int8,
        fp16,
        lambda session: compare(fresh, session, feeds, task),
        tolerance,
        int8_fp32_nodes,
        int8_block,
    )
    _save_tokenizer(src, out)
    meta = _metadata(src, task, name=name, version=version, fp32_path=fp32_path, opset=opset)
    meta.update(files=files, check=checks)
    _write_json(out / "metadata.json", meta)
    return meta


# ---------------------------------------------------------------- one encoder, both heads

HEAD_OUTPUTS = {"sentiment": "sentiment_logits", "ner": "ner_logits"}


class _BothHeads(torch.nn.Module):
    """The sequence model's forward, plus the token classifier on its last hidden states."""

    def __init__(self, sequence: PreTrainedModel, token: PreTrainedModel, input_names: list[str]) -> None:
        super().__init__()
        self.sequence = sequence
        self.token_head: torch.nn.Module = token.classifier  # type: ignore[assignment]
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.sequence(**dict(zip(self.input_names, inputs, strict=True)), output_hidden_states=True)
        return out.logits, self.token_head(out.hidden_states[-1])


def shared_encoder_mismatch(sequence: PreTrainedModel, token: PreTrainedModel) -> str | None:
    """Why two checkpoints do not share one encoder (a differing tensor), or None when they do."""
    mine = sequence.base_model.state_dict()
    theirs = token.base_model.state_dict()
    for key, tensor in theirs.items():
        if key not in mine:
            return f"{key} is missing from the sentiment checkpoint"
        if mine[key].shape != tensor.shape or not torch.equal(mine[key], tensor):
            return f"{key} differs"
    return None


def export_joint(
    sentiment_dir: Path,
    ner_dir: Path,
    out: Path,
    *,
    int8: bool = False,
    fp16: bool = False,
    opset: int = 17,
    max_length: int = 128,
    tolerance: float = 1e-3,
    version: str | None = None,
    name: str | None = None,
    int8_fp32_nodes: Sequence[str] = (),
    int8_block: int = 0,
) -> dict[str, dict[str, Any]]:
    """One graph, two outputs, for a sentiment and an NER checkpoint that share their encoder.

    Writes `out/model.onnx` (+ variants) and `out/tokenizer.json`, and `out/sentiment/` and
    `out/ner/` each with a metadata.json naming that shared graph (`../model.onnx`) and its output.
    Each task directory loads like any exported model; the runtime runs the graph once per batch
    when it is given both. Each head is checked against its own freshly loaded checkpoint.
    """
    if opset < 17:
        raise ExportError("opset must be >= 17")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    srcs = {"sentiment": _source(Path(sentiment_dir), max_length), "ner": _source(Path(ner_dir), max_length)}
    if srcs["sentiment"].tok.backend_tokenizer.to_str() != srcs["ner"].tok.backend_tokenizer.to_str():
        raise ExportError("the two checkpoints tokenise differently; a shared graph needs one tokenizer")
    models = {task: load_model(src.hf_dir, task) for task, src in srcs.items()}
    mismatch = shared_encoder_mismatch(models["sentiment"], models["ner"])
    if mismatch:
        raise ExportError(f"the checkpoints do not share their encoder: {mismatch}")
    src = srcs["sentiment"]
    fp32_path = out / FILES["fp32"]
    log.info("exporting both heads: sentiment=%s ner=%s opset=%d", sentiment_dir, ner_dir, opset)
    outputs = {HEAD_OUTPUTS[t]: t for t in srcs}
    _to_onnx(_BothHeads(models["sentiment"], models["ner"], src.input_names), src, fp32_path, outputs, opset)
    fresh = {task: load_model(s.hf_dir, task) for task, s in srcs.items()}
    feeds = _feeds(src.tok, list(CHECK_TEXTS), src.input_names, src.max_length)

    def check(session: ort.InferenceSession) -> dict[str, Any]:
        return {t: compare(fresh[t], session, feeds, t, HEAD_OUTPUTS[t]) for t in srcs}

    files, checks = _variants(fp32_path, int8, fp16, check, tolerance, int8_fp32_nodes, int8_block)
    _save_tokenizer(src, out)
    metas = {}
    for task, task_src in srcs.items():
        meta = _metadata(
            task_src, task, name=name and f"{name}-{task}", version=version, fp32_path=fp32_path, opset=opset
        )
        meta.update(
            files={v: f"../{f}" for v, f in files.items()},
            tokenizer="../tokenizer.json",
            output=HEAD_OUTPUTS[task],
            shared_encoder=True,
            check={k: (v[task] if isinstance(v, dict) and task in v else v) for k, v in checks.items()},
        )
        _write_json(out / task / "metadata.json", meta)
        metas[task] = meta
    return metas
