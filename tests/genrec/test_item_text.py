"""Item text: metadata flattened into one line, and that line read back into its fields (the
bundle keeps only the text of its items, and request filters match on their fields)."""

from genrec.item_text import field_label, flatten_item_text, flatten_metadata, item_text_fields


def test_item_text_fields_invert_flatten_item_text():
    metadata = {"release_year": "1995", "movie_title": "Toy Story", "class": "Animation Children's Comedy",
                "release_date": "01-Jan-1995"}
    text = flatten_item_text(metadata)
    assert text == "title: Toy Story; year: 1995; genres: Animation Children's Comedy; release date: 01-Jan-1995"
    assert item_text_fields(text) == {field_label(k): v for k, v in metadata.items()}


def test_item_text_fields_keep_semicolons_inside_values():
    text = flatten_item_text({"title": "Alpha; Beta", "notes": "a:b; c", "genres": "Drama"})
    assert item_text_fields(text) == {"title": "Alpha; Beta", "notes": "a:b; c", "genres": "Drama"}
    assert item_text_fields("") == {}
    assert item_text_fields("no fields at all") == {}


def test_flatten_metadata_values_as_strings():
    assert flatten_metadata({"genres": ["Animation", "Comedy"], "year": 1995.0, "rating": 4.5, "n": 3}) == {
        "genres": "Animation Comedy", "year": "1995", "rating": "4.5", "n": "3"}
