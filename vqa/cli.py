"""The ``vqa`` command: data, train, eval, predict, ablate, serve, demo, export.

Each sub-command parses its arguments and calls a library function that the tests call too.
Errors print one line on stderr and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from hybrid_attention import MODES, describe_k
from vqa import __version__
from vqa.arguments import (
    DATA_HELP,
    DATASET_FIELDS,
    TrainingArguments,
    add_arguments,
    count_or_ratio,
    from_namespace,
    fusion_k_settings,
    k_or_rule,
)
from vqa.cache import model_directory
from vqa.class_attention import ENCODER_RULES

if TYPE_CHECKING:
    from vqa.modeling import HybridVQAModel


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


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of every command that reads a dataset: column names and bad images."""
    add_arguments(parser, TrainingArguments, DATASET_FIELDS)


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train a model with Accelerate")
    add_arguments(train, TrainingArguments)
    train.set_defaults(run=run_train)


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
    evaluate.add_argument("--mode", choices=MODES, help="override the fusion mode")
    add_fusion_k_arguments(evaluate)
    add_encoder_selection_arguments(evaluate)
    evaluate.add_argument("--batch-size", type=int, default=128)
    add_arguments(evaluate, TrainingArguments, ["num_workers"])
    evaluate.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda if there is a GPU, else cpu)"
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--update-card",
        action="store_true",
        help="add the scores to the run's model card (README.md); again on a split replaces them",
    )
    evaluate.set_defaults(run=run_eval)


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict", help="answer a question about an image, or a file of questions"
    )
    predict.add_argument("--model", required=True, help="run or model directory")
    predict.add_argument("--image", help="image file (with --question)")
    predict.add_argument("--question", help="the question about --image")
    predict.add_argument(
        "--data", help="JSONL file of questions in the local format (with --out, not --image)"
    )
    predict.add_argument("--out", help="write one JSON line per question of --data here")
    predict.add_argument(
        "--batch-size", type=int, default=32, help="questions per model call with --data"
    )
    predict.add_argument(
        "--num-workers",
        type=int,
        help="processes that decode the images of --data ahead of the model "
        "(default: half the cores, at most 8; none on 2 cores or fewer)",
    )
    predict.add_argument("--mode", choices=MODES, help="override the fusion mode")
    add_fusion_k_arguments(predict)
    add_encoder_selection_arguments(predict)
    predict.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda if there is a GPU, else cpu)"
    )
    predict.add_argument("--json", action="store_true", help="print one JSON object")
    predict.set_defaults(run=run_predict)


def add_fusion_k_arguments(parser: argparse.ArgumentParser) -> None:
    """``--k``, ``--k-min``, ``--k-max`` and ``--top-p``: how many regions the fusion keeps,
    switched on the same weights."""
    parser.add_argument(
        "--k",
        type=k_or_rule,
        help="override k: a number, 'auto' (per question, the fewest regions whose attention "
        "mass reaches --top-p) or 'budget' (the learned k of a model trained with one)",
    )
    group = parser.add_argument_group("adaptive k (default: the model's)")
    group.add_argument("--k-min", type=int, help="fewest regions an adaptive k keeps")
    group.add_argument("--k-max", type=int, help="most regions an adaptive k keeps")
    group.add_argument(
        "--top-p", type=float, metavar="P", help="attention mass that --k auto keeps, in (0, 1]"
    )


def add_encoder_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--select-after``, ``--encoder-k`` and ``--encoder-rule``: move, resize or re-rank a
    model's encoder selection."""
    parser.add_argument(
        "--select-after",
        type=int,
        metavar="BLOCKS",
        help="select the patch tokens after this many ViT blocks (models trained with it)",
    )
    parser.add_argument(
        "--encoder-k", type=count_or_ratio, help="patch tokens the encoder keeps: count or ratio"
    )
    parser.add_argument(
        "--encoder-rule",
        choices=ENCODER_RULES,
        help="what ranks the patch tokens: the question, or the CLS token's attention (EViT)",
    )


