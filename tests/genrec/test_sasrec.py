"""SASRec's model and method: causal attention, padding that changes nothing, save/load, the
recommend contract (k, exclusions, no padding, batch = one at a time), minting, bundle errors."""

import json
import random
import sys

import pytest
import torch

from genrec.bundle import load_bundle, write_bundle
from genrec.config import TrainConfig, config_from_dict
from genrec.errors import BundleError
from genrec.method import NewItem, Query, load_method
from genrec.registry import config_class, method_class
from genrec.sasrec.config import SasRecConfig, SasRecSections
from genrec.sasrec.method import SasRec
from genrec.sasrec.model import META_NAME, MODEL_DIR, PAD, WEIGHTS_NAME, SasRecModel, load_sasrec

try:
    from training.tokenizer_training import train_tokenizer
except ModuleNotFoundError:  # mid-refactor tree: genrec.prompts now lives in genrec.idgenrec.prompts
    import genrec.idgenrec.prompts as _prompts

    sys.modules.setdefault("genrec.prompts", _prompts)
    from training.tokenizer_training import train_tokenizer

from training.title_ids import title_id_items

ITEMS = [f"m{i}" for i in range(1, 31)]
TEXTS = {i: f"title: The film {n % 7}; genres: drama comedy night" for n, i in enumerate(ITEMS)}


def _model(max_len: int = 12, seed: int = 0, **kw) -> SasRecModel:
    torch.manual_seed(seed)
    model = SasRecModel(ITEMS, hidden_size=16, num_layers=2, num_heads=2, inner_size=32, dropout=0.0,
                        max_len=max_len, init_std=0.3, **kw)
    model.set_item_counts({item: n for n, item in enumerate(ITEMS)})
    return model.eval()


def _trained_a_little(model: SasRecModel) -> SasRecModel:
    """A few optimizer steps on random sequences, so the weights are not just the initial ones."""
    rng = random.Random(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    length = min(model.max_len, 7) + 1
    for _ in range(3):
        seqs = torch.tensor([[rng.randint(1, len(ITEMS)) for _ in range(length)] for _ in range(4)])
        loss = model(seqs[:, :-1], seqs[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(list(TEXTS.values()), 200)


# --------------------------------------------------------------------------- the network


def test_the_state_at_t_does_not_see_later_items():
    model = _model()
    rng = random.Random(1)
    seq = torch.tensor([[rng.randint(1, 30) for _ in range(10)]])
    before = model.encode(seq)
    for t in (0, 4, 8):
        changed = seq.clone()
        changed[0, t + 1 :] = torch.tensor([rng.randint(1, 30) for _ in range(9 - t)])
        changed[0, t + 1] = seq[0, t + 1] % 30 + 1  # surely different
        after = model.encode(changed)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-5)
        assert not torch.allclose(after[:, t + 1], before[:, t + 1])  # the later states do change


def test_left_padding_changes_nothing_of_a_sequence():
    model = _model()
    seq = torch.tensor([[3, 7, 1, 9, 4]])
    padded = torch.cat([torch.full((1, 6), PAD), seq], dim=1)
    torch.testing.assert_close(model.encode(padded)[:, 6:], model.encode(seq), rtol=0, atol=1e-5)


def test_training_loss_is_the_mean_cross_entropy_over_real_targets():
    model = _model()
    inputs = torch.tensor([[PAD, PAD, 4, 5], [1, 2, 3, 4]])
    targets = torch.tensor([[PAD, PAD, 5, 6], [2, 3, 4, 5]])
    hidden = model.encode(inputs)
    logits = model.item_scores(hidden)  # column j is row j + 1
    where = targets != PAD
    expected = torch.nn.functional.cross_entropy(logits[where], targets[where] - 1)
    torch.testing.assert_close(model(inputs, targets), expected)
    assert logits.shape[-1] == len(ITEMS)  # no column for padding


def test_a_sequence_longer_than_max_len_is_refused():
    with pytest.raises(ValueError, match="max_len"):
        _model(max_len=4).encode(torch.ones(1, 5, dtype=torch.long))


# --------------------------------------------------------------------------- persistence


def test_save_and_load_give_identical_scores(tmp_path):
    model = _trained_a_little(_model())
    model.save(tmp_path / "m")
    loaded = load_sasrec(tmp_path / "m")
    assert loaded.item_ids == model.item_ids and not loaded.training
    seqs = torch.tensor([[PAD, 3, 4, 5], [1, 2, 9, 30]])
    assert torch.equal(loaded.last_scores(seqs), model.last_scores(seqs))
    assert torch.equal(loaded.item_counts, model.item_counts)
    meta = json.loads((tmp_path / "m" / META_NAME).read_text())
    assert meta["hidden_size"] == 16 and meta["max_len"] == 12 and meta["item_ids"] == ITEMS


def _saved(tmp_path):
    folder = tmp_path / "m"
    _model().save(folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / META_NAME).unlink(), "lacks its sasrec.json"),
    (lambda f: (f / WEIGHTS_NAME).unlink(), "lacks its model.safetensors"),
    (lambda f: (f / META_NAME).write_text("{not json"), "cannot be read"),
    (lambda f: (f / META_NAME).write_text('{"format": 1, "hidden_size": 16}'), "missing or invalid"),
    (lambda f: (f / WEIGHTS_NAME).write_bytes(b"\x00garbage" * 10), "cannot be read"),
    (lambda f: (f / WEIGHTS_NAME).write_bytes((f / WEIGHTS_NAME).read_bytes()[:-40]), "cannot be read"),
])
def test_a_damaged_model_folder_is_a_bundle_error(tmp_path, damage, message):
    folder = _saved(tmp_path)
    damage(folder)
    with pytest.raises(BundleError, match=message):
        load_sasrec(folder)


