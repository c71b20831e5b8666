"""Tests of genrec/trie.py: CSR tables vs a hand-built dict trie, overlay, dead nodes, key encoding."""

import random

import pytest
import torch

from genrec.trie import TextualIdTrie, build_tables, decode_key, encode_key

EOS = 1


def random_sequences(rng: random.Random, count: int, vocab: range, max_len: int = 4) -> list[tuple[int, ...]]:
    """`count` distinct keys (tokens + EOS), some of them prefixes of others."""
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < count:
        if out and rng.random() < 0.3:
            # A prefix of an existing ID, or an existing ID extended by a token.
            body = out[rng.randrange(len(out))][:-1]
            body = body[: rng.randint(1, len(body))] if rng.random() < 0.5 else body + (rng.choice(vocab),)
        else:
            body = tuple(rng.choice(vocab) for _ in range(rng.randint(1, max_len)))
        key = body + (EOS,)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def dict_trie(sequences):
    """Reference trie: nested dicts token -> subtree; the EOS edge leads to {'item': index}."""
    root: dict = {}
    for index, seq in enumerate(sequences):
        node = root
        for token in seq[:-1]:
            node = node.setdefault(token, {})
        node[seq[-1]] = {"item": index}
    return root


def assert_tables_match(tables, reference, node=0, prefix=()):
    tokens, children = tables.allowed(node)
    expected = sorted(k for k in reference if k != "item")
    assert tokens == expected, f"children of prefix {prefix}"
    assert tokens == sorted(tokens)
    if "item" in reference:
        assert int(tables.leaf_item[node]) == reference["item"], f"leaf at {prefix}"
        assert int(tables.item_leaf[reference["item"]]) == node
    else:
        assert int(tables.leaf_item[node]) == -1, f"inner node at {prefix}"
    leaves = 1 if "item" in reference else 0
    for token, child in zip(tokens, children, strict=True):
        assert int(tables.parent[child]) == node
        leaves += assert_tables_match(tables, reference[token], child, prefix + (token,))
    assert int(tables.leaf_count[node]) == leaves, f"leaf count at {prefix}"
    return leaves


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tables_match_dict_trie(seed):
    rng = random.Random(seed)
    sequences = random_sequences(rng, 60, range(3, 15))
    assert any(a != b and b[: len(a) - 1] == a[:-1] for a in sequences for b in sequences), (
        "fixture should contain IDs that are prefixes of others"
    )
    trie = TextualIdTrie([f"i{n}" for n in range(len(sequences))], sequences, EOS)
    tables = trie.tables()
    leaves = assert_tables_match(tables, dict_trie(sequences))
    assert leaves == len(sequences)
    assert tables.max_depth == max(len(s) for s in sequences)
    assert int(tables.parent[0]) == -1
    # Every node except the root is reached exactly once.
    assert sorted(tables.children.tolist()) == list(range(1, tables.num_nodes))
    # allowed_tokens (the reference decoder's walk) agrees with the dict trie at every prefix.
    reference = dict_trie(sequences)
    for seq in sequences:
        node = reference
        for depth in range(len(seq)):
            assert trie.allowed_tokens(seq[:depth]) == sorted(k for k in node if k != "item")
            node = node[seq[depth]]
    assert trie.allowed_tokens((99,)) == []


def test_build_tables_maps_leaves_to_given_item_indices():
    tables = build_tables([(5, EOS), (5, 6, EOS)], [7, 3])
    leaf_of = {int(tables.leaf_item[n]): n for n in range(tables.num_nodes) if int(tables.leaf_item[n]) >= 0}
    assert set(leaf_of) == {7, 3}
    assert int(tables.item_leaf[7]) == leaf_of[7]
    assert int(tables.item_leaf[3]) == leaf_of[3]
    assert int(tables.item_leaf[0]) == -1  # indices not given have no leaf


def test_ids_that_are_prefixes_of_other_ids():
    sequences = [(5, EOS), (5, 6, EOS), (5, 6, 7, EOS), (8, EOS)]
    trie = TextualIdTrie(["a", "b", "c", "d"], sequences, EOS)
    assert trie.allowed_tokens(()) == [5, 8]
    assert trie.allowed_tokens((5,)) == [EOS, 6]
    assert trie.allowed_tokens((5, 6)) == [EOS, 7]
    assert trie.allowed_tokens((5, 6, 7)) == [EOS]
    assert trie.allowed_tokens((5, 6, 7, EOS)) == []
    for index, seq in enumerate(sequences):
        assert trie.find(seq) == index


def test_find():
    trie = TextualIdTrie(["a", "b"], [(5, 6, EOS), (7, EOS)], EOS)
    assert trie.find((5, 6, EOS)) == 0
    assert trie.find([7, EOS]) == 1
    assert trie.find((5, 6)) is None  # a prefix without EOS is not an item
    assert trie.find((5, EOS)) is None
    assert trie.find(()) is None
    assert trie.index_of("b") == 1
    assert trie.index_of("zzz") is None


