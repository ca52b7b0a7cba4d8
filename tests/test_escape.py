"""No tensor a public function returns ever changes afterwards, whatever route its
memory takes out of the caller's hands (torchlpc/kernels/_buffers.py keeps the
memory of large CPU outputs between calls).

One test per route by which memory can escape: shared memory, torch.multiprocessing
queues and pipes (in both directions), DataLoader workers started by fork, spawn and
forkserver, NumPy arrays and ``__array__``, DLPack, ``memoryview``, storages and
weak references to them, pickling and ``torch.save``, autograd's saved tensors and
``saved_tensors_hooks``, and ``torch.compile``d functions. Each keeps an output (or
a gradient) only through that route, makes the library produce more outputs of the
same size, so that the cache would hand the memory out again if it could, and then
checks the kept values. The processes are real; one spawned process serves every
pipe and queue test. Outputs are just over the cache's 1 MiB threshold.
"""

from __future__ import annotations

import gc
import io
import pickle
import weakref

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import torchlpc
from torchlpc.kernels import _buffers

from _escape_helpers import Outputs, digest, holder, inputs, output

# Real processes, DataLoader workers and shared memory: CI's extended step.
pytestmark = pytest.mark.extended

# Outputs made at once after a tensor escaped: more than the free storages the cache
# can have of this size, so that a storage it wrongly thinks free is handed out.
FILL = 4
# A process's first filter loads the numba kernels from the on-disk cache.
START_SECONDS = 120


@pytest.fixture(autouse=True)
def numba_and_an_empty_cache(monkeypatch):
    monkeypatch.delenv("TORCHLPC_BACKEND", raising=False)
    _buffers.release_free()
    yield
    _buffers.release_free()


def _fill():
    """Outputs of the escaped tensor's size, made and freed again."""
    return [output(1000 + seed) for seed in range(FILL)]


@pytest.fixture(scope="module")
def other_process():
    """A spawned process that keeps what it is sent and sends outputs of its own."""
    context = mp.get_context("spawn")
    ours, theirs = context.Pipe()
    queue = context.Queue()
    process = context.Process(target=holder, args=(theirs, queue), daemon=True)
    process.start()
    yield ours, queue
    ours.send(None)
    process.join(START_SECONDS)
    if process.is_alive():
        process.kill()


def _ask(connection, message):
    connection.send(message)
    if not connection.poll(START_SECONDS):
        raise TimeoutError(f"the other process did not answer {message[0]!r}")
    return connection.recv()


def _receive(connection):
    if not connection.poll(START_SECONDS):
        raise TimeoutError("the other process sent nothing")
    return connection.recv()


# ----------------------------------------------------------------------------
# Memory sent to another process: the other process holds it, and nothing in
# this one can count that.


def _send_shared(connection, queue, y):
    y.share_memory_()
    return _ask(connection, ("keep", y))


def _send_through_queue(connection, queue, y):
    queue.put(y)
    return _ask(connection, ("queue",))


def _send_through_pipe(connection, queue, y):
    return _ask(connection, ("keep", y))


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(_send_shared, id="share_memory_"),
        pytest.param(_send_through_queue, id="queue"),
        pytest.param(_send_through_pipe, id="pipe"),
    ],
)
@pytest.mark.parametrize("what", ["output", "gradient"])
def test_sent_to_another_process(other_process, send, what):
    connection, queue = other_process
    if what == "output":
        sent = output(0)
    else:
        x, A = inputs(0)
        x.requires_grad_()
        (sent,) = torch.autograd.grad(torchlpc.sample_wise_lpc(x, A), x, torch.ones_like(x))
        del x, A
    received = send(connection, queue, sent)
    assert received == digest(sent)
    del sent
    gc.collect()
    filled = _fill()
    assert _ask(connection, ("digests",))[-1] == received
    del filled


