"""Graceful lifecycle (issue 7.5): SIGTERM lets every accepted request finish and exits 0; the
app is not ready (not even listening, under the CLI) before its bundle and trie are loaded;
a corrupt bundle stops the start with one line and a non-zero exit code.

The process tests run the real CLI (`python -m service.cli`) under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import service.generation
from service.app import create_app
from service.ports import ATTEMPTS, address_in_use, free_port, log_tail, retry_on_taken_port

from .conftest import assert_error
from .redis_server import registry_contents

ROOT = Path(__file__).resolve().parents[2]
TITLE = {"title": "fresh night story"}


def cli_env(redis_url: str, catalog: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENREC_")}
    env.update(
        REDIS_URL=redis_url,
        GENREC_CATALOG=catalog,
        GENREC_TORCH_THREADS="1",
        GENREC_REDIS_STARTUP_TIMEOUT_S="5",
        GENREC_ALLOW_ANONYMOUS_WRITES="true",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        **extra,
    )
    return env


# How long a real `genrec-serve` may take to become ready: loading a bundle took over 60 s on a
# loaded machine (the 60 s once used made test_the_real_cli_serves_an_item_table_bundle flaky).
READY_TIMEOUT_S = 180.0
LOG_TAIL_LINES = 40


class CliService:
    """`python -m service.cli` in the background on a port picked free (killed at the end if it
    is still running). Uvicorn binds that port only once the lifespan is done, seconds later:
    if another process took it meanwhile, `wait_ready` launches the service again on another
    port, `attempts` times in all. Use it as a context manager."""

    def __init__(self, bundle: Path, env: dict[str, str], log: Path):
        self.bundle, self.env, self.log = bundle, env, log
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> CliService:
        self.close()
        self.port = free_port()
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "--bundle", str(self.bundle), "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, attempts: int = ATTEMPTS) -> list[int]:
        """`wait_until_ready`, on another port while the service exits because its port was taken."""
        return retry_on_taken_port(
            lambda: wait_until_ready(self.process, self.base_url, self.log, timeout_s),
            lambda: self.process.poll() is not None and address_in_use(self.log.read_text()),
            self.launch, attempts)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> CliService:
        return self.launch()

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until_ready(process: subprocess.Popen, base_url: str, log: Path,
                     timeout_s: float = READY_TIMEOUT_S) -> list[int]:
    """Polls /readyz until 200; returns the statuses answered before that (connection errors,
    a port not listening yet, are not answers)."""
    answered: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the service exited with {process.returncode}; its log ends:\n{log_tail(log, lines=LOG_TAIL_LINES)}"
        try:
            status = httpx.get(f"{base_url}/readyz", timeout=2.0).status_code
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if status == 200:
            return answered
        answered.append(status)
        time.sleep(0.05)
    raise AssertionError(f"{base_url} not ready within {timeout_s:g} s; the service's log ends:\n{log_tail(log, lines=LOG_TAIL_LINES)}")


def test_the_cli_service_moves_to_another_port_when_its_pick_was_taken(bundle_path, redis_url, catalog_name,
                                                                         tmp_path, monkeypatch):
    """The helper every process test starts the CLI with: the port it picked is taken before
    uvicorn binds it (a busy CI machine), and the service comes up on another one."""
    real, picked = free_port, []
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setitem(globals(), "free_port", lambda: picked.append(real() if picked else taken) or picked[-1])
        with CliService(bundle_path, cli_env(redis_url, catalog_name), tmp_path / "service.log") as service:
            assert service.wait_ready() == []
            assert picked[0] == taken and service.port == picked[-1] != taken and len(picked) == 2
            assert httpx.get(f"{service.base_url}/readyz", timeout=10).status_code == 200


def test_sigterm_drains_in_flight_requests_and_exits_0(bundle_path, redis_url, catalog_name, tmp_path):
    log = tmp_path / "service.log"
    # Requests wait up to 1 s in the micro-batchers: they are in flight when SIGTERM comes.
    env = cli_env(redis_url, catalog_name, GENREC_MAX_WAIT_MS="1000")
    with CliService(bundle_path, env, log) as service:
        answered_before_ready = service.wait_ready()
        process, base_url = service.process, service.base_url
        # Uvicorn binds its port only once the lifespan (bundle, trie, Redis) is done.
        assert answered_before_ready == []

        async def scenario() -> tuple[list[httpx.Response], float]:
            async with httpx.AsyncClient(base_url=base_url, timeout=20.0) as client:
                calls = [client.post("/v1/recommendations", json={"history": [f"m{i}"], "k": 5}) for i in range(6)]
                calls += [client.post("/v1/items", json={"item_id": f"drain-{i}", "metadata": TITLE}) for i in range(4)]
                requests = [asyncio.ensure_future(call) for call in calls]
                # A client that gives up: its mint was accepted, so it must still be committed.
                with contextlib.suppress(httpx.TimeoutException):
                    await client.post("/v1/items", json={"item_id": "abandoned", "metadata": TITLE}, timeout=0.3)
                await asyncio.sleep(0.2)
                process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                responses = await asyncio.gather(*requests)
                return responses, signalled

        responses, signalled = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 6 + [201] * 4, [r.text for r in responses]
        assert all(len(r.json()["items"]) == 5 for r in responses[:6])
        code = process.wait(timeout=20)
        exited = time.monotonic() - signalled
    output = log.read_text()
    print(f"\nexit code {code}, {exited:.2f} s after SIGTERM")
    assert code == 0, output
    assert exited < 15
    assert "Traceback" not in output and "Application shutdown complete" in output
    minted = {item_id: record["textual_id"] for item_id, record in registry_contents(redis_url, catalog_name)["items"].items()
              if record["source"] == "minted"}
    assert set(minted) == {f"drain-{i}" for i in range(4)} | {"abandoned"}
    assert not [v for v in registry_contents(redis_url, catalog_name)["tids"].values() if v.startswith("pending:")]


def test_corrupt_bundle_stops_the_start_with_one_line(bundle_path, redis_url, catalog_name, tmp_path):
    broken = tmp_path / "broken-bundle"
    shutil.copytree(bundle_path, broken)
    weights = next((broken / "recommender").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    weights.write_bytes(bytes(data))
    port = free_port()
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "--bundle", str(broken), "--port", str(port)],
        cwd=ROOT, env=cli_env(redis_url, catalog_name), capture_output=True, text=True, timeout=READY_TIMEOUT_S,
    )
    print(f"\nexit code {done.returncode} after {time.monotonic() - started:.2f} s: {done.stderr.strip()}")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        f"genrec-serve: bad bundle: checksum mismatch for recommender/{weights.name}: the file was changed or corrupted\n"
    )


# --------------------------------------------------------------------------- in-process


@pytest.mark.anyio
async def test_not_ready_until_the_bundle_and_trie_are_loaded(make_settings, monkeypatch):
    gate = threading.Event()
    real_load = service.generation.load_bundle

    def slow_load(*args, **kwargs):
        gate.wait(10)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(service.generation, "load_bundle", slow_load)
    app = create_app(make_settings())
    started, stop = asyncio.Event(), asyncio.Event()

    async def run_lifespan():
        async with app.router.lifespan_context(app):
            started.set()
            await stop.wait()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://genrec.test") as client:
        lifespan = asyncio.create_task(run_lifespan())
        try:
            await asyncio.sleep(0.2)  # the lifespan is loading now
            error = assert_error(await client.get("/readyz"), 503, "not_ready")
            assert error["details"]["checks"] == {"bundle": "not loaded", "redis": "not connected"}
            assert_error(await client.post("/v1/recommendations", json={"history": ["m1"]}), 503, "not_ready")
            assert (await client.get("/healthz")).status_code == 200  # alive, just not ready
            gate.set()
            await asyncio.wait_for(started.wait(), 20)
            assert (await client.get("/readyz")).status_code == 200
            assert app.state.service.catalog.trie.index_of("m1") is not None
            assert (await client.post("/v1/recommendations", json={"history": ["m1"], "k": 2})).status_code == 200
        finally:
            gate.set()
            stop.set()
            await lifespan
        error = assert_error(await client.get("/readyz"), 503, "not_ready")
        assert error["details"]["checks"]["bundle"] == "stopping"


@pytest.mark.anyio
async def test_shutdown_finishes_the_queued_batches(make_settings, redis_url, catalog_name):
    app = create_app(make_settings(max_wait_ms=1000, adaptive_wait=False))  # requests sit in the batchers' queues
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://genrec.test") as client:
        async with app.router.lifespan_context(app):
            recommendations = [
                asyncio.create_task(client.post("/v1/recommendations", json={"history": [f"m{i}"], "k": 3}))
                for i in range(3)
            ]
            mints = [
                asyncio.create_task(client.post("/v1/items", json={"item_id": f"queued-{i}", "metadata": TITLE}))
                for i in range(3)
            ]
            await asyncio.sleep(0.2)
            for task in mints:  # their callers give up; the mints were accepted and go on
                task.cancel()
            started = time.monotonic()
        # The lifespan shutdown has run: it handled what was queued instead of dropping it.
        stopped = time.monotonic() - started
        responses = await asyncio.wait_for(asyncio.gather(*recommendations), 10)
    assert [r.status_code for r in responses] == [200] * 3
    assert stopped < 5.0
    contents = registry_contents(redis_url, catalog_name)
    minted = {item_id for item_id, record in contents["items"].items() if record["source"] == "minted"}
    assert minted == {f"queued-{i}" for i in range(3)}
    assert contents["events"] == 3
    assert not [v for v in contents["tids"].values() if v.startswith("pending:")]
