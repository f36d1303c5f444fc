"""lth.verdicts on numbers built by hand: each sentence in full, every edge that decides a word (one seed, a zero
interval, a difference of exactly one test image, seeds left out), and the numbers a Comparison carries."""
import pytest

from lth.verdicts import ONE_IMAGE, Comparison, against_threshold, compare_seeds, paired, range_verdict

ONE_SEED = "paired on one seed: no interval from one seed"


def test_one_seed_gives_no_range_and_no_interval_and_says_what_it_left_out():
    assert range_verdict([0.5], [0.4, 0.6]) == "one seed: no range to judge it against"
    assert paired([0.01]) == Comparison(0.01, ONE_SEED)
    assert paired([0.01], left_out="seed 2 left out") == Comparison(0.01, f"{ONE_SEED}; seed 2 left out",
                                                                   left_out="seed 2 left out")


def test_a_paired_verdict_is_clear_only_when_its_interval_excludes_zero():
    level = paired([0.0, 0.0, 0.0])
    assert level == Comparison(0.0, "paired by seed, not clear: 95% interval +0.00 to +0.00 points (width 0.00), "
                                    "0 of 3 seeds below", False, 0.0)
    ahead = paired([ONE_IMAGE, ONE_IMAGE, 2 * ONE_IMAGE], left_out="seed 3 left out")
    assert ahead.said.endswith("3 of 3 seeds above; seed 3 left out")  # one test image each counts as a seed above
    assert ahead.left_out == "seed 3 left out" and ahead.width > 0


def test_unpaired_arms_are_judged_by_their_ranges_and_quick_ones_not_at_all():
    a, b = {0: (0.8, "a0"), 1: (0.9, "a1")}, {0: (0.6, "b0"), 1: (0.7, "b1")}
    unpaired = compare_seeds(a, b)
    assert unpaired.said == "unpaired, as no seed shares its phase 0: beyond the seed range: the ranges do not overlap"
    assert unpaired.diff == pytest.approx(0.2)
    assert compare_seeds(a, b, quick=True) == Comparison(pytest.approx(0.2), "no verdict on a quick run")


@pytest.mark.parametrize("b_seeds, left_out", [
    ((0, 1, 2), "seed 2 left out: not run by both arms, or not from the same phase 0"),
    ((0, 1, 2, 3), "seeds 2, 3 left out: not run by both arms, or not from the same phase 0"),
])
def test_seeds_that_do_not_pair_are_named_and_left_out(b_seeds, left_out):
    a = {s: (0.8 + 0.01 * s, f"p{s}") for s in (0, 1)}
    b = {s: (0.7 + 0.01 * s, f"p{s}") for s in b_seeds}
    comparison = compare_seeds(a, b)
    assert comparison.left_out == left_out and comparison.said.endswith(f"; {left_out}")
    assert comparison.diff == pytest.approx(0.1)


def test_the_threshold_is_crossed_by_one_test_image_and_no_less():
    assert against_threshold(0.75, 0.75) == "above" and against_threshold(0.70, 0.75) == "below"
    assert against_threshold(ONE_IMAGE, 0.02) == "above"  # 0.02 - 0.02 is exactly 0: d is the accuracy itself
    assert against_threshold(ONE_IMAGE - 1e-9, 0.02) == "above"  # the margin left for rounding, no more
    assert against_threshold(ONE_IMAGE - 2e-9, 0.02) == "at" and against_threshold(-ONE_IMAGE / 2, 0.02) == "at"
