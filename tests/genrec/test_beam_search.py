"""Constrained beam search (fast path) vs brute force and vs `generate` (reference path),
on a tiny random T5 and a random trie; and the recommender wrapper around it."""

import random

import numpy as np
import pytest
import torch

from genrec.beam_search import constrained_beam_search, reference_generate_topk
from genrec.errors import UnknownItemError
from genrec.idgenrec.prompts import prompt_corpus
from genrec.idgenrec.recommender import IdGenRecRecommender
from genrec.modeling import ModelConfig, build_t5
from genrec.tensors import pad_batch
from genrec.trie import TextualIdTrie
from training.tokenizer_training import train_tokenizer

TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
SENTENCES = [
    f"the {adj} {noun} of item number {i} is a nice thing to buy"
    for i, (adj, noun) in enumerate(
        [
            (a, n)
            for a in ("red", "blue", "green", "small", "large", "cheap")
            for n in ("shoe", "lamp", "book", "cup", "bag")
        ]
    )
]
NUM_IDS = 40


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES + prompt_corpus(), vocab_size=60)


@pytest.fixture(scope="module", params=["random", "trained"])
def model(request, tokenizer, sequences, prompts):
    """A random T5 (sharpened, so that items' scores spread out), and one trained for a few
    steps to emit some of the IDs: its EOS is cheap after real IDs, so beams finish at
    different steps with close scores, the regime where beam search's stopping rule matters."""
    model = build_t5(TINY, tokenizer, seed=0)
    if request.param == "random":
        with torch.no_grad():
            model.shared.weight.mul_(4.0)
        return model.eval()
    rng = random.Random(2)
    pairs = [(p, list(sequences[i])) for p in prompts for i in rng.sample(range(len(sequences)), 3)]
    width = max(len(t) for _, t in pairs)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    for row, (_, target) in enumerate(pairs):
        labels[row, : len(target)] = torch.tensor(target)
    input_ids, mask = pad_batch([p for p, _ in pairs], tokenizer.pad_token_id)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def make_sequences(vocab: int, eos: int, seed: int = 0) -> list[tuple[int, ...]]:
    """~NUM_IDS distinct keys over tokens 3..vocab-1: some are prefixes of others, and the first
    few start with a token no other ID uses (excluding one of them leaves a dead-end prefix)."""
    rng = random.Random(seed)
    unique_firsts = [vocab - 1, vocab - 2, vocab - 3]
    common = list(range(3, 12))
    seqs: list[tuple[int, ...]] = [
        (unique_firsts[0], 5, 6, eos),
        (unique_firsts[1], 7, eos),
        (unique_firsts[2], eos),
    ]
    seen = set(seqs)
    while len(seqs) < NUM_IDS:
        if rng.random() < 0.3 and len(seqs) > 3:
            body = seqs[rng.randrange(3, len(seqs))][:-1]
            body = body[:-1] if len(body) > 1 and rng.random() < 0.5 else body + (rng.choice(common),)
        else:
            body = tuple(rng.choice(common) for _ in range(rng.randint(1, 4)))
        key = body + (eos,)
        if key not in seen:
            seen.add(key)
            seqs.append(key)
    return seqs


@pytest.fixture(scope="module")
def sequences(tokenizer):
    return make_sequences(len(tokenizer), tokenizer.eos_token_id)


def make_trie(sequences, eos):
    return TextualIdTrie([f"item{i}" for i in range(len(sequences))], sequences, eos)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    rng = random.Random(1)
    eos = tokenizer.eos_token_id
    return [[rng.randrange(3, len(tokenizer)) for _ in range(rng.randint(4, 12))] + [eos] for _ in range(4)]


@torch.no_grad()
def brute_force(model, prompt, trie, exclude=()):
    """Every valid item's teacher-forced log-probability (tokens + EOS), best first."""
    items = [i for i in range(len(trie)) if i not in set(exclude)]
    labels_list = [list(trie.sequence(i)) for i in items]
    width = max(len(x) for x in labels_list)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, seq in enumerate(labels_list):
        labels[row, : len(seq)] = torch.tensor(seq)
    input_ids = torch.tensor([prompt] * len(items))
    logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels).logits
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    gathered = log_probs.gather(2, labels.clamp(min=0)[:, :, None]).squeeze(2)
    scores = (gathered * (labels != -100)).sum(dim=1).tolist()
    return sorted(zip(items, scores, strict=True), key=lambda pair: -pair[1])


