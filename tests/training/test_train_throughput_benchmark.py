"""benchmarks.train_throughput's machinery on a toy phase: the variants take turns step by
step, the timed steps are counted from the model's inputs, and variants set what they name."""

import torch

from benchmarks.train_throughput import Meter, Phase, Variant, alternating_round
from training.loop import fit
from training.presets import preset


def toy_phase(calls: list[tuple[str, int]]) -> Phase:
    """Trains a linear model on rows of width `length` (padding counted as in a real batch);
    records (variant, step) for every batch it starts, in the order they run."""

    def train(config, on_batch, meter: Meter) -> None:
        model = torch.nn.Linear(1, 1)
        lengths = [1 + (i * 7) % 10 for i in range(200)]
        batch_size = 8

        def collate(rows: list[int]) -> torch.Tensor:
            mask = torch.zeros(len(rows), max(rows))
            for r, n in enumerate(rows):
                mask[r, :n] = 1
            meter.add(mask, target=len(rows))
            return mask

        def record(epoch: int, indices: list[int]) -> None:
            calls.append((config.name, sum(1 for name, _ in calls if name == config.name)))
            on_batch(epoch, indices)

        meter.start()
        fit(model, epochs=100, examples=lambda epoch: lengths, collate=collate, batch_size=batch_size, lr=1e-3,
            loss=lambda m, batch: m(batch.sum(1, keepdim=True)).pow(2).mean(), seed=config.seed, progress=False,
            length=(lambda n: n) if config.name == "grouped" else None, on_batch=record)

    return Phase("toy", 200, train)


def named(name: str):
    config = preset("sasrec-tiny")
    config.name = name
    return config


def test_variants_take_turns_step_by_step_and_count_only_the_timed_steps():
    calls: list[tuple[str, int]] = []
    runs = alternating_round(toy_phase(calls), [named("plain"), named("grouped")], [1, 1], warmup=2, steps=5)
    # Every step of one variant is followed by a step of the other (the last call stops it).
    assert [name for name, _ in calls] == ["plain", "grouped"] * 8
    for run in runs:
        assert run.steps == 5 and run.examples == 5 * 8 and run.target == 5 * 8
        assert run.seconds > 0 and run.cpu_seconds >= 0 and run.threads == 1
    plain, grouped = runs
    assert grouped.source_padded - grouped.source < plain.source_padded - plain.source  # less padding


def test_a_variant_sets_what_it_names():
    base = preset("ml100k")
    assert base.recommender.length_grouped is False and base.generator.length_grouped is False
    grouped = Variant.parse("length_grouped+recommender.epochs=2+threads=2")
    config = grouped.config(base, seed=7)
    assert config.recommender.length_grouped and config.generator.length_grouped
    assert config.recommender.epochs == 2 and config.seed == 7 and grouped.threads == 2
    assert base.recommender.length_grouped is False  # the preset itself is untouched
    sasrec = Variant.parse("length_grouped").config(preset("sasrec-ml100k"), seed=1)
    assert sasrec.sasrec.length_grouped
    assert Variant.parse("default").config(base, seed=42).to_dict() == base.to_dict()
