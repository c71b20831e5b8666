"""Hand-computed cases for genrec/metrics.py."""

import math

import pytest

from genrec.metrics import hit_rate_at, leave_one_out_metrics, ndcg_at, ndcg_multi_at, recall_at

RANKED = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"]


def test_hit_rate():
    assert hit_rate_at(RANKED, "a", 1) == 1.0
    assert hit_rate_at(RANKED, "c", 3) == 1.0
    assert hit_rate_at(RANKED, "c", 2) == 0.0
    assert hit_rate_at(RANKED, "j", 10) == 1.0
    assert hit_rate_at(RANKED, "k", 10) == 0.0
    assert hit_rate_at(RANKED, "zzz", 10) == 0.0
    assert hit_rate_at([], "a", 5) == 0.0
    assert hit_rate_at(("a", "b"), "b", 5) == 1.0  # fewer than k results


def test_ndcg():
    assert ndcg_at(RANKED, "a", 5) == 1.0
    assert ndcg_at(RANKED, "b", 5) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(RANKED, "c", 5) == pytest.approx(0.5)  # rank 3: 1 / log2(4)
    assert ndcg_at(RANKED, "g", 10) == pytest.approx(1 / 3)  # rank 7: 1 / log2(8)
    assert ndcg_at(RANKED, "f", 5) == 0.0  # rank 6 is outside the top 5
    assert ndcg_at(RANKED, "zzz", 10) == 0.0
    assert ndcg_at([], "a", 10) == 0.0


def test_leave_one_out_metrics_average_over_users():
    rankings = [
        ["a", "b", "c"],  # target at rank 1
        ["x", "y", "a", "b", "c", "d"],  # rank 3
        ["x"] * 5 + ["t"],  # rank 6: a hit at 10 only
        ["x", "y"],  # miss
    ]
    targets = ["a", "a", "t", "zzz"]
    got = leave_one_out_metrics(rankings, targets)
    assert set(got) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10"}
    assert got["hr@5"] == pytest.approx(2 / 4)
    assert got["ndcg@5"] == pytest.approx((1 + 0.5) / 4)
    assert got["hr@10"] == pytest.approx(3 / 4)
    assert got["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(7)) / 4)
    one = leave_one_out_metrics([["b", "a"]], ["a"], ks=(1, 2))
    assert one == pytest.approx({"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 1.0, "ndcg@2": 1 / math.log2(3)})


def test_leave_one_out_metrics_edge_cases():
    assert leave_one_out_metrics([], []) == {"hr@5": 0.0, "ndcg@5": 0.0, "hr@10": 0.0, "ndcg@10": 0.0}
    with pytest.raises(ValueError):
        leave_one_out_metrics([["a"]], ["a", "b"])


def test_recall_at():
    ranked = ["a", "b", "c", "d", "e"]
    assert recall_at(ranked, {"a", "c", "z"}, 2) == pytest.approx(1 / 2)  # 1 hit over min(2, 3)
    assert recall_at(ranked, {"a", "c", "z"}, 5) == pytest.approx(2 / 3)
    assert recall_at(ranked, {"e"}, 5) == 1.0
    assert recall_at(ranked, {"e"}, 4) == 0.0
    assert recall_at(ranked, set(), 5) == 0.0
    assert recall_at(ranked, {"a", "b", "c", "d", "e", "f", "g"}, 5) == 1.0


def test_ndcg_multi_at():
    ranked = ["a", "b", "c", "d", "e"]
    # Relevant at ranks 1 and 3, two relevant items: DCG = 1 + 1/2, ideal = 1 + 1/log2(3).
    assert ndcg_multi_at(ranked, {"a", "c"}, 5) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert ndcg_multi_at(ranked, {"a", "b"}, 5) == pytest.approx(1.0)
    assert ndcg_multi_at(ranked, {"c"}, 5) == pytest.approx(0.5)
    assert ndcg_multi_at(ranked, {"c"}, 2) == 0.0
    # More relevant items than k: the ideal fills all k positions.
    ideal3 = 1 + 1 / math.log2(3) + 0.5
    assert ndcg_multi_at(ranked, {"b", "x", "y", "z"}, 3) == pytest.approx((1 / math.log2(3)) / ideal3)
    assert ndcg_multi_at(ranked, set(), 5) == 0.0
    # Equals the single-target NDCG when one item is relevant.
    for target in ranked:
        assert ndcg_multi_at(ranked, {target}, 4) == pytest.approx(ndcg_at(ranked, target, 4))
