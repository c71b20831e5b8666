"""Suite-wide settings: one torch thread, so tiny models do not thrash the CPU cores that
parallel test workers and background jobs share (tiny matmuls get ~100x slower otherwise)."""

import torch

torch.set_num_threads(1)
