"""The one padding helper."""

import torch

from genrec.tensors import IGNORE_INDEX, pad_batch, pad_labels


def test_pad_batch_right_pads_with_a_mask():
    ids, mask = pad_batch([[5, 6, 7], [8], []], pad_value=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_labels_ignores_padding():
    assert pad_labels([[1], [2, 3]]).tolist() == [[1, IGNORE_INDEX], [2, 3]]
    assert torch.nn.functional.cross_entropy(
        torch.zeros(2, 4), pad_labels([[1], [2, 3]])[:, 1], ignore_index=IGNORE_INDEX, reduction="sum"
    ).item() > 0  # the ignored row contributes nothing, the other one does