def set_encoder_selection(model: HybridVQAModel, args: argparse.Namespace) -> None:
    """Apply ``--select-after`` / ``--encoder-k`` / ``--encoder-rule`` to ``model`` where
    given."""
    given = (args.select_after, args.encoder_k, args.encoder_rule)
    if any(value is not None for value in given):
        model.set_encoder_selection(
            select_after=args.select_after, encoder_k=args.encoder_k, rule=args.encoder_rule
        )


def word_list(text: str) -> list[str]:
    """``"soft, hard"`` -> ``["soft", "hard"]`` (argparse type)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def integer_list(text: str) -> list[int]:
    """``"4,8"`` -> ``[4, 8]`` (argparse type)."""
    try:
        return [int(part) for part in word_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def number_list(text: str) -> list[float]:
    """``"0.8,0.9"`` -> ``[0.8, 0.9]`` (argparse type)."""
    try:
        return [float(part) for part in word_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_ablate_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``vqa ablate`` on the ``vqa`` command's sub-parsers."""

    def count_or_ratio_list(text: str) -> list[int | float]:
        """``"16,0.25"`` -> ``[16, 0.25]`` (argparse type)."""
        return [count_or_ratio(part) for part in word_list(text)]

    ablate = commands.add_parser(
        "ablate", help="train soft, hard and hybrid attention on one grid and compare them"
    )
    ablate.add_argument(
        "--data", default="synthetic", help="dataset directory, or 'synthetic' (embedded scenes)"
    )
    ablate.add_argument(
        "--modes", type=word_list, help="comma-separated, e.g. soft,hard,hybrid (default: preset)"
    )
    ablate.add_argument(
        "--k", type=integer_list, help="regions kept by hard and hybrid, e.g. 4,8,16"
    )
    ablate.add_argument(
        "--estimators", type=word_list, help="for hard and hybrid, e.g. ste,gumbel,reinforce"
    )
    ablate.add_argument("--seeds", type=integer_list, help="e.g. 0,1,2")
    ablate.add_argument(
        "--select-after",
        type=integer_list,
        metavar="BLOCKS",
        help="also select patch tokens inside the ViT of hard and hybrid runs, after each of "
        "these numbers of blocks, e.g. 1,2 (default: no selection in the encoder)",
    )
    ablate.add_argument(
        "--encoder-k",
        type=count_or_ratio_list,
        help="with --select-after: patch tokens the encoder keeps, counts or ratios, e.g. "
        "16,0.25 (default: the preset's)",
    )
    ablate.add_argument(
        "--encoder-rule",
        type=word_list,
        help="with --select-after: what ranks the patch tokens, e.g. question,cls (cls: EViT's "
        "CLS attention, at the same keep rate; every run then gets a CLS token; default: "
        "question)",
    )
    ablate.add_argument(
        "--encoder-fold",
        action="store_true",
        help="with --select-after: fold the dropped patch tokens into one (EViT)",
    )
    ablate.add_argument(
        "--k-rule",
        type=word_list,
        help="how many regions hard and hybrid keep, e.g. fixed,top_p,budget: each --k, "
        "per question the fewest whose attention mass reaches each --top-p, or a learned k "
        "per --k-penalty (default: fixed)",
    )
    ablate.add_argument(
        "--top-p", type=number_list, metavar="P", help="with --k-rule top_p: e.g. 0.8,0.9"
    )
    ablate.add_argument(
        "--k-penalty",
        type=number_list,
        metavar="LAMBDA",
        help="with --k-rule budget: compute penalties of the expected k, e.g. 0,0.01",
    )
    ablate.add_argument(
        "--k-max", type=int, help="with an adaptive --k-rule: most regions kept (default 16)"
    )
    ablate.add_argument("--epochs", type=int, help="per run (default: the preset's)")
    ablate.add_argument(
        "--pointing-loss-weight",
        type=float,
        help="supervise where every run looks (default: the preset's, 0 in quick and full)",
    )
    ablate.add_argument(
        "--region-loss-weight",
        type=float,
        help="teach every run what each region holds (default: the preset's, 1 in quick)",
    )
    ablate.add_argument(
        "--answers-only",
        action="store_true",
        help="no loss that reads a box (region attribute and pointing weights 0): every run "
        "learns from the answers alone with the preset's box-free recipe, as on data without "
        "boxes (the default preset's; quick has none)",
    )
    ablate.add_argument(
        "--preset", default="quick", help="quick (2-core CPU, 20 min) | full (GPU) | tiny"
    )
    ablate.add_argument("--out", required=True, help="output directory")
    ablate.add_argument(
        "--resume", action="store_true", help="skip the runs already in OUT/results.csv"
    )
    ablate.add_argument("--no-progress", action="store_true")
    ablate.set_defaults(run=run_ablate)