def test_overlay_add():
    trie = TextualIdTrie(["a", "b"], [(5, 6, EOS), (7, EOS)], EOS)
    before = trie.tables()
    index = trie.add("c", [5, 9, EOS])
    assert index == 2
    assert len(trie) == 3 and trie.overlay_size == 1
    # Idempotent for the same key and sequence.
    assert trie.add("c", (5, 9, EOS)) == 2
    assert len(trie) == 3 and trie.overlay_size == 1
    # The same key with another sequence, or another key with a taken sequence, is refused.
    with pytest.raises(ValueError):
        trie.add("c", (7, 9, EOS))
    with pytest.raises(ValueError):
        trie.add("d", (5, 6, EOS))  # taken by base item "a"
    with pytest.raises(ValueError):
        trie.add("d", (5, 9, EOS))  # taken by overlay item "c"
    with pytest.raises(ValueError):
        trie.add("d", (5, 9))  # no EOS
    assert len(trie) == 3
    # Visible to lookups and in fresh decoding tables.
    assert trie.find((5, 9, EOS)) == 2
    assert trie.index_of("c") == 2
    assert trie.sequence(2) == (5, 9, EOS)
    tables = trie.tables()
    assert tables is not before
    assert before.num_nodes < tables.num_nodes  # the old snapshot is untouched
    assert trie.allowed_tokens((5,)) == [6, 9]
    leaf = int(tables.item_leaf[2])
    assert leaf > 0 and int(tables.leaf_item[leaf]) == 2
    # An overlay item that is a prefix of a base item.
    trie.add("e", (7, 8, EOS))
    assert trie.allowed_tokens((7,)) == [EOS, 8]
    assert_tables_match(trie.tables(), dict_trie([trie.sequence(i) for i in range(len(trie))]))


def test_duplicate_sequences_and_keys_refused():
    with pytest.raises(ValueError):
        TextualIdTrie(["a", "b"], [(5, EOS), (5, EOS)], EOS)
    with pytest.raises(ValueError):
        TextualIdTrie(["a", "a"], [(5, EOS), (6, EOS)], EOS)
    with pytest.raises(ValueError):
        TextualIdTrie(["a"], [(5, EOS), (6, EOS)], EOS)
    for bad in [(EOS,), (5,), (5, EOS, 6, EOS), ()]:
        with pytest.raises(ValueError):
            TextualIdTrie(["a"], [bad], EOS)


def _node_of(trie, prefix):
    tables = trie.tables()
    node = 0
    for token in prefix:
        tokens, children = tables.allowed(node)
        node = children[tokens.index(token)]
    return node


def test_dead_nodes():
    sequences = [(5, 6, EOS), (5, 7, EOS), (5, EOS), (8, 9, EOS)]
    trie = TextualIdTrie(["a", "b", "c", "d"], sequences, EOS)
    tables = trie.tables()
    n = {
        p: _node_of(trie, p) for p in [(5,), (5, 6), (5, 6, EOS), (5, 7), (5, 7, EOS), (5, EOS), (8,), (8, 9)]
    }
    # Excluding some items under (5,) prunes only their own branches.
    assert set(tables.dead_nodes([0])) == {n[(5, 6)], n[(5, 6, EOS)]}
    assert set(tables.dead_nodes([0, 1])) == {n[(5, 6)], n[(5, 6, EOS)], n[(5, 7)], n[(5, 7, EOS)]}
    # Excluding every item under (5,) prunes (5,) itself.
    assert n[(5,)] in set(tables.dead_nodes([0, 1, 2]))
    assert set(tables.dead_nodes([3])) == {n[(8,)], n[(8, 9)], _node_of(trie, (8, 9, EOS))}
    assert 0 not in tables.dead_nodes([0, 1, 2, 3])  # the root is never returned
    assert tables.dead_nodes([]) == []
    assert tables.dead_nodes([-1, 99]) == []  # unknown indices are ignored
    assert set(tables.dead_nodes([0, 0, 0])) == set(tables.dead_nodes([0]))  # duplicates count once


def test_dead_nodes_long_exclusion_list_matches_short_path():
    rng = random.Random(3)
    sequences = random_sequences(rng, 50, range(3, 9))
    tables = TextualIdTrie([str(i) for i in range(50)], sequences, EOS).tables()
    reference = dict_trie(sequences)

    def items_below(node_dict):
        found = {node_dict["item"]} if "item" in node_dict else set()
        for key, child in node_dict.items():
            if key != "item":
                found |= items_below(child)
        return found

    for trial in range(5):
        excluded = set(rng.sample(range(50), 5 + 8 * trial))  # both code paths (<= 8 and > 8)
        dead = set(tables.dead_nodes(sorted(excluded)))
        # Walk the reference: a node is dead iff all items below it are excluded.
        expected = set()
        stack = [(reference, 0)]
        while stack:
            node_dict, node = stack.pop()
            for token, child in zip(*tables.allowed(node), strict=True):
                if items_below(node_dict[token]) <= excluded:
                    expected.add(child)
                stack.append((node_dict[token], child))
        assert dead == expected


