"""Shared bits of the benchmarks: argument parsing, loading a bundle's split, output, and the
service started as a real uvicorn process on loopback (`Server`)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.ports import address_in_use, free_port, retry_on_taken_port

REPO_ROOT = Path(__file__).resolve().parents[1]


def parser(description: str, bundle_required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", type=Path, required=bundle_required, help="bundle folder")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (a PNG plot goes beside it)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def setup(args) -> None:
    import torch  # here, not at the top: the service launcher below needs no torch

    torch.set_num_threads(args.threads)


def load_split(bundle):
    """The bundle's dataset split, as training built it."""
    from training.pipeline import load_config_dataset

    return load_config_dataset(bundle.train_config)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def percentile(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[index]


def mean(values) -> float:
    return statistics.fmean(values) if values else float("nan")


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_json(path: Path | None, data: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {path}")


def plot_path(out: Path | None) -> Path | None:
    return out.with_suffix(".png") if out is not None else None


def save_figure(fig, png: Path) -> None:
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    print(f"wrote {png}")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- the service as a process


def redis_url(requested: str | None) -> str | None:
    """The given URL, else a local Redis on db 15 when one answers, else None (embedded)."""
    import redis

    url = requested or "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
        return url
    except Exception:
        if requested:
            raise
        return None


def clean_keys(url: str | None, catalog: str) -> int:
    if url is None:
        return 0
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"genrec:{{{catalog}}}:*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


class Server:
    """`python -m service.cli` on a free loopback port, configured by environment variables
    (service/settings.py), with its output in `log_path`. Uvicorn binds the port only once the
    bundle is loaded: if another process took it meanwhile, `wait_ready` starts the service again
    on another port (service/ports.py), so read `url` after `wait_ready`."""

    def __init__(self, bundle: Path, env: dict[str, str], log_path: Path, root: Path | None = None):
        """`root`: another checkout of the project to run the service from (e.g. an older
        commit, to measure before and after with the same client); default this one."""
        self.env = {
            **os.environ,
            **env,
            "GENREC_BUNDLE": str(bundle),
            "GENREC_TORCH_THREADS": env.get("GENREC_TORCH_THREADS", "1"),
            # A benchmark's own server on loopback; runs that need the write token set one.
            "GENREC_ALLOW_ANONYMOUS_WRITES": env.get("GENREC_ALLOW_ANONYMOUS_WRITES", "true"),
        }
        if root is not None:
            self.env["PYTHONPATH"] = str(root)
        self.root = root
        self.log = open(log_path, "w")
        self.proc: subprocess.Popen | None = None
        self.launch()

    def launch(self) -> None:
        """Starts the service on a port picked now (stopping the one started before, if running);
        its output goes on in the log, from `log_offset`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log.flush()
        self.log_offset = self.log.tell()
        self.launched_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning"],
            env=self.env,
            cwd=self.root or REPO_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 120.0, poll_s: float = 0.5) -> None:
        """Until /readyz answers 200, within `timeout_s` a start; started again on another port
        while the service exits because its port was taken."""
        retry_on_taken_port(lambda: self._wait_ready(timeout_s, poll_s), self.lost_port, self.launch)

    def _wait_ready(self, timeout_s: float, poll_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(poll_s)
        raise RuntimeError(f"the service did not become ready in {timeout_s:.0f} s: {self.log_tail()}")

    def lost_port(self) -> bool:
        """Whether the service exited because its port was taken after it was picked."""
        if self.proc.poll() is None:
            return False
        self.log.flush()
        with open(self.log.name, "rb") as log:
            log.seek(self.log_offset)
            return address_in_use(log.read().decode("utf-8", "replace"))

    def log_tail(self, chars: int = 2000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
