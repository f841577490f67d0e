"""Answer normalisation, the answer vocabulary and soft answer targets.

`normalize_answer` reproduces the normalisation of the official VQA evaluation script,
`VQAEval` in vqaEval.py of the VQA API (github.com/GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py): the same tables, regexes and order of steps,
quirks included, so accuracies computed here match the official server's.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqa.data.columns import ArrowColumn, flat_lists, row_sums, to_numpy, value_counts
from vqa.files import write_json

# `VQAEval.punct`. The period is not in it: `_PERIOD_STRIP` handles periods.
_PUNCTUATION = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# `VQAEval.periodStrip`, verbatim. "(?!<=\d)" is a lookahead for the text "<=" + digit, not the
# lookbehind it looks like, so in effect every period not followed by a digit goes: "yes." -> "yes",
# "5." -> "5", "3.5" stays. (The official call also passes re.UNICODE where `sub` takes `count`,
# capping it at 32 removals; no real answer has that many periods, so the cap is left out.)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")

# `VQAEval.commaStrip`: a comma between digits, as in "1,000".
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")

# `VQAEval.manualMap`: number words up to ten, and "none" (a common answer to "how many").
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

_ARTICLES = frozenset({"a", "an", "the"})

# `VQAEval.contractions`, entry for entry, including its oddities: the capitalised keys ("Im",
# "Ive", ...) never match because words are lowercased first, and "somebody'd" maps to
# "somebodyd".
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip


def _strip_punctuation(text: str) -> str:
    """`VQAEval.processPunctuation`: delete or blank out punctuation, drop periods."""
    # As in the official code, the test reads the unmodified text: a mark that touches a space
    # anywhere, or any digit-comma-digit in the answer, makes that mark vanish everywhere
    # ("1,000" -> "1000", "x-ray - yes" -> "xray yes"); otherwise it becomes a space.
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        if has_digit_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def _words_to_canonical(text: str) -> str:
    """`VQAEval.processDigitArticle`: lowercase, number words -> digits, articles, contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


@functools.lru_cache(maxsize=2**18)  # VQAv2 repeats its few hundred thousand answers 4.4M times
def normalize_answer(answer: str) -> str:
    """Normalise an answer exactly as the official VQA evaluation normalises a prediction.

    Steps, in the official order: newlines and tabs become spaces, surrounding whitespace
    goes, punctuation is deleted or blanked out (see `_strip_punctuation`), then the text is
    lowercased and split on whitespace, number words up to ten become digits ("two" -> "2",
    "none" -> "0"), the articles "a", "an", "the" go, and apostrophe-less contractions get
    their apostrophe back ("dont" -> "don't"). Words are rejoined with single spaces.

    Args:
        answer: a free-form answer.

    Returns:
        The normalised answer; "" when nothing is left (e.g. for "the").
    """
    if not isinstance(answer, str):
        raise TypeError(f"an answer must be a string, got {type(answer).__name__}: {answer!r}")
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _words_to_canonical(_strip_punctuation(text))


def _as_answer_list(row: str | Sequence[str]) -> list[str]:
    """One row's answers as a list: a bare string (the `answer` field) is a one-answer row."""
    return [row] if isinstance(row, str) else list(row)


AnswerLists = Iterable[str | Sequence[str]] | ArrowColumn