def assert_same_ranking(got, expected, tol=1e-4):
    """Same items in the same order (items whose scores tie within `tol` may swap), same scores."""
    got = [(s.item_index, s.score) if hasattr(s, "item_index") else s for s in got]
    expected = [(s.item_index, s.score) if hasattr(s, "item_index") else s for s in expected]
    assert len(got) == len(expected), (got, expected)
    for (g_item, g_score), (e_item, e_score) in zip(got, expected, strict=True):
        assert abs(g_score - e_score) < tol, (got, expected)
        if g_item != e_item:
            e_scores = dict(expected)
            assert g_item in e_scores and abs(e_scores[g_item] - g_score) < tol, (got, expected)


def test_scores_spread(model, sequences, prompts, tokenizer):
    """Guard for the fixtures: the ranking is not a pile of ties."""
    trie = make_trie(sequences, tokenizer.eos_token_id)
    scores = [s for _, s in brute_force(model, prompts[0], trie)]
    gaps = [a - b for a, b in zip(scores, scores[1:], strict=False)]
    assert sum(g > 1e-3 for g in gaps) > len(gaps) // 2


def test_full_beam_equals_brute_force(model, sequences, prompts, tokenizer):
    trie = make_trie(sequences, tokenizer.eos_token_id)
    n = len(trie)
    for k in (n, 7):
        results = constrained_beam_search(model, prompts, trie.tables(), num_beams=n, k=k)
        for prompt, got in zip(prompts, results, strict=True):
            assert_same_ranking(got, brute_force(model, prompt, trie)[:k])
    # More beams than IDs changes nothing.
    wide = constrained_beam_search(model, prompts[:1], trie.tables(), num_beams=n + 13, k=n)
    assert_same_ranking(wide[0], brute_force(model, prompts[0], trie))


def test_full_beam_with_exclusions_equals_brute_force(model, sequences, prompts, tokenizer):
    trie = make_trie(sequences, tokenizer.eos_token_id)
    n = len(trie)
    full = brute_force(model, prompts[0], trie)
    top = [item for item, _ in full[:5]]
    exclude = [top, [0, 1, 2], [], list(range(3, n))]  # the last keeps only the IDs 0, 1, 2
    results = constrained_beam_search(model, prompts, trie.tables(), num_beams=n, k=n, exclude=exclude)
    for prompt, banned, got in zip(prompts, exclude, results, strict=True):
        assert not set(s.item_index for s in got) & set(banned)
        assert_same_ranking(got, brute_force(model, prompt, trie, banned))
    assert sorted(s.item_index for s in results[3]) == [0, 1, 2]


CASES = [(5, 5), (10, 10), (10, 3), (4, 1), (12, 12)]


@pytest.mark.parametrize(("num_beams", "k"), CASES)
def test_fast_path_equals_generate(model, sequences, prompts, tokenizer, num_beams, k):
    eos = tokenizer.eos_token_id
    trie = make_trie(sequences, eos)
    fast = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k)
    ref = reference_generate_topk(model, prompts, trie, num_beams=num_beams, k=k)
    for got, expected in zip(fast, ref, strict=True):
        assert len(got) == k
        assert_same_ranking(got, expected)


def _dead_end_exclusions(model, prompt, trie):
    """Items whose exclusion matters: the best item with a first token of its own (its exclusion
    leaves a prefix with nothing valid below it) plus the overall best items."""
    ranking = brute_force(model, prompt, trie)
    firsts: dict[int, int] = {}
    for i in range(len(trie)):
        firsts[trie.sequence(i)[0]] = firsts.get(trie.sequence(i)[0], 0) + 1
    lonely = [item for item, _ in ranking if firsts[trie.sequence(item)[0]] == 1]
    return lonely[:1] + [item for item, _ in ranking[:3] if item not in lonely[:1]]


@pytest.mark.parametrize(("num_beams", "k"), CASES)
def test_fast_path_equals_generate_with_exclusions(model, sequences, prompts, tokenizer, num_beams, k):
    eos = tokenizer.eos_token_id
    trie = make_trie(sequences, eos)
    exclude = [
        _dead_end_exclusions(model, prompts[0], trie),
        [0, 1, 2],  # every ID with a first token of its own: three dead-end prefixes
        [],
        _dead_end_exclusions(model, prompts[3], trie)[:1],
    ]
    fast = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k, exclude=exclude)
    ref = reference_generate_topk(model, prompts, trie, num_beams=num_beams, k=k, exclude=exclude)
    for banned, got, expected in zip(exclude, fast, ref, strict=True):
        assert len(got) == k
        assert not {s.item_index for s in got} & set(banned)
        assert_same_ranking(got, expected)