def run_ablate(args: argparse.Namespace) -> None:
    """The ``vqa ablate`` command: run the ablation, then say where the results are."""
    from vqa.ablation import (
        REPORT_FILE,
        RESULTS_FILE,
        TABLE_FILE,
        AblationArguments,
        run_ablation,
    )

    out = run_ablation(
        AblationArguments(
            out=args.out,
            data=args.data,
            preset=args.preset,
            modes=args.modes,
            k=args.k,
            estimators=args.estimators,
            seeds=args.seeds,
            select_after=args.select_after,
            encoder_k=args.encoder_k,
            encoder_rule=args.encoder_rule,
            encoder_fold=args.encoder_fold,
            k_rule=args.k_rule,
            top_p=args.top_p,
            k_penalty=args.k_penalty,
            k_max=args.k_max,
            epochs=args.epochs,
            pointing_loss_weight=args.pointing_loss_weight,
            region_loss_weight=args.region_loss_weight,
            answers_only=args.answers_only,
            resume=args.resume,
            progress=not args.no_progress,
        )
    )
    print(f"{out / RESULTS_FILE}, {out / TABLE_FILE}, {out / REPORT_FILE} and plots in {out}")


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
    add_fusion_k_arguments(serve)
    add_encoder_selection_arguments(serve)
    serve.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda if there is a GPU, else cpu)"
    )
    serve.set_defaults(run=run_serve)


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="open the app on the default model (shipped with the package; --retrain trains one)",
    )
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="train a new default model with the default preset (about 15 minutes on 2 cores)",
    )
    demo.add_argument("--port", type=int, default=7860, help="port of the app (on 127.0.0.1)")
    demo.set_defaults(run=run_demo)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="export a model for another runtime (ONNX, for onnxruntime)"
    )
    export.add_argument("model", metavar="RUN", help="run or model directory")
    export.add_argument("--format", default="onnx", help="onnx (the default; the only one)")
    export.add_argument("--out", required=True, help="output directory")
    export.add_argument(
        "--mode", choices=MODES, help="fusion mode fixed in the graph (default: the model's)"
    )
    add_fusion_k_arguments(export)
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    export.set_defaults(run=run_export)


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
        add_export_parser,
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
    from vqa.training import train

    summary = train(from_namespace(TrainingArguments, args))
    if any("val_accuracy" in record for record in summary["history"]):
        kept = f"best val accuracy {summary['best_accuracy']:.4f}"
    else:
        kept = "no val split: lowest training loss"
    print(f"{kept} at epoch {summary.get('best_epoch')}; model saved in {args.output}")


def evaluation_data(data: str, model_dir: str) -> str:
    """``data``, or for ``synthetic`` the embedded scenes of the preset the model was trained
    with (``metrics.json``; the default preset when the run does not say)."""
    from pathlib import Path

    from vqa.cache import resolve_data_dir
    from vqa.presets import get_preset

    if data != "synthetic":
        return data
    try:
        arguments = json.loads((Path(model_dir) / "metrics.json").read_text())["arguments"]
        preset = arguments["preset"] if arguments["data"] == "synthetic" else "default"
    except (OSError, ValueError, KeyError, TypeError):
        preset = "default"
    return str(resolve_data_dir(data, get_preset(preset)))