def flat_answers(answer_lists: AnswerLists) -> tuple[ArrowColumn, np.ndarray]:
    """Every answer, row after row, and each row's number of answers.

    Args:
        answer_lists: one entry per row, its list of answers or a single answer string; or
            the same as an Arrow column of string lists or of strings (``arrow_column(rows,
            "answers")``), which is read without a Python loop.

    Returns:
        (E,) Arrow strings and (R,) int64 answers per row.
    """
    if not isinstance(answer_lists, (pa.Array, pa.ChunkedArray)):
        rows = [_as_answer_list(row) for row in answer_lists]
        try:
            answer_lists = pa.array(rows, pa.list_(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise TypeError(f"answers must be strings or lists of strings ({error})") from error
    if pa.types.is_string(answer_lists.type) or pa.types.is_large_string(answer_lists.type):
        return answer_lists, np.ones(len(answer_lists), dtype=np.int64)
    return flat_lists(answer_lists)


def coverage_report(answers: np.ndarray, hits: np.ndarray) -> dict[str, float]:
    """The coverage report (see `AnswerVocab.coverage`) of rows with ``answers`` answers each,
    ``hits`` of them in the vocabulary; (R,) ints each."""
    rows, total = len(answers), int(answers.sum())
    covered_rows = int(np.count_nonzero(hits))
    return {
        "rows": rows,
        "row_coverage": covered_rows / rows if rows else math.nan,
        "answer_coverage": int(hits.sum()) / total if total else math.nan,
        "rows_out_of_vocab": rows - covered_rows,
    }


def _check_unique_strings(answers: object, where: str) -> None:
    """Raise ValueError, naming `where`, unless `answers` is a list of unique strings."""
    if not isinstance(answers, list):
        raise ValueError(f"{where}: expected a JSON list of answers, got {type(answers).__name__}")
    seen: set[str] = set()
    for index, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise ValueError(f"{where}: entry {index} is not a string: {answer!r}")
        if answer in seen:
            raise ValueError(f"{where}: entry {index} repeats the answer {answer!r}")
        seen.add(answer)


class AnswerVocab:
    """A fixed list of normalised answers; an answer's id is its position in the list.

    Id 0 is the most frequent answer when the vocabulary comes from `build`.

    Args:
        answers: unique answer strings, in id order. They are expected to be normalised
            already (as `build` makes them); lookups normalise their argument.
    """

    def __init__(self, answers: Iterable[str]) -> None:
        answers = list(answers)
        _check_unique_strings(answers, where="AnswerVocab")
        self._answers = answers
        self._ids = {answer: index for index, answer in enumerate(answers)}

    @classmethod
    def build(
        cls,
        answer_lists: AnswerLists,
        max_size: int = 3129,
        min_count: int = 1,
    ) -> AnswerVocab:
        """Keep the `max_size` most frequent normalised answers seen at least `min_count` times.

        Every answer counts once per occurrence, so an answer given by 10 annotators of one
        question counts 10. Ties in count are ordered alphabetically, so the result does not
        depend on row order. Answers that normalise to "" are never kept. 3129 is the size of
        the usual VQAv2 vocabulary (answers given at least 9 times in train+val).

        Args:
            answer_lists: one entry per row: its list of answers, or a single answer string;
                or an Arrow column of them (see `flat_answers`).
            max_size: the most answers to keep.
            min_count: the fewest occurrences an answer needs to be kept.
        """
        if max_size < 1 or min_count < 1:
            raise ValueError(f"max_size and min_count must be >= 1, got {max_size}, {min_count}")
        counts: Counter[str] = Counter()
        # Counted in Arrow, then each distinct answer normalised once.
        for answer, repeats in zip(*value_counts(flat_answers(answer_lists)[0]), strict=True):
            if normalized := normalize_answer(answer):
                counts[normalized] += int(repeats)
        kept = [answer for answer, count in counts.items() if count >= min_count]
        if not kept:
            raise ValueError(f"no answer occurs at least min_count={min_count} times")
        kept.sort(key=lambda answer: (-counts[answer], answer))
        return cls(kept[:max_size])

    @property
    def answers(self) -> list[str]:
        """The answers in id order (a copy)."""
        return list(self._answers)

    def __len__(self) -> int:
        return len(self._answers)

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers)"

    def encode(self, answer: str) -> int | None:
        """The id of `answer` after normalisation, or None when it is out of vocabulary."""
        return self._ids.get(normalize_answer(answer))

    def decode(self, index: int) -> str:
        """The answer with id `index`; IndexError outside [0, len)."""
        if not 0 <= index < len(self._answers):
            raise IndexError(f"answer id {index} is outside [0, {len(self._answers)})")
        return self._answers[index]

    def hits(self, answer_lists: AnswerLists) -> tuple[np.ndarray, np.ndarray]:
        """Per row, how many answers it has and how many of them are in the vocabulary.

        Args:
            answer_lists: as for `build`; an Arrow column is read without a Python loop.

        Returns:
            (R,) int64 answers, (R,) int64 in-vocabulary answers.
        """
        answers, lengths = flat_answers(answer_lists)
        distinct = pc.unique(answers).to_pylist()  # each distinct answer looked up once
        known = pa.array([a for a in distinct if self.encode(a) is not None], answers.type)
        return lengths, row_sums(to_numpy(pc.is_in(answers, value_set=known)), lengths)

    def coverage(self, answer_lists: AnswerLists) -> dict[str, float]:
        """How well the vocabulary covers a set of rows (given as for `build`).

        Returns:
            "rows": the number of rows;
            "row_coverage": share of rows with at least one in-vocabulary answer;
            "answer_coverage": share of all answers (every occurrence) in the vocabulary;
            "rows_out_of_vocab": number of rows with no in-vocabulary answer (no model
            trained on this vocabulary can score on them).
            Shares are nan when there is nothing to divide by.
        """
        return coverage_report(*self.hits(answer_lists))

    def describe_coverage(self, report: dict[str, float]) -> str:
        """One line about a `coverage` report, e.g. for the log at the start of training."""
        return (
            f"answer vocabulary: {len(self)} answers; {report['row_coverage']:.1%} of "
            f"{report['rows']} questions have an answer in it ({report['answer_coverage']:.1%} "
            f"of all answers); {report['rows_out_of_vocab']} have none"
        )

    def to_json_file(self, path: str | os.PathLike[str]) -> None:
        """Write the answers as a JSON list in id order, atomically."""
        write_json(Path(path), self._answers)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> AnswerVocab:
        """Read a vocabulary written by `to_json_file`.

        Raises:
            ValueError: naming the file, when it is not JSON or not a list of unique strings.
        """
        path = Path(path)
        try:
            answers = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: not a valid JSON answer list ({error})") from error
        _check_unique_strings(answers, where=str(path))
        return cls(answers)


def soft_scores(answers: str | Sequence[str], vocab: AnswerVocab) -> dict[int, float]:
    """Soft target scores of one row over the vocabulary, for a BCE answer head.

    Several answers (e.g. the 10 human answers of VQAv2): each distinct in-vocabulary answer
    given `count` times scores min(1, count / 3), the per-answer accuracy of the VQA paper
    ("an answer is 100% right if at least 3 humans gave it"). The official script averages
    that over the 10 leave-one-out subsets, which gives 0.3, 0.6, 0.9, 1 for counts 1, 2, 3,
    4+; that table is the "0.3 per occurrence" score of bottom-up top-down (Anderson et al.
    2018 / Teney et al. 2018). count / 3 (1/3, 2/3, 1, 1) ranks answers the same way and does
    not depend on the number of annotators.

    One answer (a single `answer` string, or a one-element list): {id: 1.0}.

    Returns:
        {answer id: score}; out-of-vocabulary answers are left out, so it may be empty.
    """
    answers = _as_answer_list(answers)
    counts = Counter(index for index in map(vocab.encode, answers) if index is not None)
    if len(answers) == 1:
        return {index: 1.0 for index in counts}
    return {index: min(1.0, count / 3) for index, count in counts.items()}
