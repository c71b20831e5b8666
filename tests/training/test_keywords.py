"""training/keywords.py: warm-up targets of the ID generator."""

from training.keywords import STOP_WORDS, keyword_targets


def test_title_words_first():
    catalog = [
        {"title": "Toy Story", "genres": "Animation Children Comedy", "year": "1995"},
        {"title": "Heat", "genres": "Action Crime Thriller", "year": "1995"},
        {"movie_title": "Casino", "class": "Drama Crime", "release_year": "1995"},
    ]
    targets = keyword_targets(catalog, keyword_count=4)
    assert targets[0].split(" ")[:2] == ["toy", "story"]
    assert targets[1].split(" ")[0] == "heat"
    assert targets[2].split(" ")[0] == "casino"  # movie_title is a title field too
    for target in targets:
        words = target.split(" ")
        assert len(words) == 4
        assert len(set(words)) == len(words), "no repeated word"
    # "1995" is in every item: not distinctive at all, so it comes last, only to fill the count.
    assert "1995" not in targets[0].split(" ") and "1995" not in targets[1].split(" ")
    assert targets[2] == "casino drama crime 1995"  # drama is rarer than crime


def test_stop_words_removed():
    catalog = [
        {"title": "The Lord of the Rings", "description": "a tale of the ring and the fellowship"},
        {"title": "The Return of the King", "description": "the king is in the city"},
    ]
    targets = keyword_targets(catalog, keyword_count=5)
    assert targets[0].startswith("lord rings")
    assert targets[1].startswith("return king")
    for target in targets:
        assert not set(target.split(" ")) & STOP_WORDS


def test_distinctive_words_preferred():
    catalog = [
        {"title": f"item{i}", "category": "common gadget", "tags": tag}
        for i, tag in enumerate(["rare", "unusual", "quirky", "odd", "strange", "weird"])
    ]
    targets = keyword_targets(catalog, keyword_count=2)
    for target, item in zip(targets, catalog, strict=True):
        assert target == f"{item['title']} {item['tags']}"
    # Word frequency within the item counts too (TF-IDF): the repeated word wins.
    catalog = [
        {"title": "alpha", "description": "shared beta beta beta gamma"},
        {"title": "delta", "description": "shared epsilon"},
        {"title": "zeta", "description": "shared eta"},
    ]
    assert keyword_targets(catalog, keyword_count=2)[0] == "alpha beta"
    assert keyword_targets(catalog, keyword_count=3)[0] == "alpha beta gamma"


def test_keyword_count_respected():
    catalog = [
        {"title": "one two three four five six", "genres": "seven eight"},
        {"title": "short", "genres": "x1 x2 x3 x4 x5"},
    ]
    for count in (1, 2, 3, 5):
        targets = keyword_targets(catalog, keyword_count=count)
        assert all(1 <= len(t.split(" ")) <= count for t in targets)
        assert targets[0] == " ".join("one two three four five six".split(" ")[:count])
        assert targets[1].split(" ")[0] == "short"
    # Fewer words than asked for: all of them.
    assert keyword_targets([{"title": "solo"}], keyword_count=4) == ["solo"]


def test_empty_metadata_gets_a_non_empty_target():
    targets = keyword_targets(
        [{"title": "", "genres": ""}, {"title": "the of and"}, {"title": "Real Title"}], 3
    )
    assert all(targets)
    assert targets[2] == "real title"


def test_words_with_combining_marks_stay_whole():
    """Hindi words keep their vowel signs and viramas (Python's \\w split `हिन्दी` into ह न द)."""
    catalog = [{"title": "हिन्दी फ़िल्म", "genres": "नाटक संगीत"}, {"title": "तमिल फ़िल्म", "genres": "नाटक"}]
    assert keyword_targets(catalog, keyword_count=3) == ["हिन्दी फ़िल्म संगीत", "तमिल फ़िल्म नाटक"]
