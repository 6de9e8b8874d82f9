"""Intervals over groups (slides, subjects): whole groups are resampled within their stratum, the result is
reproducible, errors that cluster on one group widen the interval, and a stratum of one group cannot vary."""
import numpy as np
import pytest

from ml.uncertainty import (
    against_target,
    classification_intervals,
    group_bootstrap,
    macro_f1,
    pooled_ratio_interval,
    subject_intervals,
)


def grouped_split(errors_in_groups):
    """Two classes (indices 0 'a', 1 'b') of 10 groups of 10 images; group g of class 'a' has errors_in_groups[g]
    wrong answers."""
    truth, predicted, groups = [], [], []
    for label, other in ((0, 1), (1, 0)):
        for g in range(10):
            wrong = errors_in_groups[g] if label == 0 else 0
            truth += [label] * 10
            predicted += [other] * wrong + [label] * (10 - wrong)
            groups += [f"{'ab'[label]}{g}"] * 10
    return truth, predicted, groups


def test_the_same_seed_gives_the_same_interval_and_the_estimate_is_the_plain_metric():
    truth, predicted, groups = grouped_split([2, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    first = classification_intervals(truth, predicted, groups, ["a", "b"])
    assert first == classification_intervals(truth, predicted, groups, ["a", "b"])
    assert first["metrics"]["accuracy"]["estimate"] == pytest.approx(197 / 200)
    assert first["groups"] == 20 and first["groups_per_stratum"] == {"a": 10, "b": 10}
    m = first["metrics"]["accuracy"]
    assert m["low"] <= m["estimate"] <= m["high"]


def test_errors_clustered_on_one_slide_widen_the_interval():
    spread = classification_intervals(*grouped_split([1] * 10), ["a", "b"])["metrics"]["accuracy"]
    clustered = classification_intervals(*grouped_split([10] + [0] * 9), ["a", "b"])["metrics"]["accuracy"]
    assert spread["estimate"] == clustered["estimate"] == pytest.approx(0.95)
    assert clustered["high"] - clustered["low"] > 2 * (spread["high"] - spread["low"])


def test_a_resample_keeps_every_stratum_with_its_own_number_of_groups():
    seen = []
    truth = np.array(["a"] * 6 + ["b"] * 2)
    groups = np.array(["a1", "a1", "a2", "a2", "a3", "a3", "b1", "b2"])
    group_bootstrap(truth, truth, groups, truth, {"record": lambda t, p: seen.append(list(t)) or 0.0}, resamples=50)
    assert len(seen) == 51  # 50 resamples, then the estimate on every item
    for resample in seen[:50]:
        assert resample.count("a") == 6 and resample.count("b") == 2


def test_a_group_spanning_two_strata_is_refused():
    with pytest.raises(ValueError, match="spans strata"):
        group_bootstrap([1, 0], [1, 0], ["g", "g"], ["a", "b"], {"m": lambda t, p: 0.0})


def test_one_normal_subject_gives_no_interval_and_three_give_a_wide_one():
    rows = [{"subject": "1", "truth": "blast", "cells": 100, "flagged": 97},
            {"subject": "2", "truth": "blast", "cells": 50, "flagged": 49},
            {"subject": "H1", "truth": "normal", "cells": 100, "flagged": 30}]
    one = subject_intervals(rows)["metrics"]["specificity"]
    assert one["low"] == one["high"] == one["estimate"] == pytest.approx(0.7)
    three = subject_intervals(rows + [{"subject": "H2", "truth": "normal", "cells": 100, "flagged": 90},
                                      {"subject": "H3", "truth": "normal", "cells": 100, "flagged": 50}])
    m = three["metrics"]["specificity"]
    assert m["estimate"] == pytest.approx((70 + 10 + 50) / 300)
    assert m["low"] < 0.3 and m["high"] > 0.55
    assert against_target(three, "specificity", 0.5) == "inside the interval"
    assert three["metrics"]["sensitivity"]["estimate"] == pytest.approx(146 / 150)


def test_macro_f1_matches_scikit_learn_including_a_class_never_seen():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        t, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
        assert macro_f1(t, p, [0, 1, 2, 3]) == pytest.approx(
            f1_score(t, p, labels=[0, 1, 2, 3], average="macro", zero_division=0))


def test_a_pooled_ratio_from_counts_matches_the_bootstrap_over_the_groups_cells():
    flagged, cells = [97, 49, 20, 60], [100, 50, 40, 60]
    pooled = pooled_ratio_interval(flagged, cells)
    assert pooled["estimate"] == pytest.approx(226 / 250) and pooled["groups"] == 4
    assert pooled == pooled_ratio_interval(flagged, cells)
    truth = np.ones(250, dtype=bool)
    hits = np.concatenate([[True] * k + [False] * (n - k) for k, n in zip(flagged, cells)])
    groups = np.repeat(["a", "b", "c", "d"], cells)
    cellwise = group_bootstrap(truth, hits, groups, truth, {"s": lambda t, p: float(p.mean())})["metrics"]["s"]
    # The same resampling scheme by another random stream: the bounds agree to within resampling noise.
    assert pooled["low"] == pytest.approx(cellwise["low"], abs=0.03)
    assert pooled["high"] == pytest.approx(cellwise["high"], abs=0.03)


def test_a_pooled_ratio_over_one_group_has_no_interval_and_bad_counts_are_refused():
    one = pooled_ratio_interval([3], [4])
    assert one["estimate"] == 0.75 and one["low"] is None and one["high"] is None
    for successes, totals in (([], []), ([5], [4]), ([1, 1], [2]), ([0], [0]), ([-1], [3])):
        with pytest.raises(ValueError):
            pooled_ratio_interval(successes, totals)


def test_a_pooled_ratio_over_many_groups_is_drawn_in_blocks_with_the_same_result_size():
    result = pooled_ratio_interval([1] * 5000, [2] * 5000, resamples=120)
    assert result["resamples"] == 120 and result["low"] == result["high"] == 0.5
