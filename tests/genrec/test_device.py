"""The device setting (genrec.device) and the decoding path on it: resolution and its errors,
batches moved in one piece, every method's tensors on the model's device, and the fast
decoder's top-k under bf16 autocast against the fp32 reference on the same device.

The device-generic tests run with device=cpu here (the code is the same on a GPU); those marked
`cuda` are skipped with a reason where torch sees no GPU (tests/conftest.py) and run on a GPU
machine by benchmarks/gpu_check.sh."""

from dataclasses import dataclass

import pytest
import torch

from genrec.beam_search import constrained_beam_search, reference_generate_topk
from genrec.config import TrainConfig
from genrec.device import autocast, check_precision, model_device, resolve_device, to_device
from genrec.errors import ConfigError
from genrec.idgenrec.prompts import prompt_corpus
from genrec.method import RuntimeOptions
from genrec.modeling import ModelConfig, build_t5
from genrec.trie import TextualIdTrie
from tests.genrec.test_beam_search import SENTENCES, make_sequences
from training.tokenizer_training import train_tokenizer

NO_GPU = not torch.cuda.is_available()
TINY = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


# --------------------------------------------------------------------------- the setting


def test_cpu_and_auto_resolve_without_a_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda", torch.cuda.current_device()) if not NO_GPU else torch.device("cpu")
    assert resolve_device("auto") == resolve_device(None) == resolve_device(" AUTO ") == expected


@pytest.mark.skipif(not NO_GPU, reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_asking_for_cuda_without_a_gpu_fails_with_a_clear_message(spec):
    with pytest.raises(ConfigError, match=r"asked for CUDA, but torch sees no GPU here .*use device cpu or auto"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda0", "mps"])
def test_an_unknown_device_is_refused(spec):
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_precision_is_fp32_or_bf16_and_autocast_only_on_cuda():
    assert check_precision(None) == "fp32" and check_precision("BF16") == "bf16"
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16"):
        check_precision("fp16")
    # On the CPU bf16 changes nothing: the CPU path stays what it was.
    with autocast(torch.device("cpu"), "bf16"):
        assert not torch.is_autocast_enabled()
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.cuda
def test_cuda_resolves_to_the_local_rank_and_bf16_autocasts():
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
    a = torch.ones(4, 4, device="cuda")
    with autocast(torch.device("cuda"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cuda"), "fp32"):
        assert (a @ a).dtype == torch.float32


@dataclass
class _Batch:
    ids: torch.Tensor
    name: str


def test_to_device_moves_every_tensor_of_a_batch_and_keeps_its_shape():
    ids = torch.arange(3)
    batch = {"a": ids, "b": (ids, [ids, 7]), "c": _Batch(ids, "x")}
    moved = to_device(batch, torch.device("cpu"))
    assert moved["a"] is ids  # already there: no copy
    assert moved["b"][0] is ids and moved["b"][1][1] == 7 and moved["c"].name == "x"
    assert isinstance(moved["b"], tuple) and isinstance(moved["c"], _Batch)
    meta = to_device(batch, torch.device("meta"))  # another device: every tensor goes there
    assert {t.device.type for t in (meta["a"], meta["b"][0], meta["b"][1][0], meta["c"].ids)} == {"meta"}


def test_a_model_without_parameters_is_on_the_cpu():
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


def test_the_config_and_the_runtime_options_carry_a_device_and_a_precision():
    config = TrainConfig()
    assert (config.device, config.precision) == ("auto", "fp32")
    assert config.to_dict()["device"] == "auto" and config.to_dict()["precision"] == "fp32"
    assert RuntimeOptions().device is None  # the service decides (GENREC_DEVICE), not the bundle


# --------------------------------------------------------------------------- the fast decoder in bf16

# The tolerance of the fast decoder's top-k under bf16 autocast against the fp32 reference
# (`generate` over the trie) on the same device: a score is a sum of log-probabilities whose
# logits bf16 rounds to 8 bits of mantissa (a relative step of 2^-8, 0.39%), so each score may
# move by BF16_REL_TOL of its size (measured on the CPU: at most 0.29%, scores of -37 to -83
# nats, k = 5, 10 and 20), and items whose fp32 scores are that close may swap; at least
# BF16_MIN_OVERLAP of the top-k items must be the reference's (measured: all of them).
BF16_REL_TOL = 0.01
BF16_MIN_OVERLAP = 0.8


@pytest.fixture(scope="module")
def decoding():
    tokenizer = train_tokenizer(SENTENCES + prompt_corpus(), vocab_size=60)
    model = build_t5(TINY, tokenizer, seed=0).eval()
    with torch.no_grad():
        model.shared.weight.mul_(4.0)  # scores spread out, as in test_beam_search
    sequences = make_sequences(len(tokenizer), tokenizer.eos_token_id)
    trie = TextualIdTrie([f"item{i}" for i in range(len(sequences))], sequences, tokenizer.eos_token_id)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, len(tokenizer), (int(n),), generator=gen).tolist() + [tokenizer.eos_token_id]
               for n in torch.randint(4, 12, (6,), generator=gen)]
    return model, trie, prompts


def _bf16(device: torch.device):
    # On the CPU the service never autocasts (genrec.device); the test does, to check the decoder's
    # dtypes hold under bf16 with the same code a GPU runs.
    return torch.autocast("cpu", dtype=torch.bfloat16) if device.type == "cpu" else autocast(device, "bf16")


@pytest.mark.parametrize("device_name", DEVICES)
def test_the_fast_decoder_in_bf16_keeps_the_fp32_reference_top_k(decoding, device_name):
    model, trie, prompts = decoding
    device = resolve_device(device_name)
    model = model.to(device)
    k = num_beams = 10
    try:
        reference = reference_generate_topk(model, prompts, trie, num_beams=num_beams, k=k)
        fp32 = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k)
        with _bf16(device):
            bf16 = constrained_beam_search(model, prompts, trie.tables(), num_beams=num_beams, k=k)
    finally:
        model.to("cpu")
    for ref, exact, low in zip(reference, fp32, bf16, strict=True):
        assert [s.item_index for s in exact] == [s.item_index for s in ref]  # fp32 on the device: the reference
        assert len(low) == k
        ref_scores = {s.item_index: s.score for s in ref}
        overlap = len(ref_scores.keys() & {s.item_index for s in low}) / k
        assert overlap >= BF16_MIN_OVERLAP, (ref, low)
        for got, expected in zip(low, ref, strict=True):
            assert abs(got.score - expected.score) <= BF16_REL_TOL * abs(expected.score), (ref, low)
        assert [s.score for s in low] == sorted((s.score for s in low), reverse=True)


@pytest.mark.parametrize("device_name", DEVICES)
def test_the_fast_decoder_runs_where_the_model_is(decoding, device_name):
    model, trie, prompts = decoding
    device = resolve_device(device_name)
    model = model.to(device)
    seen: set[torch.device] = set()
    handle = model.lm_head.register_forward_hook(lambda _m, inputs, out: seen.update({inputs[0].device, out.device}))
    try:
        found = constrained_beam_search(model, prompts, trie.tables(), num_beams=5, k=5)
    finally:
        handle.remove()
        model.to("cpu")
    assert seen == {device}
    assert all(len(row) == 5 for row in found)
