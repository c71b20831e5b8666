"""Suite-wide settings: one torch thread, so tiny models do not thrash the CPU cores that
parallel test workers and background jobs share (tiny matmuls get ~100x slower otherwise); no
Hypothesis deadline, as speed belongs in benchmarks/, not in tests: a property test failed CI
once because its first example took 261 ms (a one-off compile) against the 200 ms default."""

import torch
from hypothesis import settings

torch.set_num_threads(1)
settings.register_profile("genrec", deadline=None)
settings.load_profile("genrec")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped, with the reason, where torch sees no GPU (CI, the CPU
    machines); `pytest -m cuda` runs just them on a GPU machine (benchmarks/gpu_check.sh)."""
    if torch.cuda.is_available():
        return
    import pytest

    reason = pytest.mark.skip(reason="needs a CUDA GPU: torch sees none here "
                                     f"({'CPU-only build' if torch.version.cuda is None else 'no device'})")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(reason)
