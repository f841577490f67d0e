"""The ``vqa`` command: data, train, eval, predict, ablate, serve, demo.

Each sub-command parses its arguments and calls a library function that the tests call too.
Errors print one line on stderr and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import NoReturn

from vqa import __version__
from vqa.ablation import add_ablate_parser

ESTIMATOR_CHOICES = ("ste", "gumbel", "reinforce", "none")
MODE_CHOICES = ("soft", "hard", "hybrid")


def add_data_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="write datasets in the local format")
    kinds = data.add_subparsers(dest="kind", required=True)
    synthetic = kinds.add_parser("synthetic", help="generate the embedded scene dataset")
    synthetic.add_argument("--out", required=True, help="output directory")
    synthetic.add_argument("--train", type=int, default=2000, help="training images")
    synthetic.add_argument("--val", type=int, default=500, help="validation images")
    synthetic.add_argument("--test", type=int, default=500, help="test images")
    synthetic.add_argument("--image-size", type=int, default=64)
    synthetic.add_argument("--questions-per-image", type=int, default=3)
    synthetic.add_argument("--noise", type=float, default=0.02, help="pixel noise std (0..1)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    synthetic.set_defaults(run=run_data_synthetic)
    vqa = kinds.add_parser(
        "vqav2", help="convert the official VQA v1/v2 files (questions, annotations, COCO images)"
    )
    vqa.add_argument("--questions", required=True, help="questions JSON file")
    vqa.add_argument("--annotations", help="annotations JSON file (none for test-dev)")
    vqa.add_argument("--images", required=True, help="COCO image directory, e.g. val2014/")
    vqa.add_argument("--out", required=True, help="dataset directory (other splits are kept)")
    vqa.add_argument("--split", help="split name (default: from the questions' data_subtype)")
    vqa.add_argument("--overwrite", action="store_true", help="replace this split in --out")
    vqa.set_defaults(run=run_data_vqav2)


DATA_HELP = (
    "'synthetic' (the embedded scenes), a local-format directory, the official VQA files "
    "(a directory or a JSON spec), a save_to_disk or parquet directory, or a hub id"
)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every command that reads a dataset: column names and bad images."""
    parser.add_argument("--image-column", default="image", help="Hugging Face datasets only")
    parser.add_argument("--question-column", default="question", help="Hugging Face datasets only")
    parser.add_argument(
        "--answer-column",
        help="Hugging Face datasets only (default: answers, answer or multiple_choice_answer)",
    )
    parser.add_argument(
        "--on-bad-image",
        choices=("fail", "skip"),
        default="fail",
        help="an image that does not decode stops the command, or its rows are skipped",
    )


def dataset_options(args: argparse.Namespace) -> dict:
    """The options of :func:`add_dataset_arguments` as keyword arguments."""
    return {
        "image_column": args.image_column,
        "question_column": args.question_column,
        "answer_column": args.answer_column,
        "on_bad_image": args.on_bad_image,
    }


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model with Accelerate")
    train.add_argument("--data", default="synthetic", help=DATA_HELP)
    add_dataset_arguments(train)
    train.add_argument("--max-answers", type=int, default=3129, help="answer vocabulary size")
    train.add_argument("--output", required=True, help="run directory")
    train.add_argument("--preset", default="default", help="tiny | default | full")
    train.add_argument("--mode", choices=MODE_CHOICES)
    train.add_argument("--k", type=int, help="regions kept in hard and hybrid modes")
    train.add_argument("--estimator", choices=ESTIMATOR_CHOICES)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int, help="per process")
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    train.add_argument("--grad-accum", type=int, default=1)
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument(
        "--save-every-steps", type=int, help="also checkpoint every N optimizer steps"
    )
    train.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept")
    train.add_argument(
        "--max-bad-steps",
        type=int,
        default=5,
        help="stop after N steps in a row with a non-finite loss or gradient",
    )
    train.add_argument(
        "--vision-stem", choices=("patch", "conv"), help="override the preset's ViT stem"
    )
    train.add_argument(
        "--region-loss-weight",
        type=float,
        help="weight of the auxiliary loss that teaches each region the attributes of the "
        "object under it, where the data's objects have attributes (0: off; default: preset's)",
    )
    train.add_argument(
        "--pointing-loss-weight",
        type=float,
        help="weight of the auxiliary loss that teaches the fusion to look at the objects a "
        "question is about, where rows have targets (0: off; default: preset's)",
    )
    add_finetune_arguments(train)
    train.add_argument("--log-with", help="an Accelerate tracker, e.g. tensorboard")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=run_train)


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """Pretrained encoders, freezing and the encoders' learning rate (``vqa train``)."""
    group = parser.add_argument_group("pretrained encoders")
    group.add_argument(
        "--vision-pretrained",
        metavar="PATH",
        help="timm .safetensors/.npz file (with --vision-model) or directory, or a transformers "
        "ViT/CLIP/DINOv2/SigLIP directory",
    )
    group.add_argument(
        "--vision-model", help="timm architecture of a weights file, e.g. vit_small_patch16_224"
    )
    group.add_argument(
        "--text-pretrained",
        metavar="DIR",
        help="transformers text model directory with its tokenizer, or 'minilm' (extra [minilm])",
    )
    group.add_argument("--image-size", type=int, help="input size (default: the pretrained one)")
    group.add_argument("--freeze-vision", action="store_true", help="keep the vision encoder fixed")
    group.add_argument("--freeze-text", action="store_true", help="keep the text encoder fixed")
    group.add_argument(
        "--train-last-blocks", type=int, metavar="N", help="train only each encoder's last N blocks"
    )
    group.add_argument("--encoder-lr", type=float, metavar="LR", help="encoders' learning rate")


