"""The popularity order and the recommender of last resort built on a bundle's popularity list."""

from genrec.method import Query, Recommendation
from genrec.popular import PopularItems, popularity_ranking, top_unseen


def test_ranking_is_by_count_then_item_id():
    assert popularity_ranking({"b": 2, "c": 5, "a": 2, "d": 1}) == ["c", "a", "b", "d"]


def test_top_unseen_skips_what_was_seen_and_stops_at_k():
    assert top_unseen(["a", "b", "c", "d"], {"b"}, 2) == ["a", "c"]
    assert top_unseen(["a", "b"], {"a", "b"}, 3) == []


def test_popular_items_score_by_interaction_share_minus_exclusions():
    popular = PopularItems([("x", 6), ("y", 3), ("z", 1)])
    assert popular.recommend(Query(history=()), 2) == [Recommendation("x", 0.6), Recommendation("y", 0.3)]
    assert popular.recommend(Query(history=(), exclude=("x",)), 5) == [Recommendation("y", 0.3),
                                                                        Recommendation("z", 0.1)]
    assert PopularItems([]).recommend(Query(history=()), 3) == []