def test_expand():
    trie = TextualIdTrie(["a", "b", "c"], [(5, 6, EOS), (5, 7, EOS), (8, EOS)], EOS)
    tables = trie.tables()
    n5 = _node_of(trie, (5,))
    nodes = torch.tensor([0, -1, n5, _node_of(trie, (5, 6, EOS))])
    rows, tokens, children = tables.expand(nodes)
    got = sorted(zip(rows.tolist(), tokens.tolist(), children.tolist(), strict=True))
    expected = sorted(
        [(0, t, c) for t, c in zip(*tables.allowed(0), strict=True)]
        + [(2, t, c) for t, c in zip(*tables.allowed(n5), strict=True)]
    )
    assert got == expected
    rows, tokens, children = tables.expand(torch.tensor([-1, -1]))
    assert rows.numel() == tokens.numel() == children.numel() == 0


def test_key_round_trip_including_surrogate_range():
    tokens = [
        0,
        1,
        2,
        0xD7FF,
        0xD800,
        0xDBFF,
        0xDC00,
        0xDFFF,
        0xE000,
        0xE7FF,
        0xE800,
        0xFFFF,
        0x10000,
        250_000,
    ]
    key = encode_key(tokens)
    assert len(key) == len(tokens)
    assert decode_key(key) == tokens
    key.encode("utf-8")  # no lone surrogates
    assert len({encode_key([t]) for t in tokens}) == len(tokens)  # injective
    # The marisa base stores and finds such keys.
    sequences = [(0xD800, EOS), (0xD7FF, 0xE000, EOS), (0xDFFF, 250_000, EOS), (0xE800, EOS)]
    trie = TextualIdTrie(["a", "b", "c", "d"], sequences, EOS)
    for index, seq in enumerate(sequences):
        assert trie.find(seq) == index
    assert trie.allowed_tokens(()) == sorted([0xD800, 0xD7FF, 0xDFFF, 0xE800])
    assert trie.allowed_tokens((0xDFFF,)) == [250_000]
    rng = random.Random(0)
    for _ in range(200):
        seq = [rng.randrange(0, 0x10F7FF) for _ in range(rng.randint(0, 5))]
        assert decode_key(encode_key(seq)) == seq


def _paths(tables, node=0, prefix=()):
    """Every node path of the tables: prefix -> (sorted tokens, leaf item)."""
    tokens, children = tables.allowed(node)
    found = {prefix: (tokens, int(tables.items_at(torch.tensor([node]))[0]))}
    for token, child in zip(tokens, children, strict=True):
        found.update(_paths(tables, child, prefix + (token,)))
    return found


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_incremental_overlay_equals_full_rebuild(seed):
    """Adding items one by one (overlay edges merged at expand time) gives the same allowed
    tokens and leaves at every node path as tables built from scratch over all items."""
    rng = random.Random(seed)
    sequences = random_sequences(rng, 80, range(3, 12))
    base, added = sequences[:50], sequences[50:]
    trie = TextualIdTrie([str(i) for i in range(50)], base, EOS)
    base_tables = trie.tables()
    for i, seq in enumerate(added):
        trie.add(f"new{i}", seq)
        if i % 7 == 0:  # snapshots in between stay consistent too
            partial = build_tables(sequences[: 51 + i], range(51 + i))
            assert _paths(trie.tables(), 0) == _paths(partial, 0)
    assert trie.base_tables() is base_tables  # the base was never rebuilt
    full = build_tables(sequences, range(len(sequences)))
    tables = trie.tables()
    assert _paths(tables) == _paths(full)
    assert_tables_match(tables, dict_trie(sequences))
    # expand over every node agrees with allowed(), for base and overlay nodes alike.
    nodes = torch.arange(-1, tables.num_nodes)
    rows, tokens, children = tables.expand(nodes)
    assert torch.equal(rows, torch.sort(rows).values)
    got: dict[int, list] = {}
    for r, t, c in zip(rows.tolist(), tokens.tolist(), children.tolist(), strict=True):
        got.setdefault(int(nodes[r]), []).append((t, c))
    for node in range(tables.num_nodes):
        assert sorted(got.get(node, [])) == sorted(zip(*tables.allowed(node), strict=True))
    # The padded form holds the same edges.
    tokens, children, valid = tables.expand_padded(nodes)
    for row, node in enumerate(nodes.tolist()):
        pairs = sorted(zip(tokens[row][valid[row]].tolist(), children[row][valid[row]].tolist(), strict=True))
        assert pairs == (sorted(zip(*tables.allowed(node), strict=True)) if node >= 0 else [])
    # Root (dense first level) and dead nodes see the overlay as well.
    assert tables.root_tokens.tolist() == tables.allowed(0)[0]
    excluded = rng.sample(range(len(sequences)), 30)
    assert sorted(tables.dead_nodes(excluded)) == sorted(
        _node_path_map(tables)[p] for p in _node_path_map(full) if _node_path_map(full)[p] in full.dead_nodes(excluded)
    )


