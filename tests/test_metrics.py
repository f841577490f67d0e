import math

import pytest
import torch

from vqa.metrics import (
    accuracy_by_type,
    answer_accuracy,
    attention_entropy,
    boxes_overlap,
    patch_boxes,
    pointing_accuracy,
    pointing_hit,
    rank_regions,
    regions_used,
    top_region,
    vqa_accuracy,
)


def ten_answers(matching: int) -> list[str]:
    return ["red"] * matching + ["blue"] * (10 - matching)


# Answer accuracy.


def test_vqa_accuracy_with_no_matching_human_is_zero():
    assert vqa_accuracy("green", ten_answers(0)) == 0.0


def test_vqa_accuracy_with_one_matching_human_is_0_3():
    # 9 subsets keep the match (1/3), 1 drops it (0): 3/10.
    assert vqa_accuracy("red", ten_answers(1)) == pytest.approx(0.3)


def test_vqa_accuracy_with_two_matching_humans_is_0_6():
    # 8 subsets with 2 matches (2/3), 2 with 1 (1/3): 6/10.
    assert vqa_accuracy("red", ten_answers(2)) == pytest.approx(0.6)


def test_vqa_accuracy_with_three_matching_humans_is_0_9():
    # 7 subsets with 3 matches (1), 3 with 2 (2/3): (7 + 2) / 10.
    assert vqa_accuracy("red", ten_answers(3)) == pytest.approx(0.9)


@pytest.mark.parametrize("matching", [4, 7, 10])
def test_vqa_accuracy_with_four_or_more_matching_humans_is_one(matching):
    assert vqa_accuracy("red", ten_answers(matching)) == 1.0


def test_vqa_accuracy_normalises_prediction_and_answers():
    assert vqa_accuracy("Two.", ["2", "two", "2 ", "The two"] + ["3"] * 6) == 1.0


def test_vqa_accuracy_generalises_leave_one_out_to_five_answers():
    # 2 of 5 match: 2 subsets keep 1 match (1/3), 3 keep 2 (2/3): (2/3 + 2) / 5.
    assert vqa_accuracy("red", ["red", "red", "blue", "blue", "blue"]) == pytest.approx(8 / 15)


def test_vqa_accuracy_with_one_answer_is_an_exact_match():
    assert vqa_accuracy("Red.", ["red"]) == 1.0


def test_vqa_accuracy_with_one_answer_is_zero_on_a_mismatch():
    assert vqa_accuracy("blue", ["red"]) == 0.0


def test_vqa_accuracy_rejects_no_answers():
    with pytest.raises(ValueError, match="at least one"):
        vqa_accuracy("red", [])


def test_answer_accuracy_of_a_string_answer_is_an_exact_match():
    assert answer_accuracy("the cube", "cube") == 1.0


def test_answer_accuracy_of_several_answers_is_vqa_accuracy():
    assert answer_accuracy("red", ten_answers(1)) == pytest.approx(0.3)


def test_accuracy_by_type_averages_each_type_and_overall():
    scores = [1.0, 0.0, 0.5, 1.0]
    types = ["color", "count", "count", "color"]
    assert accuracy_by_type(scores, types) == {"color": 1.0, "count": 0.25, "overall": 0.625}


def test_accuracy_by_type_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="3 scores but 2 types"):
        accuracy_by_type([1.0, 0.0, 1.0], ["a", "b"])


def test_accuracy_by_type_of_no_scores_is_nan_overall():
    assert math.isnan(accuracy_by_type([], [])["overall"])


# Region geometry.


def test_patch_boxes_cover_a_4x4_grid_in_row_major_order():
    boxes = patch_boxes(64, 16)
    assert boxes.shape == (16, 4)
    assert boxes[0].tolist() == [0, 0, 16, 16]
    assert boxes[1].tolist() == [16, 0, 32, 16]  # the next token moves along x
    assert boxes[4].tolist() == [0, 16, 16, 32]  # the fifth starts the second row
    assert boxes[15].tolist() == [48, 48, 64, 64]


