"""Eight users at once: the app's bounded queue serves every generation in turn (one at a time on a CPU, the pipeline
shared), keeps light endpoints responsive meanwhile, and refuses requests beyond the queue size with a clear message."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "spaces_app"))
import demo_assets  # noqa: E402

USERS = 8


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return demo_assets.shared_test_app(tmp_path_factory.getbasetemp() / "cxr-app")


def submit(client, seed, steps=4):
    return client.submit("PA chest radiograph. Findings: pneumonia.", "", 64, steps, 4.0, "dpm++", seed, False, 1,
                         "none", api_name="/generate")


def test_eight_simultaneous_users_are_served_in_turn(running):
    state = running.state
    clients = [Client(running.url, verbose=False) for _ in range(USERS)]
    submit(clients[0], 0).result(timeout=120)  # warm-up
    state.max_active_generations = 0
    before = state.generations

    start = time.perf_counter()
    jobs = [submit(client, seed) for seed, client in enumerate(clients)]
    time.sleep(0.2)
    light_start = time.perf_counter()
    sources = clients[0].predict(api_name="/data_sources")  # a light endpoint is not stuck behind generations
    light_seconds = time.perf_counter() - light_start
    results = [job.result(timeout=300) for job in jobs]
    elapsed = time.perf_counter() - start

    assert len(results) == USERS
    seeds = [result[3][0]["seed"] for result in results]
    assert seeds == list(range(USERS))  # each user got their own image
    assert state.generations - before == USERS
    assert state.max_active_generations == 1  # served in turn, the pipeline shared
    assert sources[0]["choices"]
    per_request = [float(r[1].split(" in ")[1].split(" s")[0]) for r in results]
    print(f"\n{USERS} simultaneous users: all served in {elapsed:.2f} s; generation {min(per_request):.2f}-"
          f"{max(per_request):.2f} s each (64x64, 4 steps, tiny random pipeline); a light request meanwhile took "
          f"{light_seconds:.2f} s")
    assert light_seconds < elapsed


def test_requests_beyond_the_queue_size_are_refused_clearly(running):
    queue = running.demo._queue
    saved = queue.max_size
    queue.max_size = 2
    try:
        clients = [Client(running.url, verbose=False) for _ in range(USERS)]
        jobs = [submit(client, seed, steps=6) for seed, client in enumerate(clients)]
        served, refused = 0, []
        for job in jobs:
            try:
                job.result(timeout=300)
                served += 1
            except Exception as err:  # gradio_client's QueueError / AppError
                refused.append(str(err))
        assert served >= 1 and refused
        assert all("queue is full" in message.lower() for message in refused)
    finally:
        queue.max_size = saved
    assert submit(Client(running.url, verbose=False), 99, steps=1).result(timeout=120)[0]  # still serving