@pytest.mark.parametrize(("num_beams", "k"), [(5, 5), (10, 10)])
def test_k_larger_than_number_of_valid_items(model, tokenizer, prompts, num_beams, k):
    eos = tokenizer.eos_token_id
    small = [(5, eos), (5, 6, eos), (7, 8, eos), (9, eos)]
    trie = make_trie(small, eos)
    exclude = [[], [1], [0, 1, 3], [0, 1, 2, 3]]
    fast = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k, exclude=exclude)
    ref = reference_generate_topk(model, prompts, trie, num_beams=num_beams, k=k, exclude=exclude)
    for prompt, banned, got, expected in zip(prompts, exclude, fast, ref, strict=True):
        assert_same_ranking(got, brute_force(model, prompt, trie, banned) if len(banned) < 4 else [])
        assert_same_ranking(got, expected)
    assert [len(r) for r in fast] == [4, 3, 1, 0]


def test_num_beams_below_k_refused(model, sequences, prompts, tokenizer):
    trie = make_trie(sequences, tokenizer.eos_token_id)
    with pytest.raises(ValueError):
        constrained_beam_search(model, prompts, trie.tables(), num_beams=3, k=5)
    assert constrained_beam_search(model, [], trie.tables(), num_beams=3, k=3) == []


@pytest.mark.parametrize(("num_beams", "k"), [(5, 5), (10, 4)])
def test_batched_equals_one_at_a_time(model, sequences, prompts, tokenizer, num_beams, k):
    trie = make_trie(sequences, tokenizer.eos_token_id)
    exclude = [[0], [], [3, 4, 5], [1, 2]]
    batched = constrained_beam_search(
        model, prompts, trie.tables(), num_beams=num_beams, k=k, exclude=exclude
    )
    for prompt, banned, got in zip(prompts, exclude, batched, strict=True):
        single = constrained_beam_search(
            model, [prompt], trie.tables(), num_beams=num_beams, k=k, exclude=[banned]
        )
        assert [s.item_index for s in got] == [s.item_index for s in single[0]]
        # Same order exactly; scores within 1e-4: a padded batch sums in another order, and at
        # scores near -63 float32's step is 7.6e-6 (seen 1.1e-5 apart on this machine).
        assert_same_ranking(got, single[0])


def test_overlay_items_are_returned(model, sequences, prompts, tokenizer):
    eos = tokenizer.eos_token_id
    trie = make_trie(sequences, eos)
    vocab = len(tokenizer)
    # New IDs: one under an existing prefix, one on a new first token, one extending an ID.
    added = [(sequences[3][0], vocab - 4, eos), (vocab - 5, 4, eos), sequences[5][:-1] + (vocab - 6, eos)]
    new = [trie.add(f"new{i}", seq) for i, seq in enumerate(added)]
    n = len(trie)
    results = constrained_beam_search(model, prompts, trie.tables(), num_beams=n, k=n)
    for prompt, got in zip(prompts, results, strict=True):
        assert set(new) <= {s.item_index for s in got}
        assert_same_ranking(got, brute_force(model, prompt, trie))
    # The model's favourite item, moved to the overlay, comes out first; fast == reference.
    best = brute_force(model, prompts[0], trie)[0][0]
    fresh = make_trie([trie.sequence(i) for i in range(n) if i != best], eos)
    index = fresh.add("favourite", trie.sequence(best))
    top = constrained_beam_search(model, prompts[:1], fresh.tables(), num_beams=n, k=1)
    assert top[0][0].item_index == index
    fast = constrained_beam_search(model, prompts, fresh.tables(), num_beams=5, k=5)
    ref = reference_generate_topk(model, prompts, fresh, num_beams=5, k=5)
    for got, expected in zip(fast, ref, strict=True):
        assert_same_ranking(got, expected)


# --------------------------------------------------------------------------- recommender


@pytest.fixture(scope="module")
def recommender(model, tokenizer, sequences):
    trie = make_trie(sequences, tokenizer.eos_token_id)
    return IdGenRecRecommender(model, tokenizer, trie, max_history=5)


def test_unknown_items_raise(recommender):
    with pytest.raises(UnknownItemError) as info:
        recommender.recommend([["item1", "nope", "item2", "also-nope", "nope"]], k=3)
    assert info.value.item_ids == ["nope", "also-nope"]
    assert "nope" in str(info.value) and "also-nope" in str(info.value)
    with pytest.raises(UnknownItemError):
        recommender.recommend([["item1"], ["ghost"]], k=3)


