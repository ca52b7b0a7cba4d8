"""The training run of tests/test_ddp.py, as one process or as one DDP rank."""

from __future__ import annotations

import os

import torch

import torchlpc

STEPS, B, T, N = 5, 4, 3000, 4


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, generator=generator, dtype=torch.float64)
    target = torch.randn(B, T, generator=generator, dtype=torch.float64)
    return x, target


class Model(torch.nn.Module):
    """A learned time-invariant filter, kept stable through reflection coefficients."""

    def __init__(self):
        super().__init__()
        self.raw = torch.nn.Parameter(torch.linspace(-0.5, 0.5, N, dtype=torch.float64))

    def forward(self, x):
        A = torchlpc.reflection_to_lpc(0.9 * torch.tanh(self.raw))
        return torchlpc.sample_wise_lpc(x, A.expand(x.shape[0], 1, N))


def train(model, x, target):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(STEPS):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), target).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def rank(index, world, address, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(address))
    torch.distributed.init_process_group("gloo", rank=index, world_size=world)
    try:
        x, target = data()
        rows = slice(index * B // world, (index + 1) * B // world)
        model = torch.nn.parallel.DistributedDataParallel(Model())
        parameters = train(model, x[rows], target[rows])
        torch.save(parameters, f"{out}.{index}")
    finally:
        torch.distributed.destroy_process_group()
