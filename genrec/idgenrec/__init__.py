"""IDGenRec: textual item IDs made by a T5 ID generator, a T5 recommender decoding them over a
prefix trie (docs/methods.md, "IDGenRec")."""
