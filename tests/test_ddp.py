"""Two-process DistributedDataParallel training (gloo) ends where one process
training on the whole batch ends: DDP averages the ranks' gradients, and each
rank's loss is the mean over its half of the batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp

from _ddp_worker import Model, data, rank, train

# Two spawned processes that import torch and compile: CI's extended step.
pytestmark = pytest.mark.extended


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with gloo",
)
def test_two_ranks_train_like_one_process(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHLPC_BACKEND", raising=False)
    out = tmp_path / "parameters"
    mp.spawn(rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    expected = train(Model(), *data())
    for index in range(2):
        for got, want in zip(torch.load(f"{out}.{index}"), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