def test_exclude_history(recommender):
    n = len(recommender.trie)
    histories = [["item0", "item5", "item9"], ["item12"], ["item3", "item3"]]
    full = recommender.recommend(histories, k=n, exclude_history=False)
    excluded = recommender.recommend(histories, k=n, num_beams=n)
    for history, all_items, kept in zip(histories, full, excluded, strict=True):
        assert len(all_items) == n
        assert not {r.item_id for r in kept} & set(history)
        assert [r.item_id for r in kept] == [r.item_id for r in all_items if r.item_id not in history]
    # Small k: still never a history item, and the same as the reference path.
    top = recommender.recommend(histories, k=3, num_beams=5)
    ref = recommender.recommend(histories, k=3, num_beams=5, reference=True)
    for history, got, expected in zip(histories, top, ref, strict=True):
        assert len(got) == 3 and not {r.item_id for r in got} & set(history)
        assert [r.item_id for r in got] == [r.item_id for r in expected]
    # exclude_items adds more exclusions.
    more = recommender.recommend([["item0"]], k=3, num_beams=6, exclude_items=[[top[0][0].item_id]])
    assert top[0][0].item_id not in {r.item_id for r in more[0]}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("num_beams", "k"), [(6, 6), (8, 3)])
def test_random_tries_with_overlay_fast_equals_generate(model, tokenizer, prompts, seed, num_beams, k):
    """Random tries (prefix IDs included) whose last IDs were minted into the overlay, with
    exclusions: fast path == reference path, batched == one request at a time."""
    eos = tokenizer.eos_token_id
    sequences = make_sequences(len(tokenizer), eos, seed=10 + seed)
    trie = make_trie(sequences[:25], eos)
    trie.tables()
    for i, seq in enumerate(sequences[25:]):
        trie.add(f"minted{i}", seq)
    assert trie.overlay_size == len(sequences) - 25
    rng = random.Random(seed)
    exclude = [rng.sample(range(len(trie)), rng.randint(0, 6)) for _ in prompts]
    exclude[0] = list(range(25, len(trie)))[:4]  # overlay items excluded
    fast = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k, exclude=exclude)
    ref = reference_generate_topk(model, prompts, trie, num_beams=num_beams, k=k, exclude=exclude)
    for prompt, banned, got, expected in zip(prompts, exclude, fast, ref, strict=True):
        assert not {s.item_index for s in got} & set(banned)
        assert_same_ranking(got, expected)
        single = constrained_beam_search(model, [prompt], trie.tables(), num_beams=num_beams, k=k, exclude=[banned])
        assert_same_ranking(got, single[0])  # padding moves scores by ~1e-5
    # A full beam sees every item, overlay ones included, with its brute-force score.
    n = len(trie)
    full = constrained_beam_search(model, prompts[:2], trie.tables(), num_beams=n, k=n)
    for prompt, got in zip(prompts[:2], full, strict=True):
        assert_same_ranking(got, brute_force(model, prompt, trie))


def test_requests_finishing_early_leave_the_batch(model, tokenizer, sequences, prompts):
    """Short and long IDs mixed with many requests: batched answers equal single answers even
    when some requests stop several steps before the others."""
    eos = tokenizer.eos_token_id
    trie = make_trie(sequences, eos)
    many = prompts * 3
    exclude = [[], [0, 1, 2], list(range(3, 20)), [5]] * 3
    batched = constrained_beam_search(model, many, trie.tables(), num_beams=4, k=2, exclude=exclude)
    for prompt, banned, got in zip(many, exclude, batched, strict=True):
        single = constrained_beam_search(model, [prompt], trie.tables(), num_beams=4, k=2, exclude=[banned])
        assert_same_ranking(got, single[0])  # padding moves scores by ~1e-5
    ref = reference_generate_topk(model, many, trie, num_beams=4, k=2, exclude=exclude)
    for got, expected in zip(batched, ref, strict=True):
        assert_same_ranking(got, expected)


# --------------------------------------------------------------------------- allowed sets (filters)