def test_weights_of_other_sizes_are_a_bundle_error(tmp_path):
    folder = _saved(tmp_path)
    meta = json.loads((folder / META_NAME).read_text())
    meta["hidden_size"] = 32
    (folder / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not match"):
        load_sasrec(folder)


def test_a_missing_model_folder_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_sasrec(tmp_path / "nowhere")


# --------------------------------------------------------------------------- the method


def _method(tokenizer=None, **kw) -> SasRec:
    return SasRec(_trained_a_little(_model(**kw)), tokenizer)


def _ids(recs):
    return [r.item_id for r in recs]


def test_recommend_respects_k_and_exclusions_and_never_returns_padding():
    method = _method()
    rng = random.Random(3)
    for _ in range(20):
        history = rng.sample(ITEMS, rng.randint(1, 15))
        exclude = set(history) | set(rng.sample(ITEMS, 5))
        k = rng.randint(1, 40)
        [recs] = method.recommend([Query(history=history, exclude=exclude)], k, None)
        ids = _ids(recs)
        assert len(ids) == min(k, len(ITEMS) - len(exclude))
        assert len(set(ids)) == len(ids) and set(ids) <= set(ITEMS) and not set(ids) & exclude
        scores = [r.score for r in recs]
        assert scores == sorted(scores, reverse=True)


def test_recommend_scores_the_next_item_after_the_latest_known_items():
    method = _method(max_len=4)
    model = method.model
    history = ["m5", "unknown-1", "m9", "m2", "unknown-2", "m7", "m11"]
    [recs] = method.recommend([Query(history=history)], len(ITEMS), None)
    expected = model.last_scores(torch.tensor([[model.item_index[i] for i in ("m9", "m2", "m7", "m11")]]))[0]
    got = torch.tensor([r.score for r in recs])
    assert _ids(recs) == [ITEMS[j] for j in expected.argsort(descending=True, stable=True).tolist()]
    torch.testing.assert_close(got, expected.sort(descending=True).values, rtol=0, atol=1e-5)


def test_batch_answers_equal_one_at_a_time_answers():
    method = _method()
    rng = random.Random(5)
    queries = [Query(history=rng.sample(ITEMS, rng.randint(0, 20)), exclude=rng.sample(ITEMS, rng.randint(0, 6)))
               for _ in range(12)]
    together = method.recommend(queries, 10, None)
    for query, recs in zip(queries, together, strict=True):
        [alone] = method.recommend([query], 10, None)
        assert _ids(alone) == _ids(recs)
        torch.testing.assert_close(torch.tensor([r.score for r in alone]), torch.tensor([r.score for r in recs]),
                                   rtol=0, atol=1e-5)


def test_a_history_without_known_items_gets_the_most_popular_items():
    method = _method()
    [recs] = method.recommend([Query(history=["never-seen"], exclude=["m30"])], 3, None)
    assert _ids(recs) == ["m29", "m28", "m27"]  # counts grow with the index; m30 excluded
    assert method.recommend([], 5, None) == []


def test_only_the_models_items_are_recommendable():
    method = _method()
    assert method.is_recommendable("m1") and not method.is_recommendable("new-item")
    assert SasRec.new_items_recommendable is False


def test_mint_gives_unique_title_ids_through_the_claim(tokenizer):
    method = _method(tokenizer)
    taken = {"the film 1"}

    def claim(textual_id):
        if textual_id in taken:
            return False
        taken.add(textual_id)
        return True

    new = [NewItem(text="title: The Film 1; year: 1999", vocabulary_text="The Film 1 1999")] * 3
    minted = method.mint(new, claim)
    ids = [m.textual_id for m in minted]
    assert len(set(ids)) == 3 and "the film 1" not in ids and all(i.startswith("the film 1") for i in ids)
    assert set(ids) <= taken
    assert all(m.token_ids and tokenizer.decode(m.token_ids).strip() for m in minted)


# --------------------------------------------------------------------------- through a bundle


def test_the_registry_and_a_bundle_load_sasrec(tmp_path, tokenizer):
    assert method_class("sasrec") is SasRec and config_class("sasrec") is SasRecSections
    model = _trained_a_little(_model())
    config = TrainConfig(name="t", kind="sasrec", method=SasRecSections(SasRecConfig(hidden_size=16, max_len=12)))
    assert config_from_dict(config.to_dict()).sasrec == config.sasrec
    items, stats = title_id_items(tokenizer, ITEMS, [TEXTS[i] for i in ITEMS])
    path = write_bundle(tmp_path / "b", kind="sasrec", tokenizer=tokenizer, models={}, items=items,
                        config=config.to_dict(), dataset="synthetic", id_stats=stats, metrics={},
                        extra_dirs={MODEL_DIR: model.save})
    method = load_method(load_bundle(path))
    assert isinstance(method, SasRec)
    queries = [Query(history=["m3", "m4", "m5"], exclude=["m3"]), Query(history=[])]
    assert method.recommend(queries, 10, None) == SasRec(model, tokenizer).recommend(queries, 10, None)
    (path / MODEL_DIR / WEIGHTS_NAME).unlink()
    with pytest.raises(BundleError):
        load_method(load_bundle(path, verify=False))
