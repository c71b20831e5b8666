"""Length-grouped batches (training.loop): every example of a shard exactly once per epoch,
deterministic per seed and epoch, in step across DDP ranks, of similar lengths; the plain path
unchanged; and each method's `length_grouped` flag reaches the loop."""

import dataclasses
import random
import statistics

import pytest
import torch

from genrec.cllm4rec.config import Cllm4RecConfig
from genrec.idgenrec.config import RecommenderConfig
from genrec.modeling import ModelConfig, build_t5
from genrec.sasrec.config import SasRecConfig
from genrec.tokenization import encode_text
from training.data import SplitData
from training.id_generator import warm_up_generator
from training.loop import GROUP_CHUNK_BATCHES, epoch_batches, fit, length_grouped_batches, shard_indices
from training.methods.cllm4rec import build_model as build_cllm4rec
from training.methods.cllm4rec import finetune
from training.methods.sasrec import build_model as build_sasrec
from training.methods.sasrec import train_sequences
from training.recommender import train_recommender, training_pairs
from training.tokenizer_training import train_tokenizer

BATCH = 16


def random_lengths(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 120) for _ in range(count)]


def padding_share(batches: list[list[int]], lengths: list[int]) -> float:
    """What share of a padded batch is padding, over all batches."""
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1 - real / sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def grouped(order: list[int], lengths: list[int], seed: int = 1, epoch: int = 0) -> list[list[int]]:
    return epoch_batches(order, BATCH, [lengths[i] for i in order], seed, epoch)


def test_every_example_is_in_one_batch_and_only_the_last_is_short():
    lengths = random_lengths(1000)
    order = shard_indices(1000, 0, seed=3)
    batches = length_grouped_batches(order, [lengths[i] for i in order], BATCH, random.Random(0))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(1000))
    assert [len(b) for b in batches] == [BATCH] * 62 + [8]


