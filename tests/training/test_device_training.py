"""Training on the configured device (genrec.device): the loop moves each batch to the model and
runs the loss at the run's precision; every method's run trains, validates and evaluates with
every module's inputs on that device; asking for CUDA without a GPU fails at once with a message.

The device-generic tests run with device=cpu here (the same code as on a GPU); those marked
`cuda` are skipped with a reason where torch sees no GPU and run on a GPU machine by
benchmarks/gpu_check.sh."""

import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from genrec.bundle import items_trie, load_bundle
from genrec.config import apply_override
from genrec.device import resolve_device
from genrec.errors import ConfigError
from genrec.method import Query, RuntimeOptions, load_method
from training.cli import main as cli_main
from training.loop import fit, training_precision
from training.pipeline import run
from training.presets import preset

from .test_cllm4rec_pipeline import SMALL as CLLM4REC_SMALL
from .test_pipeline import small_config, write_atomic_dataset

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


class _Probe(torch.nn.Module):
    """A linear model whose forward records where its input is and whether autocast is on."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.seen: list[tuple[torch.device, bool]] = []

    def forward(self, x):
        self.seen.append((x.device, torch.is_autocast_enabled(x.device.type)))
        return self.linear(x)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("device_name", DEVICES)
def test_the_loop_moves_each_batch_to_the_model_and_autocasts_only_on_cuda(device_name, precision):
    device = resolve_device(device_name)
    model = _Probe().to(device)
    data = [torch.randn(4) for _ in range(24)]

    def collate(rows):  # built on the host, as every method's collate does
        x = torch.stack(rows)
        return {"x": x, "y": x.sum(-1, keepdim=True)}

    def loss(m, batch):
        return torch.nn.functional.mse_loss(m(batch["x"]).float(), batch["y"])

    with training_precision(precision):
        history = fit(model, epochs=2, examples=lambda epoch: data, collate=collate, loss=loss, batch_size=8,
                      lr=1e-2, progress=False)
    assert len(history["loss"]) == 2 and all(value == value for value in history["loss"])
    assert {d for d, _ in model.seen} == {device}
    assert {on for _, on in model.seen} == {device.type == "cuda" and precision == "bf16"}


# The operations the models' compute goes through (nn.Linear, nn.Embedding, attention, norms,
# the output heads): their operands and results must all be on the run's device.
COMPUTE = {F.linear, F.embedding, F.layer_norm, F.scaled_dot_product_attention, F.log_softmax, F.cross_entropy,
           torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm}


class _ComputeDevices(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen: set[torch.device] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in COMPUTE:
            for value in (*args, *kwargs.values(), out):
                if isinstance(value, torch.Tensor):
                    self.seen.add(value.device)
        return out


@contextlib.contextmanager
def compute_devices():
    """The devices of the operands and results of every compute operation inside."""
    with _ComputeDevices() as mode:
        yield mode.seen


def _config(kind: str, data_dir, device: str, precision: str):
    if kind == "idgenrec":
        config = small_config(data_dir)
        config.recommender.epochs = 1
        config.eval.users = 8
    else:
        config = preset(f"{kind}-tiny")
        config.data.dataset, config.data.data_dir, config.data.kcore = "synth", str(data_dir), 0
        config.tokenizer.vocab_size = 200
        if kind == "cllm4rec":
            for assignment in CLLM4REC_SMALL:
                apply_override(config, assignment)
            config.cllm4rec.finetune_epochs = 1
        else:
            config.sasrec.epochs = 2
    config.device, config.precision, config.threads = device, precision, 1
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-data")
    write_atomic_dataset(root)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sasrec", "cllm4rec", "idgenrec"])
@pytest.mark.parametrize("device_name", DEVICES)
def test_every_method_trains_and_recommends_with_its_tensors_on_the_device(kind, device_name, data_dir, tmp_path):
    device = resolve_device(device_name)
    precision = "bf16" if device.type == "cuda" else "fp32"
    with compute_devices() as seen:
        result = run(_config(kind, data_dir, device_name, precision), tmp_path / "bundle", progress=False)
    assert seen == {device}  # training, validation and evaluation: every compute operation
    assert result["test"]["ndcg@10"] >= 0
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.train_config.device == device_name and bundle.train_config.precision == precision
    method = load_method(bundle, RuntimeOptions(device=device_name, precision=precision))
    history = [item.item_id for item in bundle.items[:3]]
    with compute_devices() as seen:
        found = method.recommend([Query(history=history, exclude=history)], 5,
                                 items_trie(bundle.items, bundle.tokenizer.eos_token_id))
    assert seen == {device} and len(found[0]) == 5
    assert not {r.item_id for r in found[0]} & set(history)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_asking_to_train_on_cuda_without_a_gpu_fails_before_any_work(tmp_path, capsys):
    config = preset("sasrec-tiny")
    config.device = "cuda"
    with pytest.raises(ConfigError, match="asked for CUDA, but torch sees no GPU"):
        run(config, tmp_path / "bundle", progress=False)
    assert not (tmp_path / "bundle").exists()
    assert cli_main(["run", "--config", "sasrec-tiny", "--out", str(tmp_path / "b"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "genrec-train: error: device 'cuda' asked for CUDA, but torch sees no GPU here" in err
    assert "Traceback" not in err


def test_the_cli_takes_device_and_precision_and_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        cli_main(["run", "--config", "tiny", "--out", "x", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        run(_bad_device(), Path("unused"), progress=False)


def _bad_device():
    config = preset("sasrec-tiny")
    config.device = "gpu"
    return config