def test_patch_boxes_take_height_then_width():
    boxes = patch_boxes((32, 64), 16)
    assert boxes.shape == (8, 4) and boxes[3].tolist() == [48, 0, 64, 16]


def test_patch_boxes_drop_pixels_past_the_last_whole_patch():
    assert patch_boxes(70, 16).shape == (16, 4)


def test_patch_boxes_reject_a_patch_larger_than_the_image():
    with pytest.raises(ValueError, match="16px"):
        patch_boxes(8, 16)


def test_boxes_overlap_when_they_share_area():
    assert boxes_overlap(torch.tensor([0, 0, 10, 10]), torch.tensor([5, 5, 15, 15]))


def test_boxes_that_only_touch_do_not_overlap():
    assert not boxes_overlap(torch.tensor([0, 0, 10, 10]), torch.tensor([10, 0, 20, 10]))


def test_boxes_overlap_broadcasts_over_leading_dimensions():
    regions = patch_boxes(32, 16)  # (4, 4)
    target = torch.tensor([[20.0, 4.0, 24.0, 8.0]])  # inside the top-right patch
    assert boxes_overlap(regions, target).tolist() == [False, True, False, False]


def test_pointing_hit_when_any_target_overlaps():
    targets = torch.tensor([[40.0, 40.0, 50.0, 50.0], [2.0, 2.0, 4.0, 4.0]])
    assert pointing_hit(torch.tensor([0.0, 0.0, 16.0, 16.0]), targets)


def test_pointing_hit_is_false_without_targets():
    assert not pointing_hit(torch.tensor([0.0, 0.0, 16.0, 16.0]), torch.zeros(0, 4))


def test_top_region_picks_the_largest_weight_and_the_first_on_ties():
    weights = torch.tensor([[0.1, 0.7, 0.2], [0.4, 0.2, 0.4]])
    assert top_region(weights).tolist() == [1, 0]


def test_pointing_accuracy_counts_hits_over_questions_with_targets():
    regions = patch_boxes(32, 16)  # 2x2 grid
    top = torch.tensor([0, 3, 1])
    targets = [
        torch.tensor([[2.0, 2.0, 10.0, 10.0]]),  # inside region 0: hit
        torch.tensor([[0.0, 0.0, 8.0, 8.0]]),  # region 3 is bottom-right: miss
        torch.zeros(0, 4),  # no target: left out
    ]
    assert pointing_accuracy(top, targets, regions) == 0.5


def test_pointing_accuracy_without_any_target_is_nan():
    top = torch.tensor([0, 1])
    assert math.isnan(pointing_accuracy(top, [torch.zeros(0, 4)] * 2, patch_boxes(32, 16)))


def test_pointing_accuracy_rejects_misaligned_targets():
    with pytest.raises(ValueError, match="2 questions but 1 targets"):
        pointing_accuracy(torch.tensor([0, 1]), [torch.zeros(0, 4)], patch_boxes(32, 16))


# Attention statistics.


def test_attention_entropy_of_uniform_weights_is_log_n():
    entropy = attention_entropy(torch.full((3, 8), 1 / 8))
    assert entropy.tolist() == pytest.approx([math.log(8)] * 3)


def test_attention_entropy_of_one_region_is_zero():
    assert attention_entropy(torch.tensor([0.0, 1.0, 0.0])).item() == 0.0


def test_regions_used_counts_positive_weights():
    weights = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]])
    assert regions_used(weights).tolist() == [2, 4]


def test_top_region_breaks_equal_weights_by_score():
    weights = torch.tensor([[0.0, 0.5, 0.0, 0.5]])
    scores = torch.tensor([[9.0, 1.0, 8.0, 2.0]])
    assert top_region(weights).tolist() == [1]
    assert top_region(weights, scores).tolist() == [3]


def test_rank_regions_orders_by_weight_then_score():
    weights = torch.tensor([0.25, 0.0, 0.25, 0.5])
    scores = torch.tensor([1.0, 9.0, 3.0, 0.0])
    assert rank_regions(weights, scores).tolist() == [3, 2, 0, 1]