def test_batches_have_similar_lengths_and_come_in_random_order():
    lengths = random_lengths(BATCH * GROUP_CHUNK_BATCHES * 4)
    order = shard_indices(len(lengths), 0, seed=3)
    plain, batches = epoch_batches(order, BATCH, None, 3, 0), grouped(order, lengths)
    assert padding_share(plain, lengths) > 0.3
    assert padding_share(batches, lengths) < 0.05
    means = [statistics.fmean(lengths[i] for i in batch) for batch in batches]
    assert means != sorted(means) and means != sorted(means, reverse=True)
    # Chunks are sorted, not the whole epoch: batches of every length come early and late.
    first, last = means[: len(means) // 2], means[len(means) // 2 :]
    assert abs(statistics.fmean(first) - statistics.fmean(last)) < 15


def test_the_order_is_deterministic_per_seed_and_epoch():
    lengths = random_lengths(500)
    order = list(range(500))
    assert grouped(order, lengths, seed=1, epoch=0) == grouped(order, lengths, seed=1, epoch=0)
    assert grouped(order, lengths, seed=1, epoch=0) != grouped(order, lengths, seed=1, epoch=1)
    assert grouped(order, lengths, seed=1, epoch=0) != grouped(order, lengths, seed=2, epoch=0)


def test_plain_batches_cut_the_order_as_it_comes():
    order = shard_indices(50, 2, seed=7)
    assert epoch_batches(order, BATCH, None, 7, 2) == [order[i : i + BATCH] for i in range(0, 50, BATCH)]


def test_each_ddp_rank_groups_its_own_shard_in_step_with_the_other():
    count = BATCH * GROUP_CHUNK_BATCHES * 2 + 37  # odd: the shards are padded by wrapping
    lengths = random_lengths(count)
    shards = [shard_indices(count, 0, seed=5, rank_world=(rank, 2)) for rank in (0, 1)]
    batches = [grouped(shard, lengths, seed=5) for shard in shards]
    for shard, mine in zip(shards, batches, strict=True):
        assert sorted(i for batch in mine for i in batch) == sorted(shard)  # a permutation of the shard
    assert [len(b) for b in batches[0]] == [len(b) for b in batches[1]]  # the ranks stay in step
    assert {i for mine in batches for batch in mine for i in batch} == set(range(count))
    # The same turn on both ranks: batches of about the same lengths (no rank waits for the other).
    gaps = [abs(max(lengths[i] for i in a) - max(lengths[i] for i in b)) for a, b in zip(*batches, strict=True)]
    assert statistics.fmean(gaps) < 6


def test_fit_trains_every_example_once_per_epoch_in_grouped_batches():
    lengths = random_lengths(300)
    seen: dict[int, list[list[int]]] = {}
    model = torch.nn.Linear(1, 1)
    fit(model, epochs=2, examples=lambda epoch: lengths, batch_size=BATCH, lr=1e-3, length=lambda n: n,
        collate=lambda rows: torch.tensor(rows, dtype=torch.float).unsqueeze(1),
        loss=lambda m, batch: m(batch).pow(2).mean(), progress=False,
        on_batch=lambda epoch, indices: seen.setdefault(epoch, []).append(indices))
    for epoch in (0, 1):
        assert sorted(i for batch in seen[epoch] for i in batch) == list(range(300))
        assert padding_share(seen[epoch], lengths) < 0.1
    assert seen[0] != seen[1]


# --------------------------------------------------------------------------- each method's flag

TINY = ModelConfig(d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8)
ITEMS = [f"i{n}" for n in range(30)]
WORDS = ["red", "blue", "green", "shoe", "lamp", "book", "cup", "bag", "small", "large"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([" ".join(WORDS), *ITEMS], vocab_size=120)


def split_with_varied_histories(users: int = 24) -> SplitData:
    rng = random.Random(0)
    train = {f"u{u}": rng.sample(ITEMS, rng.randint(2, 25)) for u in range(users)}
    return SplitData(train=train, valid={u: ITEMS[0] for u in train}, test={u: ITEMS[1] for u in train})


def batches_of(train, flag: bool) -> list[list[int]]:
    """The batches (example indices) of the first epoch, as the loop reported them."""
    seen: list[list[int]] = []
    train(flag, lambda epoch, indices: seen.append(indices) if epoch == 0 else None)
    return seen


def assert_grouped_by(train, length_of) -> None:
    plain, grouped_batches = batches_of(train, False), batches_of(train, True)
    assert sorted(i for b in grouped_batches for i in b) == sorted(i for b in plain for i in b)
    lengths = [length_of(i) for i in range(1 + max(i for b in plain for i in b))]
    assert padding_share(grouped_batches, lengths) < padding_share(plain, lengths) / 2


def test_the_recommender_flag_groups_prompts_by_length(tokenizer):
    split = split_with_varied_histories(10)
    pairs = training_pairs(split, 20, None)
    item_tokens = {i: encode_text(tokenizer, f"{WORDS[n % 10]} {i}") for n, i in enumerate(ITEMS)}

    def train(flag, on_batch):
        config = RecommenderConfig(model=TINY, epochs=1, batch_size=8, num_train_templates=1, length_grouped=flag)
        train_recommender(build_t5(TINY, tokenizer, seed=0), tokenizer, split, item_tokens, config, max_history=20,
                          seed=0, progress=False, on_batch=on_batch, log=lambda _: None)

    assert_grouped_by(train, lambda i: len(pairs[i][1]))


def test_the_generator_flag_groups_item_texts_by_length(tokenizer):
    texts = [" ".join(WORDS[: 1 + n % 10]) for n in range(64)]

    def train(flag, on_batch):
        warm_up_generator(build_t5(TINY, tokenizer, seed=0), tokenizer, texts, ["red"] * len(texts), epochs=1,
                          lr=1e-3, batch_size=8, seed=0, length_grouped=flag, on_batch=on_batch, progress=False)

    assert_grouped_by(train, lambda i: len(texts[i].split()))


def test_the_cllm4rec_flag_groups_fine_tuning_prompts_by_length():
    split = split_with_varied_histories(48)
    cfg = Cllm4RecConfig(model=TINY, finetune_epochs=1, batch_size=8, finetune_views_per_user=1, reg_lambda=0.0,
                         max_prompt_items=50)

    def prompts(flag: bool) -> tuple[float, int]:
        """(padding share, prompts) of what the encoder read in the epoch."""
        model, pieces = build_cllm4rec(cfg, train_tokenizer([" ".join(WORDS)], 60), list(split.train), ITEMS, seed=0)
        masks: list[torch.Tensor] = []
        model.backbone.encoder.register_forward_pre_hook(
            lambda _module, _args, kwargs: masks.append(kwargs["attention_mask"]), with_kwargs=True)
        finetune(model, pieces, split.train, dataclasses.replace(cfg, length_grouped=flag), seed=0, progress=False)
        return 1 - float(sum(m.sum() for m in masks)) / sum(m.numel() for m in masks), sum(len(m) for m in masks)

    (plain, plain_count), (grouped_share, grouped_count) = prompts(False), prompts(True)
    assert plain_count == grouped_count == 48
    assert grouped_share < plain / 2


def test_the_sasrec_flag_groups_sequences_by_length():
    rng = random.Random(0)
    sequences = [list(range(1, rng.randint(3, 40))) for _ in range(64)]
    cfg = SasRecConfig(hidden_size=8, num_layers=1, num_heads=1, inner_size=16, max_len=50, batch_size=8, epochs=1)

    def train(flag, on_batch):
        model = build_sasrec([f"i{n}" for n in range(40)], cfg)
        train_sequences(model, sequences, dataclasses.replace(cfg, length_grouped=flag), seed=0, on_batch=on_batch,
                        progress=False)

    assert_grouped_by(train, lambda i: len(sequences[i]))