def _node_path_map(tables, node=0, prefix=()):
    found = {prefix: node}
    for token, child in zip(*tables.allowed(node), strict=True):
        found.update(_node_path_map(tables, child, prefix + (token,)))
    return found


def test_vectorised_build_on_a_larger_catalog():
    rng = random.Random(7)
    sequences = random_sequences(rng, 2000, range(3, 40), max_len=6)
    tables = build_tables(sequences, range(len(sequences)))
    assert_tables_match(tables, dict_trie(sequences))
    assert tables.root_tokens.tolist() == tables.allowed(0)[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dead_node_keys_of_many_requests_match_each_request_alone(seed):
    """The batched pruning (all requests' exclusions in one pass, overlay items included) gives
    every request exactly the dead nodes of a prefix-by-prefix reference."""
    rng = random.Random(seed)
    sequences = random_sequences(rng, 60, range(3, 9))
    base, extra = sequences[:45], sequences[45:]
    trie = TextualIdTrie([str(i) for i in range(45)], base, EOS)
    for offset, seq in enumerate(extra):
        trie.add(str(45 + offset), seq)  # minted items live in the overlay
    tables = trie.tables()
    exclusions = [rng.sample(range(60), rng.randint(0, 40)) for _ in range(6)] + [[]]

    def reference(excluded):
        dead = set()
        for seq in sequences:
            for cut in range(1, len(seq) + 1):
                prefix = seq[:cut]
                under = [i for i, s in enumerate(sequences) if s[:cut] == prefix]
                if set(under) <= set(excluded):
                    dead.add(_node_of(trie, prefix))
        return dead

    keys = tables.dead_node_keys(exclusions)
    assert list(keys) == sorted(keys)
    for request, excluded in enumerate(exclusions):
        mine = {int(k) % tables.num_nodes for k in keys if k // tables.num_nodes == request}
        assert mine == reference(excluded) == set(tables.dead_nodes(excluded))


def _trie_with_overlay(rng: random.Random) -> tuple[TextualIdTrie, list[tuple[int, ...]]]:
    """60 random IDs: 45 in the marisa base, 15 added later (the overlay, as minted items are)."""
    sequences = random_sequences(rng, 60, range(3, 9))
    trie = TextualIdTrie([str(i) for i in range(45)], sequences[:45], EOS)
    for offset, seq in enumerate(sequences[45:]):
        trie.add(str(45 + offset), seq)
    return trie, sequences


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_live_node_keys_are_the_nodes_on_the_allowed_items_paths(seed):
    """A request limited to some items may enter exactly the nodes on their paths (overlay items
    included): every prefix of an allowed ID, and no other; the same per request in a batch."""
    rng = random.Random(seed)
    trie, sequences = _trie_with_overlay(rng)
    tables = trie.tables()
    allowed = [rng.sample(range(60), rng.randint(1, 20)) for _ in range(5)] + [[], [59, -1, 99]]

    def reference(items):
        return {_node_of(trie, sequences[i][:cut]) for i in items if 0 <= i < 60
                for cut in range(1, len(sequences[i]) + 1)}

    keys = tables.live_node_keys(allowed)
    assert list(keys) == sorted(set(keys.tolist()))
    for request, items in enumerate(allowed):
        mine = {int(k) % tables.num_nodes for k in keys if k // tables.num_nodes == request}
        assert mine == reference(items)
        assert 0 not in mine


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_live_nodes_are_those_not_dead_for_the_other_items(seed):
    """What the beam search relies on to prune a broad allowed set by its complement: the nodes on
    the allowed items' paths are exactly the nodes (the root aside) that are not dead when every
    other item is excluded, overlay items included."""
    rng = random.Random(seed)
    trie, sequences = _trie_with_overlay(rng)
    tables = trie.tables()
    assert tables.num_items == 60
    for items in [rng.sample(range(60), rng.randint(31, 59)) for _ in range(6)] + [list(range(60)), [7]]:
        live = set(tables.live_node_keys([items]).tolist())
        dead = set(tables.dead_node_keys([[i for i in range(60) if i not in items]]).tolist())
        assert live == set(range(1, tables.num_nodes)) - dead
