"""A peer baseline: the 2020 easy-VQA tutorial model, trained and scored as ours is.

``PeerVQAModel`` is the small model of Victor Zhou's "Visual Question Answering with Keras"
(github.com/vzhou842/easy-VQA-keras): two 3x3 convolutions with max pooling, a bag-of-words
question MLP, the element-wise product of the two embeddings and a small MLP head, Glorot
initialised and trained with Adam. ``train_peer`` trains it on a dataset's train split and
scores the val split after every epoch with the metric of ``vqa.evaluation.evaluate``, so that
``scripts/bench_train.py --peer`` can set it beside our model.

Both models see the same questions and answers: the peer's tokens and answer ids come from a
``HybridVQAProcessor`` built as ``vqa train`` builds one, and it trains on the same rows (those
with an answer in the vocabulary), in the same image-grouped order. It learns from the answers
alone: its batches are made from each row's image, question, answers and question type, and
never read the rows' objects, boxes or targets.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vqa.data.columns import arrow_column
from vqa.data.sources import answerable_rows, load_vqa_dataset
from vqa.evaluation import scored_by_type
from vqa.inference import resolve_device
from vqa.loading import loader_options
from vqa.metrics import answer_accuracy
from vqa.modeling import answer_loss
from vqa.processing import HybridVQAProcessor, open_image
from vqa.run_setup import ImageGroupedSampler
from vqa.training import learning_curve

# All that the peer reads of a row: no objects, boxes or targets.
PEER_COLUMNS = ("image", "image_path", "question", "answers", "question_type")


class PeerVQAModel(nn.Module):
    """The tutorial model; 0.14M parameters for 64 px images, 174 tokens and 17 answers.

    image (B, 3, S, S) -> conv 3->8 3x3 (same padding), ReLU, max pool 2 -> (B, 8, S/2, S/2)
        -> conv 8->16 3x3, ReLU, max pool 2 -> (B, 16, S/4, S/4) -> flatten -> linear -> 32, tanh
    question: bag of words (B, V) -> linear -> 32, tanh -> linear -> 32, tanh
    product of the two (B, 32) -> linear -> 32, tanh -> linear -> answers (B, A) logits

    At the default sizes the image's linear layer (16 * 16 * 16 -> 32) holds 131k of the 141k
    parameters. The tutorial's convolutions have no activation; issue 15 describes them with a
    ReLU, which this follows.

    Args:
        vocab_size: length of the bag of words (the tokenizer's vocabulary).
        num_answers: the answer vocabulary's size.
        image_size: the side S of the square input images (a multiple of 4).
        hidden: width of every embedding and of the head.
    """

    def __init__(
        self, *, vocab_size: int, num_answers: int, image_size: int = 64, hidden: int = 32
    ) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * (image_size // 4) ** 2, hidden),
            nn.Tanh(),
        )
        self.question = nn.Sequential(
            nn.Linear(vocab_size, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Sequential(
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, num_answers)
        )
        self.apply(glorot_init)

    def forward(self, images: Tensor, words: Tensor) -> Tensor:
        """images (B, 3, S, S), words (B, V) bags of words -> answer logits (B, A)."""
        return self.head(self.image(images) * self.question(words))


def glorot_init(module: nn.Module) -> None:
    """Keras' defaults, as the tutorial had them: Glorot-uniform weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)


def bag_of_words(input_ids: Tensor, vocab_size: int, special_ids: list[int]) -> Tensor:
    """Token ids (B, L), padded -> (B, vocab_size) multi-hot: 1 where the question has the
    token. Special tokens (padding, [CLS], [SEP]) are left out."""
    words = torch.zeros(len(input_ids), vocab_size)
    words.scatter_(1, input_ids, 1.0)
    words[:, special_ids] = 0.0
    return words


class PeerCollator:
    """Rows (``PEER_COLUMNS``) -> (inputs, answers, question types) of one batch.

    ``inputs`` holds ``images`` (B, 3, S, S), transformed by the processor (each distinct
    image decoded once), ``words`` (B, V) from the processor's tokenizer and ``labels``: (B,)
    answer ids (-100 outside the vocabulary), or (B, A) soft scores for rows with several
    answers (``HybridVQAProcessor.labels``).
    """

    def __init__(self, processor: HybridVQAProcessor) -> None:
        self.processor = processor
        self.special_ids = processor.tokenizer.all_special_ids

    def __call__(self, rows: list[dict]) -> tuple[dict[str, Tensor], list[list[str]], list[str]]:
        slots: dict[str, int] = {}
        images = []
        for row in rows:
            if row["image_path"] not in slots:
                slots[row["image_path"]] = len(images)
                images.append(open_image(row["image"]))
        image_index = torch.tensor([slots[row["image_path"]] for row in rows])
        input_ids = self.processor.questions([row["question"] for row in rows])["input_ids"]
        inputs = {
            "images": self.processor.images(images)[image_index],
            "words": bag_of_words(input_ids, len(self.processor.tokenizer), self.special_ids),
            "labels": self.processor.labels([row["answers"] for row in rows]),
        }
        return inputs, [row["answers"] for row in rows], [row["question_type"] for row in rows]


@torch.no_grad()
def evaluate_peer(
    model: PeerVQAModel, loader: DataLoader, processor: HybridVQAProcessor
) -> dict[str, object]:
    """VQA accuracy of ``model`` on every row of ``loader`` (``PeerCollator`` batches):
    {"accuracy", "accuracy_by_type"}, as ``vqa.evaluation.evaluate`` scores them (a row
    without answers is not scored)."""
    model.eval()
    device = next(model.parameters()).device
    accuracy, types = [], []
    for inputs, answers, question_types in loader:
        logits = model(inputs["images"].to(device), inputs["words"].to(device))
        for prediction, row_answers in zip(logits.argmax(-1).tolist(), answers, strict=True):
            predicted = processor.answers.decode(prediction)
            accuracy.append(answer_accuracy(predicted, row_answers) if row_answers else math.nan)
        types += question_types
    by_type = scored_by_type(accuracy, types)
    return {"accuracy": by_type.pop("overall"), "accuracy_by_type": by_type}


def peer_loader(
    rows: Dataset,
    collator: PeerCollator,
    batch_size: int,
    device: torch.device,
    seed: int | None,
    group_size: int | None = None,
) -> DataLoader:
    """Batches of ``rows``: shuffled by image and grouped as ours are with a ``seed`` (at most
    ``group_size`` questions about one image in a row), else in order."""
    paths = arrow_column(rows, "image_path")
    sampler = ImageGroupedSampler(paths, seed, group_size) if seed is not None else None
    return DataLoader(
        rows,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator,
        **loader_options(None, device),
    )


def train_peer(
    data_dir: str | Path,
    *,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 5e-4,
    seed: int = 0,
    group_size: int | None = None,
    image_size: int = 64,
    max_answers: int = 3129,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict:
    """Train a ``PeerVQAModel`` on the train split of ``data_dir``; score the val split after
    every epoch.

    The defaults are the tutorial's (8 epochs, batch 32, Adam at 5e-4); ``image_size``,
    ``max_answers`` and ``group_size`` (``vqa.run_setup.ImageGroupedSampler``) should be those
    of the run it is compared with. It runs on ``device``
    (default: the GPU when torch sees one, else the CPU).

    Returns:
        {"model": "peer", "parameters", "device", "arguments", "answer_coverage", "history",
        "curve"}: ``history`` holds per epoch ``epoch``, ``train_loss``, ``train_seconds``,
        ``train_questions``, ``val_accuracy`` and ``val_accuracy_by_type``; ``curve`` is
        ``vqa.training.learning_curve(history)`` (its pointing accuracy is None).
    """
    device = resolve_device(device)
    arguments = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "group_size": group_size,
        "image_size": image_size,
    }
    splits = load_vqa_dataset(data_dir, ["train", "val"])
    train_rows, val_rows = (splits[name].select_columns(PEER_COLUMNS) for name in ("train", "val"))
    processor = HybridVQAProcessor.train(
        arrow_column(train_rows, "question"),
        arrow_column(train_rows, "answers"),
        image_size=image_size,
        max_answers=max_answers,
    )
    train_rows, coverage = answerable_rows(train_rows, processor.answers)
    collator = PeerCollator(processor)
    train_loader = peer_loader(train_rows, collator, batch_size, device, seed, group_size)
    val_loader = peer_loader(val_rows, collator, 128, device, seed=None)

    torch.manual_seed(seed)
    model = PeerVQAModel(
        vocab_size=len(processor.tokenizer),
        num_answers=len(processor.answers),
        image_size=image_size,
    ).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for epoch in range(epochs):
        train_loader.sampler.set_epoch(epoch)
        model.train()
        start, losses = time.perf_counter(), []
        bar = tqdm(train_loader, desc=f"Peer epoch {epoch + 1}/{epochs}", disable=not progress)
        for inputs, _, _ in bar:
            inputs = {name: value.to(device) for name, value in inputs.items()}
            loss = answer_loss(model(inputs["images"], inputs["words"]), inputs["labels"]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        seconds = time.perf_counter() - start  # training only, as ours: not the evaluation
        scores = evaluate_peer(model, val_loader, processor)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(torch.stack(losses).mean()),
                "train_seconds": seconds,
                "train_questions": len(train_rows),
                "val_accuracy": scores["accuracy"],
                "val_accuracy_by_type": scores["accuracy_by_type"],
            }
        )
        print(
            f"peer epoch {epoch + 1}: loss {history[-1]['train_loss']:.4f}, "
            f"val accuracy {scores['accuracy']:.4f} ({seconds:.0f} s)"
        )
    return {
        "model": "peer",
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "device": str(device),
        "arguments": arguments,
        "answer_coverage": coverage,
        "history": history,
        "curve": learning_curve(history),
    }