def test_received_from_another_process(other_process):
    """The other process's cache must not hand out what it sent us."""
    connection, _ = other_process
    connection.send(("make", 7))
    received = _receive(connection)
    expected = digest(received)
    assert _receive(connection) == "done"  # it has filtered again since
    assert digest(received) == expected
    torch.testing.assert_close(received, output(7), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_dataloader_workers(method):
    """Whole batches made in the workers and kept by the main process, as a dataset
    that synthesises audio would. (Under fork the workers start with this process's
    cache, which has been used.)"""
    count = 8
    expected = {seed: output(seed) for seed in range(count)}
    loader = torch.utils.data.DataLoader(
        Outputs(count),
        batch_size=None,
        # One worker is enough to make the fault, and each spawned one imports torch.
        num_workers=2 if method == "fork" else 1,
        prefetch_factor=4,
        multiprocessing_context=method,
        timeout=START_SECONDS,
    )
    batches = list(loader)
    assert sorted(seed for seed, _ in batches) == list(range(count))
    changed = [seed for seed, y in batches if not torch.equal(y, expected[seed])]
    assert not changed, f"batches {changed} changed after they were received"


# ----------------------------------------------------------------------------
# Memory kept in this process by something other than a tensor.


def _numpy(y):
    array = y.numpy()
    return lambda: torch.from_numpy(array)


def _array_protocol(y):
    array = np.asarray(y)
    return lambda: torch.from_numpy(array)


def _dlpack_numpy(y):
    array = np.from_dlpack(y)
    return lambda: torch.from_numpy(array)


def _dlpack_capsule(y):
    capsule = torch.utils.dlpack.to_dlpack(y)
    return lambda: torch.utils.dlpack.from_dlpack(capsule)


def _memoryview(y):
    view = memoryview(y.numpy())
    return lambda: torch.from_numpy(np.asarray(view))


def _storage(y):
    storage, offset, shape, stride, dtype = (
        y.untyped_storage(), y.storage_offset(), y.shape, y.stride(), y.dtype
    )
    return lambda: torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)


def _pickle(y):
    data = pickle.dumps(y)
    return lambda: pickle.loads(data)


def _torch_save(y):
    buffer = io.BytesIO()
    torch.save(y, buffer)
    return lambda: torch.load(io.BytesIO(buffer.getvalue()))


ROUTES = [
    pytest.param(_numpy, id="numpy"),
    pytest.param(_array_protocol, id="np.asarray"),
    pytest.param(_dlpack_numpy, id="np.from_dlpack"),
    pytest.param(_dlpack_capsule, id="dlpack-capsule"),
    pytest.param(_memoryview, id="memoryview"),
    pytest.param(_storage, id="untyped_storage"),
    pytest.param(_pickle, id="pickle"),
    pytest.param(_torch_save, id="torch.save"),
]


@pytest.mark.parametrize("keep", ROUTES)
def test_kept_without_a_tensor(keep):
    y = output(0)
    expected = y.clone()
    restore = keep(y)
    del y
    gc.collect()
    filled = _fill()
    assert torch.equal(restore(), expected)
    del filled


def test_weak_reference_to_a_storage():
    """Once the output is gone, a weak reference to its storage is dead, or reaches
    the values it had; never memory that holds another output."""
    y = output(0)
    expected = y.clone()
    reference = weakref.ref(y.untyped_storage())
    del y
    gc.collect()
    filled = _fill()
    storage = reference()
    if storage is not None:
        assert torch.equal(torch.empty(0).set_(storage, 0, expected.shape), expected)
    del filled


def _assert_gradient_survives_reuse(loss, x, A):
    """The gradient of ``loss = sum(sample_wise_lpc(x, A) ** 2)`` in A, taken after the
    freed outputs' memory was handed out again and filled, equals a fresh one."""
    filled = _fill()
    (grad_A,) = torch.autograd.grad(loss, A)
    del filled
    A_again = A.detach().clone().requires_grad_()
    y_again = torchlpc.sample_wise_lpc(x, A_again)
    (expected,) = torch.autograd.grad((y_again * y_again).sum(), A_again)
    assert torch.equal(grad_A, expected)


def test_saved_for_backward():
    x, A = inputs(0)
    A.requires_grad_()
    y = torchlpc.sample_wise_lpc(x, A)  # saves y for its own backward
    loss = (y * y).sum()  # and so does the product
    del y
    _assert_gradient_survives_reuse(loss, x, A)


def test_saved_tensors_hooks_keeping_storages():
    """Hooks that keep only a saved tensor's storage (as offloading code does) and
    rebuild the tensor in backward."""

    def pack(tensor):
        return tensor.untyped_storage(), tensor.storage_offset(), tensor.shape, tensor.stride(), tensor.dtype

    def unpack(packed):
        storage, offset, shape, stride, dtype = packed
        return torch.empty(0, dtype=dtype).set_(storage, offset, shape, stride)

    x, A = inputs(0)
    A.requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        y = torchlpc.sample_wise_lpc(x, A)
        loss = (y * y).sum()
    del y
    gc.collect()
    _assert_gradient_survives_reuse(loss, x, A)


def test_compiled_function():
    @torch.compile(fullgraph=True, dynamic=False)
    def filtered(x, A):
        y = torchlpc.sample_wise_lpc(x, A)
        return y[..., ::2], y.sum()

    x, A = inputs(0)
    view, total = filtered(x, A)
    expected = view.clone()
    for seed in range(1000, 1000 + FILL):
        filtered(*inputs(seed))
    assert torch.equal(view, expected)
    del total