def finetune_options(args: argparse.Namespace) -> dict:
    """The options of :func:`add_finetune_arguments` as keyword arguments."""
    names = (
        "vision_pretrained",
        "vision_model",
        "text_pretrained",
        "image_size",
        "freeze_vision",
        "freeze_text",
        "train_last_blocks",
        "encoder_lr",
    )
    return {name: getattr(args, name) for name in names}


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="score a model on a dataset split")
    evaluate.add_argument("--model", required=True, help="run or model directory")
    evaluate.add_argument("--data", required=True, help=DATA_HELP)
    evaluate.add_argument("--split", default="val")
    add_dataset_arguments(evaluate)
    evaluate.add_argument(
        "--streaming", action="store_true", help="stream a Hugging Face dataset (one pass)"
    )
    evaluate.add_argument(
        "--results", help="also write the predictions here: [{question_id, answer}] (official)"
    )
    evaluate.add_argument("--mode", choices=MODE_CHOICES, help="override the fusion mode")
    evaluate.add_argument("--k", type=int, help="override k")
    evaluate.add_argument("--batch-size", type=int, default=128)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(run=run_eval)


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="answer a question about an image")
    predict.add_argument("--model", required=True, help="run or model directory")
    predict.add_argument("--image", required=True, help="image file")
    predict.add_argument("--question", required=True)
    predict.add_argument("--mode", choices=MODE_CHOICES, help="override the fusion mode")
    predict.add_argument("--k", type=int, help="override k")
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.set_defaults(run=run_predict)


def add_serve_parser(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="ask questions in a web app (Gradio)")
    serve.add_argument("--model", required=True, help="run or model directory")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument(
        "--examples", help="dataset directory for the examples (default: the training data)"
    )
    serve.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default)"
    )
    serve.set_defaults(run=run_serve)


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="train the default model if none is cached, then show it"
    )
    demo.add_argument("--retrain", action="store_true", help="train again even if cached")
    demo.add_argument("--port", type=int, default=7860, help="port of the app (on 127.0.0.1)")
    demo.set_defaults(run=run_demo)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="vqa", description="Visual question answering with hard, soft and hybrid attention."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_data_parser,
        add_train_parser,
        add_eval_parser,
        add_predict_parser,
        add_ablate_parser,
        add_serve_parser,
        add_demo_parser,
    ):
        add(commands)
    return parser