def _allowed_cases(model, prompt, trie):
    """Allowed sets that test the pruning: the model's least favourite items (the search must
    walk away from where the probability is), a set holding an item with a first token of its
    own and prefix IDs, one item, none, and None (no limit)."""
    ranking = [item for item, _ in brute_force(model, prompt, trie)]
    return [ranking[-7:], [0, 1, 2, 3, 4, 5], [ranking[len(ranking) // 2]], [], None]


def test_full_beam_with_allowed_equals_brute_force(model, sequences, prompts, tokenizer):
    """With a beam as wide as the catalog the search is exact: an allowed set (and exclusions on
    top of it) gives the teacher-forced top-k of the items that qualify, all of them when k is
    larger, and a request without a limit in the same batch is unaffected."""
    trie = make_trie(sequences, tokenizer.eos_token_id)
    n = len(trie)
    allowed = _allowed_cases(model, prompts[0], trie)
    exclude = [[allowed[0][0]], [0], [], [], [1, 2]]
    batch = [prompts[0]] * len(allowed)
    for k in (n, 3):
        results = constrained_beam_search(model, batch, trie.tables(), num_beams=n, k=k, exclude=exclude,
                                          allowed=allowed)
        for limit, banned, got in zip(allowed, exclude, results, strict=True):
            qualifying = set(range(n)) if limit is None else set(limit)
            outside = sorted(set(range(n)) - qualifying | set(banned))
            assert {s.item_index for s in got} <= qualifying - set(banned)
            assert_same_ranking(got, brute_force(model, prompts[0], trie, outside)[:k] if qualifying - set(banned)
                                else [])


@pytest.mark.parametrize(("num_beams", "k"), [(5, 5), (4, 1), (10, 3)])
def test_fast_path_equals_generate_with_allowed(model, sequences, prompts, tokenizer, num_beams, k):
    """Small beams: the fast path's pruning to an allowed set matches `generate` over a trie that
    holds only the allowed items, and every request gets k items when k qualify."""
    trie = make_trie(sequences, tokenizer.eos_token_id)
    allowed = [_allowed_cases(model, p, trie)[i] for i, p in enumerate(prompts)]  # 4 prompts: not [] or None
    fast = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k, allowed=allowed)
    ref = reference_generate_topk(model, prompts, trie, num_beams=num_beams, k=k, allowed=allowed)
    for limit, got, expected in zip(allowed, fast, ref, strict=True):
        assert len(got) == min(k, len(limit))
        assert {s.item_index for s in got} <= set(limit)
        assert_same_ranking(got, expected)


def test_broad_allowed_sets_equal_generate(model, sequences, prompts, tokenizer):
    """An allowed set of most of the catalog (a broad filter: pruned through the dead nodes of the
    items outside it, not the live paths of those inside) gives what `generate` gives over the
    allowed items, with exclusions on top, as a list or as an index array; the whole catalog as
    an allowed set, what no limit gives."""
    trie = make_trie(sequences, tokenizer.eos_token_id)
    n, tables = len(trie), trie.tables()
    for prompt in prompts:
        ranking = [item for item, _ in brute_force(model, prompt, trie)]
        for limit in (ranking[3:], np.array(ranking[:-2], dtype=np.int32), ranking[: n // 2 + 1], list(range(n))):
            banned = [ranking[4]]
            fast = constrained_beam_search(model, [prompt], tables, num_beams=5, k=5, exclude=[banned],
                                           allowed=[limit])[0]
            ref = reference_generate_topk(model, [prompt], trie, num_beams=5, k=5, exclude=[banned],
                                          allowed=[[int(i) for i in limit]])[0]
            assert len(fast) == 5 and {s.item_index for s in fast} <= set(int(i) for i in limit) - set(banned)
            assert_same_ranking(fast, ref)
        unlimited = constrained_beam_search(model, [prompt], tables, num_beams=5, k=5)[0]
        assert_same_ranking(constrained_beam_search(model, [prompt], tables, num_beams=5, k=5,
                                                    allowed=[list(range(n))])[0], unlimited)


def test_exactly_k_qualifying_items_are_all_returned(model, sequences, prompts, tokenizer):
    """k beams, k qualifying items far from the model's favourites: all k come back (a filter
    applied after the search would find none of them); fewer qualify: those, and nothing else."""
    trie = make_trie(sequences, tokenizer.eos_token_id)
    for prompt in prompts:
        worst = [item for item, _ in brute_force(model, prompt, trie)][-5:]
        for limit in (worst, worst[:2]):
            got = constrained_beam_search(model, [prompt], trie.tables(), num_beams=5, k=5, allowed=[limit])[0]
            assert sorted(s.item_index for s in got) == sorted(limit)


def test_recommender_allowed_items(recommender):
    """The recommender takes allowed item ids (unknown ones ignored) beside exclusions."""
    n = len(recommender.trie)
    allowed = [["item3", "item7", "item9", "item11", "ghost"], None]
    got = recommender.recommend([["item7"], ["item7"]], k=n, num_beams=n, allowed_items=allowed)
    assert {r.item_id for r in got[0]} == {"item3", "item9", "item11"}  # item7: the history
    assert len(got[1]) == n - 1
    ref = recommender.recommend([["item7"]], k=2, num_beams=3, allowed_items=allowed[:1], reference=True)
    fast = recommender.recommend([["item7"]], k=2, num_beams=3, allowed_items=allowed[:1])
    assert [r.item_id for r in fast[0]] == [r.item_id for r in ref[0]]
