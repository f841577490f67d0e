import json
import math

import pytest

from vqa.data.answers import AnswerVocab, normalize_answer, soft_scores

# Normalisation: cases follow the behaviour of the official vqaEval.py.


def test_normalize_lowercases_and_strips_whitespace():
    assert normalize_answer("  Yes ") == "yes"


def test_normalize_turns_newlines_and_tabs_into_spaces():
    assert normalize_answer("red\nand\tblue") == "red and blue"


def test_normalize_drops_a_trailing_period():
    assert normalize_answer("yes.") == "yes"


def test_normalize_drops_a_period_after_a_digit():
    assert normalize_answer("5.") == "5"


def test_normalize_keeps_a_decimal_point():
    assert normalize_answer("3.5") == "3.5"


def test_normalize_removes_a_thousands_comma():
    assert normalize_answer("1,000") == "1000"


def test_normalize_deletes_all_punctuation_when_a_digit_comma_appears():
    assert normalize_answer("1,000 e-mails") == "1000 emails"


def test_normalize_blanks_out_punctuation_between_letters():
    assert normalize_answer("black-and-white") == "black and white"


def test_normalize_deletes_a_mark_everywhere_once_it_touches_a_space():
    assert normalize_answer("x-ray - yes") == "xray yes"


def test_normalize_keeps_apostrophes_and_colons():
    assert normalize_answer("10:30 o'clock") == "10:30 o'clock"


@pytest.mark.parametrize(
    ("word", "digit"), [("none", "0"), ("zero", "0"), ("two", "2"), ("Ten", "10")]
)
def test_normalize_maps_number_words_to_digits(word, digit):
    assert normalize_answer(word) == digit


def test_normalize_keeps_number_words_above_ten():
    assert normalize_answer("eleven") == "eleven"


@pytest.mark.parametrize(
    ("answer", "expected"), [("a dog", "dog"), ("An apple", "apple"), ("the man", "man")]
)
def test_normalize_drops_articles(answer, expected):
    assert normalize_answer(answer) == expected


def test_normalize_of_only_an_article_is_empty():
    assert normalize_answer("the") == ""


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("dont", "don't"), ("isnt", "isn't"), ("oclock", "o'clock"), ("yall'll", "y'all'll")],
)
def test_normalize_restores_contraction_apostrophes(answer, expected):
    assert normalize_answer(answer) == expected


def test_normalize_never_matches_the_capitalised_contraction_keys():
    # The official table's "Im" -> "I'm" cannot fire: words are lowercased first.
    assert normalize_answer("Im") == "im"


@pytest.mark.parametrize("answer", ["Yes.", "1,000 e-mails", "the two dogs!", "x-ray - yes"])
def test_normalize_is_idempotent(answer):
    once = normalize_answer(answer)
    assert normalize_answer(once) == once


def test_normalize_rejects_a_non_string():
    with pytest.raises(TypeError, match="int"):
        normalize_answer(2)


# Vocabulary.

ROWS = [
    ["yes", "yes", "Yes.", "no"],
    ["two", "2", "3"],
    ["red"],
    ["blue", "cat"],
]


def test_build_orders_answers_by_count_then_alphabetically():
    assert AnswerVocab.build(ROWS).answers == ["yes", "2", "3", "blue", "cat", "no", "red"]


def test_build_does_not_depend_on_row_order():
    assert AnswerVocab.build(ROWS[::-1]).answers == AnswerVocab.build(ROWS).answers


def test_build_keeps_only_the_top_max_size_answers():
    assert AnswerVocab.build(ROWS, max_size=2).answers == ["yes", "2"]


def test_build_drops_answers_below_min_count():
    assert AnswerVocab.build(ROWS, min_count=2).answers == ["yes", "2"]


def test_build_never_keeps_an_empty_answer():
    assert AnswerVocab.build([["the", "the", "dog"]]).answers == ["dog"]


def test_build_treats_a_bare_string_as_a_one_answer_row():
    assert AnswerVocab.build(["red", "red", "blue"]).answers == ["red", "blue"]


def test_build_rejects_data_with_no_answer_kept():
    with pytest.raises(ValueError, match="min_count=5"):
        AnswerVocab.build(ROWS, min_count=5)


