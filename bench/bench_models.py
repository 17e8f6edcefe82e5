"""Model throughput: transformers `pipeline` on PyTorch (the seed article's way) vs our ONNX runtime.

Same texts, same run: held-out test tweets of the sentiment split. Writes bench/results/models.json
and bench/results/models.md. Needs the `train` extra (torch, transformers) for the baseline and the
fine-tuned checkpoints the shipped models name as their source (`make models-train`) plus their fp32
export (`make models-ship`: build/onnx/joint/<task> for the shared-encoder models, else
build/onnx/<task>); the int8 models are the shipped ones in models/<task>. When the two shipped heads
share one graph, "both" runs it once per batch (as the inference worker does).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """Best wall time of `repeats` runs (the least disturbed by other work on the machine)."""
    best = float("inf")
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def cpu_peak() -> dict[str, Any]:
    """Theoretical per-machine peaks from the CPU flags: fp32 FMA and int8 dot-product ops/s."""
    flags: set[str] = set()
    mhz = 0.0
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            elif line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
            elif line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2  # two FMA ports on server cores since Haswell/Skylake-SP
    fp32_per_cycle = lanes * 2 * fma_units
    int8_per_cycle = (
        fp32_per_cycle * 4 if ("avx512_vnni" in flags or "avx_vnni" in flags) else fp32_per_cycle * 2
    )
    ghz = mhz / 1000 if mhz else float("nan")
    return {
        "cpu": name,
        "cores": cores,
        "ghz_nominal": ghz,
        "simd": "avx512" if lanes == 16 else "avx2" if lanes == 8 else "sse",
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_int8" in flags or "amx_int" in flags,
        "peak_fp32_gflops": cores * ghz * fp32_per_cycle,
        "peak_int8_gops_vnni": cores * ghz * int8_per_cycle,
    }


def encoder_flops(
    token_lengths: Sequence[int], layers: int = 6, hidden: int = 384, ffn: int = 1536, labels: int = 3
) -> float:
    """Multiply-add ops (x2) of a BERT encoder forward over real tokens (padding excluded)."""
    total = 0.0
    for t in token_lengths:
        per_layer = 2 * t * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * t * t * hidden
        total += layers * per_layer + 2 * t * hidden * labels
    return total


def _entity_key(ents: Sequence[Any]) -> set[tuple[str, int, int]]:
    return {(e["type"], e["start"], e["end"]) for e in ents}


def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import pipeline

    from workers.inference.onnx_models import (
        OnnxEntityModel,
        OnnxSentimentModel,
        SeparateHeadsModel,
        SharedEncoderModel,
        post_model,
    )
    from workers.training import data as corpora

    torch.set_num_threads(args.threads)
    texts = [ex.text for ex in corpora.sentiment_splits(with_reviews=False)["test"]][: args.n]
    shipped = {t: ROOT / "models" / t for t in ("sentiment", "ner")}
    # The checkpoint each shipped model was exported from, and its fp32 export next to it in build/.
    hf = {t: _source_checkpoint(shipped[t]) for t in shipped}
    fp32 = {t: _fp32_dir(shipped[t], hf[t]) for t in shipped}
    results_paths = {t: {"checkpoint": str(hf[t]), "fp32": str(fp32[t]), "int8": str(shipped[t])} for t in hf}
    # Graphs to time: (row key, ONNX variant, model dirs). A baseline is another models/ tree (e.g. the
    # previous release from `git archive`), timed in the same process as the shipped one.
    graphs: list[tuple[str, str, dict[str, Path]]] = [("fp32", "fp32", fp32), ("int8", "int8", shipped)]
    if args.baseline_models:
        base_dir = Path(args.baseline_models)
        baseline = {t: base_dir / t for t in ("sentiment", "ner")}
        missing = [str(d / "metadata.json") for d in baseline.values() if not (d / "metadata.json").is_file()]
        if missing:
            raise SystemExit(f"bench_models: --baseline-models: no model in {', '.join(missing)}")
        graphs.append(("int8 baseline", "int8", baseline))
        for t in results_paths:
            results_paths[t]["int8 baseline"] = str(baseline[t])

    results: dict[str, Any] = {
        "n_texts": len(texts),
        "threads": args.threads,
        "batch": args.batch,
        "repeats": args.repeats,
        "models": results_paths,
        "rows": [],
    }
    sent_pipe = pipeline("text-classification", model=str(hf["sentiment"]), device=-1)
    ner_pipe = pipeline("token-classification", model=str(hf["ner"]), device=-1, aggregation_strategy="first")

    def pipe_sentiment(bs: int) -> list[str]:
        return [r["label"] for r in sent_pipe(texts, batch_size=bs, truncation=True, max_length=128)]

    def pipe_ner(bs: int) -> list[set[tuple[str, int, int]]]:
        out = ner_pipe(texts, batch_size=bs)
        return [{(e["entity_group"], int(e["start"]), int(e["end"])) for e in ents} for ents in out]

    models: dict[str, tuple[OnnxSentimentModel, OnnxEntityModel]] = {}
    joint: dict[str, SharedEncoderModel | SeparateHeadsModel] = {}
    for key, variant, dirs in graphs:
        sentiment = OnnxSentimentModel(dirs["sentiment"], variant=variant, intra_op_threads=args.threads)
        entities = OnnxEntityModel(
            dirs["ner"], variant=variant, intra_op_threads=args.threads, share_with=sentiment
        )
        models[key] = (sentiment, entities)
        joint[key] = post_model(sentiment, entities)
    results["shared_encoder"] = isinstance(joint["int8"], SharedEncoderModel)

    def ours_sentiment(variant: str) -> list[str]:
        return [s.label for s in models[variant][0].predict(texts, batch_size=args.batch)]

    def ours_ner(variant: str) -> list[set[tuple[str, int, int]]]:
        return [
            {(e.type, e.start, e.end) for e in ents}
            for ents in models[variant][1].predict(texts, batch_size=args.batch)
        ]

    # Warm everything on a slice so no row pays first-call costs.
    full = texts
    texts = full[:32]
    pipe_sentiment(32)
    pipe_ner(32)
    for v in models:
        ours_sentiment(v)
        ours_ner(v)
    texts = full

    def pipe_both(bs: int) -> tuple[list[str], list[set[tuple[str, int, int]]]]:
        return pipe_sentiment(bs), pipe_ner(bs)

    def ours_both(variant: str) -> tuple[list[str], list[set[tuple[str, int, int]]]]:
        sentiments, entities = joint[variant].predict(texts, batch_size=args.batch)
        return [s.label for s in sentiments], [{(e.type, e.start, e.end) for e in ents} for ents in entities]

    configs: list[tuple[str, str, Callable[[], Any]]] = []
    for bs in (1, 32):
        name = f"pipeline pytorch batch {bs}"
        configs.append(("sentiment", name, functools.partial(pipe_sentiment, bs)))
        configs.append(("ner", name, functools.partial(pipe_ner, bs)))
        configs.append(("both", name, functools.partial(pipe_both, bs)))
    for v in models:
        name = f"onnx {v} batch {args.batch}"
        configs.append(("sentiment", name, functools.partial(ours_sentiment, v)))
        configs.append(("ner", name, functools.partial(ours_ner, v)))
        configs.append(("both", name, functools.partial(ours_both, v)))

    outputs: dict[tuple[str, str], Any] = {}
    for task, name, fn in configs:
        out, seconds = _timed(fn, args.repeats)
        outputs[(task, name)] = out
        results["rows"].append(
            {"task": task, "runtime": name, "seconds": seconds, "texts_per_s": len(texts) / seconds}
        )
        print(f"{task:9s} {name:28s} {len(texts) / seconds:9.1f} texts/s", flush=True)

    ref_name = "pipeline pytorch batch 1"
    ref_sent = outputs[("sentiment", ref_name)]
    ref_ner = outputs[("ner", ref_name)]
    for row in results["rows"]:
        out = outputs[(row["task"], row["runtime"])]
        sent = out if row["task"] == "sentiment" else out[0] if row["task"] == "both" else None
        ner = out if row["task"] == "ner" else out[1] if row["task"] == "both" else None
        if sent is not None:
            row["sentiment_label_agreement"] = float(
                np.mean([a == b for a, b in zip(sent, ref_sent, strict=True)])
            )
        if ner is not None:
            tp = sum(len(a & b) for a, b in zip(ner, ref_ner, strict=True))
            n_ours = sum(map(len, ner))
            n_ref = sum(map(len, ref_ner))
            row["ner_entity_agreement_f1"] = 2 * tp / (n_ours + n_ref) if n_ours + n_ref else 1.0
            row["ner_post_exact_agreement"] = float(
                np.mean([a == b for a, b in zip(ner, ref_ner, strict=True)])
            )
    base = {r["task"]: r["texts_per_s"] for r in results["rows"] if r["runtime"] == ref_name}
    base32 = {
        r["task"]: r["texts_per_s"] for r in results["rows"] if r["runtime"] == "pipeline pytorch batch 32"
    }
    for row in results["rows"]:
        row["speedup_vs_pipeline_b1"] = row["texts_per_s"] / base[row["task"]]
        row["speedup_vs_pipeline_b32"] = row["texts_per_s"] / base32[row["task"]]

    # Work done per text: real (unpadded) tokens through the 6-layer encoder, per model.
    tok = models["int8"][0].tokenizer
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    ner_lengths = [len(e.ids) for e in models["int8"][1].tokenizer.encode_batch(texts)]
    n_ner = len(models["int8"][1].labels)
    flops = {"sentiment": encoder_flops(lengths), "ner": encoder_flops(ner_lengths, labels=n_ner)}
    flops["both"] = flops["sentiment"] + flops["ner"]
    # The shared graph runs the encoder once for both heads (the pipeline baseline runs it twice).
    one_pass = encoder_flops(ner_lengths, labels=n_ner + len(models["int8"][0].labels))
    peak = cpu_peak()
    results["cpu"] = peak
    add_peak_shares(results)
    results["mean_tokens"] = {"sentiment": float(np.mean(lengths)), "ner": float(np.mean(ner_lengths))}
    for row in results["rows"]:
        shared = row["task"] == "both" and row["runtime"].startswith("onnx") and results["shared_encoder"]
        row["achieved_gops"] = (one_pass if shared else flops[row["task"]]) / row["seconds"] / 1e9
    add_peak_shares(results)
    results["versions"] = _versions()
    return results


def add_peak_shares(results: dict[str, Any]) -> None:
    """Share of the peak of the cores actually used (threads), fp32 or int8 (VNNI) by row."""
    cpu = results["cpu"]
    used = min(results["threads"], cpu["cores"]) / cpu["cores"]
    results["peak_used"] = {
        "cores": min(results["threads"], cpu["cores"]),
        "fp32_gflops": cpu["peak_fp32_gflops"] * used,
        "int8_gops_vnni": cpu["peak_int8_gops_vnni"] * used,
    }
    for row in results["rows"]:
        if "achieved_gops" not in row:
            continue
        row["pct_of_fp32_peak"] = 100 * row["achieved_gops"] / results["peak_used"]["fp32_gflops"]
        if "int8" in row["runtime"]:
            row["pct_of_int8_vnni_peak"] = 100 * row["achieved_gops"] / results["peak_used"]["int8_gops_vnni"]


def _source_checkpoint(model_dir: Path) -> Path:
    meta = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
    path = Path(meta["source"]["hf_dir"])
    return path if path.is_absolute() else ROOT / path


def _fp32_dir(shipped: Path, checkpoint: Path) -> Path:
    """Where `make models-ship` left the fp32 export of a shipped model (it is not shipped)."""
    meta = json.loads((shipped / "metadata.json").read_text(encoding="utf-8"))
    if meta.get("shared_encoder"):
        return ROOT / "build" / "onnx" / "joint" / meta["task"]
    return ROOT / "build" / "onnx" / checkpoint.name.removesuffix("-hf")


def _versions() -> dict[str, str]:
    import onnxruntime
    import tokenizers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": onnxruntime.__version__,
        "tokenizers": tokenizers.__version__,
        "python": platform.python_version(),
    }


def markdown(results: dict[str, Any]) -> str:
    cpu = results["cpu"]
    lines = [
        f"Texts: {results['n_texts']} held-out test tweets (mean {results['mean_tokens']['sentiment']:.1f} "
        f"tokens), {results['threads']} threads, best of repeats. Agreement is against the batch-1 pipeline "
        "(sentiment: same label; NER: F1 of (type, start, end) entity sets). CPU: "
        f"{cpu['cpu']}, {cpu['cores']} cores at {cpu['ghz_nominal']:.1f} GHz nominal, {cpu['simd']}"
        f"{', VNNI' if cpu['vnni'] else ''}{', AMX' if cpu['amx'] else ''}; peak fp32 "
        f"{cpu['peak_fp32_gflops']:.0f} GFLOP/s, int8 (VNNI) {cpu['peak_int8_gops_vnni']:.0f} GOP/s for "
        f"the machine; % of peak is against the {results['peak_used']['cores']} core(s) used."
        + (
            " The shipped heads share one encoder: our `both` rows run it once per batch, the pipeline"
            " rows run the two checkpoints."
            if results.get("shared_encoder")
            else ""
        )
        + (
            " The `int8 baseline` rows run another model"
            f" ({results['models']['sentiment']['int8 baseline']}):"
            " their agreement columns compare it with the shipped model's pipeline, so they say how much the"
            " two models differ, not what int8 costs."
            if "int8 baseline" in results["models"]["sentiment"]
            else ""
        ),
        "",
        "| task | runtime | texts/s | × pipeline b1 | × pipeline b32 | sentiment agreement "
        "| NER agreement (F1) "
        "| achieved GOP/s | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        pct = r.get("pct_of_int8_vnni_peak", r["pct_of_fp32_peak"])
        peak_kind = "int8" if "pct_of_int8_vnni_peak" in r else "fp32"
        sa = f"{100 * r['sentiment_label_agreement']:.1f} %" if "sentiment_label_agreement" in r else ""
        na = f"{100 * r['ner_entity_agreement_f1']:.1f} %" if "ner_entity_agreement_f1" in r else ""
        lines.append(
            f"| {r['task']} | {r['runtime']} | {r['texts_per_s']:.1f} | {r['speedup_vs_pipeline_b1']:.1f} | "
            f"{r['speedup_vs_pipeline_b32']:.1f} | {sa} | {na} | {r['achieved_gops']:.1f} | "
            f"{pct:.1f} ({peak_kind}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512, help="texts to run (from the sentiment test split)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch", type=int, default=32, help="our runtime's length-sorted batch size")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "models.json"))
    parser.add_argument(
        "--baseline-models",
        help="another models/ tree (sentiment/, ner/; e.g. a previous release) timed beside the shipped one",
    )
    args = parser.parse_args()
    results = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    md = markdown(results)
    out.with_suffix(".md").write_text("# Model benchmark\n\n" + md)
    print(md)


if __name__ == "__main__":
    main()