def run_eval(args: argparse.Namespace) -> None:
    from vqa.data.hub import ColumnMapping
    from vqa.data.sources import load_vqa_dataset
    from vqa.evaluation import evaluate, write_results
    from vqa.inference import load_model
    from vqa.model_card import check_run, update_model_card_metrics

    if args.update_card:
        check_run(args.model)  # before the evaluation rather than after it
    model, processor = load_model(args.model, args.device)
    model.set_fusion(mode=args.mode, **fusion_k_settings(args))
    set_encoder_selection(model, args)
    rows = load_vqa_dataset(
        evaluation_data(args.data, args.model),
        [args.split],
        columns=ColumnMapping(args.image_column, args.question_column, args.answer_column),
        streaming=args.streaming,
    )[args.split]
    scores = evaluate(
        model,
        processor,
        rows,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        on_bad_image=args.on_bad_image,
        progress=not args.json,
        predictions=args.results is not None,
    )
    if args.results:
        write_results(scores.pop("predictions"), args.results)
    device = str(model.device)
    k = describe_k(model.fusion.k)
    scores.update(mode=model.fusion.mode, k=k, split=args.split, device=device)
    if args.update_card:
        update_model_card_metrics(args.model, args.split, scores, data=args.data)
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
    for name, value in scores["regions_used_by_type"].items():
        print(f"    {name:<16} {value:.1f}")
    print(f"  ms per question    {scores['ms_per_question']:.2f}  ({scores['device']})")


def run_predict(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from PIL import Image

    from vqa.inference import (
        describe_encoder_selection,
        describe_sight,
        load_model,
        predict,
        read_questions,
        write_predictions,
    )

    one, many = (args.image, args.question), (args.data, args.out)
    if any(one) and any(many):
        raise ValueError("--image/--question and --data/--out are mutually exclusive")
    if not (all(one) or all(many)):
        raise ValueError("give --image and --question (one question) or --data and --out (a file)")
    questions = read_questions(args.data) if args.data else []  # checked before the model loads
    model, processor = load_model(args.model, args.device)
    model.set_fusion(mode=args.mode, **fusion_k_settings(args))
    set_encoder_selection(model, args)
    if questions:
        options = {"batch_size": args.batch_size, "num_workers": args.num_workers}
        write_predictions(model, processor, questions, args.out, **options)
        print(f"{len(questions)} predictions written to {args.out}")
        return
    with Image.open(args.image) as image:
        result = predict(model, processor, image, args.question)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    if result.truncated:
        print("note: the question was longer than the tokenizer's limit and was truncated")
    for answer, probability in result.answers:
        print(f"{probability:7.2%}  {answer}")
    encoder = describe_encoder_selection(result)
    if encoder is not None:
        print(encoder)
    kept = "" if result.kept is None else f", kept {', '.join(map(str, result.kept))}"
    print(f"regions ({result.mode}, k={result.k}{kept}):")
    for region in result.regions:
        sees = f"  sees {describe_sight(region['sees'])}" if "sees" in region else ""
        print(f"  #{region['rank']:<3} box {region['box']}  weight {region['weight']:.3f}{sees}")


def run_serve(args: argparse.Namespace) -> None:
    from vqa.app import serve

    serve(
        args.model,
        host=args.host,
        port=args.port,
        examples_dir=args.examples,
        share=args.share,
        device=args.device,
        fusion=fusion_k_settings(args),
        select_after=args.select_after,
        encoder_k=args.encoder_k,
        encoder_rule=args.encoder_rule,
    )


def run_demo(args: argparse.Namespace) -> None:
    from vqa.demo import run_demo as demo

    demo(retrain=args.retrain, port=args.port)


def run_export(args: argparse.Namespace) -> None:
    from vqa.export import export_run

    export = export_run(
        args.model,
        args.out,
        format=args.format,
        mode=args.mode,
        fusion=fusion_k_settings(args),
        overwrite=args.overwrite,
    )
    print(
        f"{export.model_file} ({export.mode}, k={describe_k(export.k)}; "
        f"outputs {', '.join(export.outputs)}) "
        f"and its config, tokenizer, image processor and answers written to {export.directory}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        for name in ("model", "init_from"):  # "default": the default model's directory
            if isinstance(getattr(args, name, None), str):
                setattr(args, name, model_directory(getattr(args, name)))
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