def test_len_counts_answers():
    assert len(AnswerVocab(["yes", "no"])) == 2


def test_encode_normalises_its_argument():
    assert AnswerVocab(["yes", "2"]).encode("Two.") == 1


def test_encode_returns_none_out_of_vocabulary():
    assert AnswerVocab(["yes", "no"]).encode("maybe") is None


def test_decode_returns_the_answer_of_an_id():
    assert AnswerVocab(["yes", "no"]).decode(1) == "no"


def test_decode_rejects_a_negative_id():
    with pytest.raises(IndexError, match="-1"):
        AnswerVocab(["yes", "no"]).decode(-1)


def test_constructor_rejects_duplicate_answers():
    with pytest.raises(ValueError, match="repeats"):
        AnswerVocab(["yes", "no", "yes"])


def test_coverage_counts_rows_and_answers_in_vocabulary():
    vocab = AnswerVocab(["yes", "2"])
    rows = [["yes", "no"], ["maybe"], ["two", "2", "3"], "yes"]
    assert vocab.coverage(rows) == {
        "rows": 4,
        "row_coverage": 3 / 4,
        "answer_coverage": 4 / 7,
        "rows_out_of_vocab": 1,
    }


def test_coverage_of_no_rows_is_nan():
    coverage = AnswerVocab(["yes"]).coverage([])
    assert math.isnan(coverage["row_coverage"]) and math.isnan(coverage["answer_coverage"])


def test_json_file_round_trip_keeps_answers_in_order(tmp_path):
    vocab = AnswerVocab(["yes", "no", "2", "café"])
    vocab.to_json_file(tmp_path / "answers.json")
    assert AnswerVocab.from_json_file(tmp_path / "answers.json").answers == vocab.answers


def test_json_file_is_a_plain_list(tmp_path):
    AnswerVocab(["yes", "no"]).to_json_file(tmp_path / "answers.json")
    assert json.loads((tmp_path / "answers.json").read_text(encoding="utf-8")) == ["yes", "no"]


def test_to_json_file_leaves_no_temporary_file(tmp_path):
    AnswerVocab(["yes"]).to_json_file(tmp_path / "answers.json")
    assert [path.name for path in tmp_path.iterdir()] == ["answers.json"]


def test_to_json_file_replaces_an_existing_file(tmp_path):
    AnswerVocab(["old"]).to_json_file(tmp_path / "answers.json")
    AnswerVocab(["new"]).to_json_file(tmp_path / "answers.json")
    assert AnswerVocab.from_json_file(tmp_path / "answers.json").answers == ["new"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('["yes", "no"', "not a valid JSON"),
        ('{"yes": 0}', "expected a JSON list"),
        ('["yes", 2]', "entry 1 is not a string"),
        ('["yes", "no", "yes"]', "entry 2 repeats"),
    ],
)
def test_from_json_file_rejects_a_malformed_file_naming_it(tmp_path, content, problem):
    path = tmp_path / "answers.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=problem) as error:
        AnswerVocab.from_json_file(path)
    assert str(path) in str(error.value)


# Soft scores.


def test_soft_scores_give_count_over_three_capped_at_one():
    vocab = AnswerVocab(["yes", "no", "maybe"])
    answers = ["yes"] * 5 + ["no"] * 2 + ["maybe"] + ["unsure"] * 2
    assert soft_scores(answers, vocab) == {0: 1.0, 1: 2 / 3, 2: 1 / 3}


def test_soft_scores_count_answers_after_normalisation():
    assert soft_scores(["two", "2", "Two.", "no"], AnswerVocab(["2"])) == {0: 1.0}


def test_soft_scores_of_a_single_answer_are_one():
    assert soft_scores(["no"], AnswerVocab(["yes", "no"])) == {1: 1.0}


def test_soft_scores_accept_a_bare_answer_string():
    assert soft_scores("no", AnswerVocab(["yes", "no"])) == {1: 1.0}


def test_soft_scores_leave_out_of_vocabulary_answers_out():
    assert soft_scores(["maybe", "unsure"], AnswerVocab(["yes"])) == {}