def run_data_synthetic(args: argparse.Namespace) -> None:
    from vqa.data.synthetic import SyntheticConfig, write_synthetic_dataset

    config = SyntheticConfig(
        image_size=args.image_size, noise=args.noise, questions_per_image=args.questions_per_image
    )
    info = write_synthetic_dataset(
        args.out,
        train=args.train,
        val=args.val,
        test=args.test,
        config=config,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(json.dumps(info, indent=2))


def run_data_vqav2(args: argparse.Namespace) -> None:
    from pathlib import Path

    from vqa.data.vqav2 import VQAFiles, convert_vqa

    annotations = Path(args.annotations) if args.annotations else None
    files = VQAFiles(Path(args.questions), annotations, Path(args.images))
    info = convert_vqa(files, args.out, split=args.split, overwrite=args.overwrite)
    print(json.dumps(info, indent=2))


def run_train(args: argparse.Namespace) -> None:
    from vqa.training import TrainingArguments, train

    summary = train(
        TrainingArguments(
            output=args.output,
            data=args.data,
            **dataset_options(args),
            max_answers=args.max_answers,
            preset=args.preset,
            mode=args.mode,
            k=args.k,
            estimator=args.estimator,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            mixed_precision=args.mixed_precision,
            grad_accum=args.grad_accum,
            resume=args.resume,
            save_every_steps=args.save_every_steps,
            keep_checkpoints=args.keep_checkpoints,
            max_bad_steps=args.max_bad_steps,
            vision_stem=args.vision_stem,
            region_loss_weight=args.region_loss_weight,
            pointing_loss_weight=args.pointing_loss_weight,
            **finetune_options(args),
            log_with=args.log_with,
            progress=not args.no_progress,
        )
    )
    if any("val_accuracy" in record for record in summary["history"]):
        kept = f"best val accuracy {summary['best_accuracy']:.4f}"
    else:
        kept = "no val split: lowest training loss"
    print(f"{kept} at epoch {summary.get('best_epoch')}; model saved in {args.output}")


def run_eval(args: argparse.Namespace) -> None:
    from vqa.data.hub import ColumnMapping
    from vqa.data.sources import load_vqa_dataset
    from vqa.evaluation import evaluate, write_results
    from vqa.inference import load_model

    model, processor = load_model(args.model)
    model.set_fusion(mode=args.mode, k=args.k)
    rows = load_vqa_dataset(
        args.data,
        [args.split],
        columns=ColumnMapping(args.image_column, args.question_column, args.answer_column),
        streaming=args.streaming,
        on_bad_image=args.on_bad_image,
    )[args.split]
    scores = evaluate(
        model,
        processor,
        rows,
        batch_size=args.batch_size,
        progress=not args.json,
        predictions=args.results is not None,
    )
    if args.results:
        write_results(scores.pop("predictions"), args.results)
    scores.update({"mode": model.fusion.mode, "k": model.fusion.k, "split": args.split})
    if args.json:
        print(json.dumps(scores))
        return
    print(f"{args.split}: {scores['questions']} questions, mode {scores['mode']}, k {scores['k']}")
    print(f"  accuracy           {scores['accuracy']:.4f}  ({scores['scored_questions']} scored)")
    for title, key in (("answer", "accuracy_by_answer_type"), ("question", "accuracy_by_type")):
        print(f"  by {title} type")
        for name, value in scores[key].items():
            print(f"    {name:<16} {value:.4f}")
    print(f"  pointing accuracy  {scores['pointing_accuracy']:.4f}")
    print(f"  regions used       {scores['regions_used']:.1f}")
    print(f"  ms per question    {scores['ms_per_question']:.2f}")


def run_predict(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from PIL import Image

    from vqa.inference import describe_sight, load_model, predict

    model, processor = load_model(args.model)
    with Image.open(args.image) as image:
        result = predict(model, processor, image, args.question, mode=args.mode, k=args.k)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    if result.truncated:
        print("note: the question was longer than the tokenizer's limit and was truncated")
    for answer, probability in result.answers:
        print(f"{probability:7.2%}  {answer}")
    print(f"regions ({result.mode}, k={result.k}):")
    for region in result.regions:
        sees = f"  sees {describe_sight(region['sees'])}" if "sees" in region else ""
        print(f"  #{region['rank']:<3} box {region['box']}  weight {region['weight']:.3f}{sees}")


def run_serve(args: argparse.Namespace) -> None:
    from vqa.app import serve

    serve(args.model, host=args.host, port=args.port, examples_dir=args.examples, share=args.share)


def run_demo(args: argparse.Namespace) -> None:
    from vqa.demo import run_demo as demo

    demo(retrain=args.retrain, port=args.port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line, not a traceback
        if args.debug:
            raise
        print(f"vqa {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
