"""The CPU kernels' cache of output memory (torchlpc/kernels/_buffers.py).

Memory is handed out again only when the storage it was lent to has let go of
it (see also tests/test_escape.py, with other processes); results never change because memory was reused; the cache stays
within its limit; ``torchlpc.empty_cpu_cache`` gives everything free back.
"""

from __future__ import annotations

import threading

import pytest
import torch

import torchlpc
from torchlpc import reference
from torchlpc.kernels import _buffers

from conftest import filter_inputs, make_generator, randn

MiB = 1 << 20
pytestmark = pytest.mark.usefixtures("fresh_cache")


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.delenv("TORCHLPC_BACKEND", raising=False)
    _buffers.release_free()
    yield
    _buffers.release_free()


def _pointer(tensor):
    return tensor.untyped_storage().data_ptr()


def test_free_memory_is_handed_out_again():
    first = _buffers.new_output((2, MiB // 4), torch.float32)
    pointer = _pointer(first)
    del first
    again = _buffers.new_output((2, MiB // 4), torch.float32)
    assert _pointer(again) == pointer
    assert again.shape == (2, MiB // 4) and again.dtype == torch.float32 and again.is_contiguous()
    assert not again.requires_grad


@pytest.mark.parametrize("holder", ["tensor", "view", "numpy", "saved for backward"])
def test_memory_in_use_is_not_handed_out(holder):
    output = _buffers.new_output((MiB // 2,), torch.float64)
    pointer = _pointer(output)
    if holder == "view":
        kept = output[10:20]
    elif holder == "numpy":
        kept = output.numpy()
    elif holder == "saved for backward":
        leaf = torch.ones((), dtype=torch.float64, requires_grad=True)
        kept = leaf * output  # autograd saves output
    else:
        kept = output
    del output
    other = _buffers.new_output((MiB // 2,), torch.float64)
    other_pointer = _pointer(other)
    assert other_pointer != pointer
    del kept, other
    # Both free now: the next two outputs of the size get the two storages back.
    again = [_buffers.new_output((MiB // 2,), torch.float64) for _ in range(2)]
    assert {_pointer(t) for t in again} == {pointer, other_pointer}


def test_views_hold_memory_until_they_are_gone():
    output = _buffers.new_output((MiB // 2,), torch.float64)
    pointer = _pointer(output)
    view = output[:5]
    del output
    assert _pointer(_buffers.new_output((MiB // 2,), torch.float64)) != pointer
    del view
    assert _pointer(_buffers.new_output((MiB // 2,), torch.float64)) == pointer


def test_best_fit_within_a_quarter():
    big = _buffers.new_output((5 * MiB // 2,), torch.uint8)
    big_pointer = _pointer(big)
    del big
    # 1.8 MiB in 2.5 MiB would leave more than a quarter of the output spare.
    spare = _buffers.new_output((9 * MiB // 5,), torch.uint8)
    assert _pointer(spare) != big_pointer
    # 2 MiB of float64 fits with a quarter to spare.
    reused = _buffers.new_output((MiB // 4,), torch.float64)
    assert _pointer(reused) == big_pointer
    assert reused.numel() == MiB // 4 and reused.dtype == torch.float64


def test_small_outputs_are_not_kept():
    before = _buffers.kept_bytes()
    small = _buffers.new_output((MiB // 8,), torch.float32)
    assert _buffers.kept_bytes() == before
    del small


def test_limit_bounds_what_is_kept(monkeypatch):
    monkeypatch.setattr(_buffers, "_limit", 3 * MiB)
    outputs = [_buffers.new_output((MiB // 4,), torch.float32) for _ in range(5)]
    assert _buffers.kept_bytes() <= 3 * MiB
    # The newest are the ones kept; the oldest are plain tensors, freed with them.
    pointers = [_pointer(o) for o in outputs]
    del outputs
    again = [_buffers.new_output((MiB // 4,), torch.float32) for _ in range(3)]
    assert {_pointer(o) for o in again} == set(pointers[-3:])
    # Larger than the limit: never kept.
    huge = _buffers.new_output((MiB,), torch.float32)
    assert _buffers.kept_bytes() <= 3 * MiB
    del huge, again


def test_cache_off(monkeypatch):
    monkeypatch.setattr(_buffers, "_limit", 0)
    first = _buffers.new_output((MiB,), torch.float32)
    assert _buffers.kept_bytes() == 0
    del first


def test_empty_cpu_cache_releases_what_no_tensor_uses():
    used = _buffers.new_output((MiB // 4,), torch.float32)
    free = _buffers.new_output((MiB // 2,), torch.float32)
    del free
    assert torchlpc.empty_cpu_cache() == 2 * MiB
    assert _buffers.kept_bytes() == MiB
    assert torchlpc.empty_cpu_cache() == 0
    del used


def test_memory_moved_to_shared_memory_comes_back():
    """share_memory_ copies the output into a new shared segment and lets go of the
    kept memory, which is free again while the shared tensor keeps its values."""
    output = _buffers.new_output((MiB // 4,), torch.float32)
    output.copy_(torch.arange(MiB // 4, dtype=torch.float32))
    pointer = _pointer(output)
    output.share_memory_()
    assert output.is_shared() and _pointer(output) != pointer
    again = _buffers.new_output((MiB // 4,), torch.float32)
    assert _pointer(again) == pointer
    again.fill_(-1)
    assert torch.equal(output, torch.arange(MiB // 4, dtype=torch.float32))


def test_a_storage_object_holds_memory():
    output = _buffers.new_output((MiB // 4,), torch.float32)
    pointer = _pointer(output)
    storage = output.untyped_storage()
    del output
    assert _pointer(_buffers.new_output((MiB // 4,), torch.float32)) != pointer
    del storage
    assert _pointer(_buffers.new_output((MiB // 4,), torch.float32)) == pointer


def test_kept_memory_cannot_grow():
    """The price of lending memory through a NumPy array, as torch.from_numpy's."""
    output = _buffers.new_output((MiB // 4,), torch.float32)
    with pytest.raises(RuntimeError, match="not resizable"):
        output.resize_(MiB // 2)
    output.resize_(10)  # shrinking only changes the view
    assert output.shape == (10,)


@pytest.mark.parametrize("value, limit", [("", 1024 * MiB), ("0", 0), ("1.5", 3 * MiB // 2)])
def test_limit_from_environment(monkeypatch, value, limit):
    monkeypatch.setenv(_buffers.ENV_VARIABLE, value)
    assert _buffers._limit_from_environment() == limit


@pytest.mark.parametrize("value", ["lots", "-1"])
def test_bad_limit_in_environment(monkeypatch, value):
    monkeypatch.setenv(_buffers.ENV_VARIABLE, value)
    with pytest.raises(ValueError, match="TORCHLPC_CPU_CACHE_MB"):
        _buffers._limit_from_environment()


def _training_step(x, A, zi, grad_y):
    leaves = [t.clone().requires_grad_() for t in (x, A, zi)]
    y = torchlpc.sample_wise_lpc(*leaves)
    y.backward(grad_y)
    return [y.detach()] + [t.grad for t in leaves]


def test_repeated_steps_reuse_memory_and_match_the_reference():
    """A loop of forward+backward steps at a size the cache serves: every step
    gives the reference's values, and later steps run in the first steps' memory."""
    B, T, N = 2, 40000, 4  # grad_A 2.4 MiB, y and grad_x 0.3 MiB in float64
    x, A, zi = filter_inputs((B,), T, N, dtype=torch.float64, seed=0)
    grad_y = randn(B, T, dtype=torch.float64, generator=make_generator(1))
    expected = reference.allpole_vjp_reference(grad_y, A, reference.allpole_reference(x, A, zi), zi)
    first = _training_step(x, A, zi, grad_y)
    pointer = _pointer(first[2])
    del first
    for _ in range(3):
        y, grad_x, grad_A, grad_zi = _training_step(x, A, zi, grad_y)
        assert _pointer(grad_A) == pointer
        torch.testing.assert_close(grad_x, expected[0])
        torch.testing.assert_close(grad_A, expected[1])
        torch.testing.assert_close(grad_zi, expected[2])
        del y, grad_x, grad_A, grad_zi


def test_threads_never_share_an_output():
    B, T, N = 4, 1 << 16, 2  # y: 1 MiB in float32
    x, A, _ = filter_inputs((B,), T, N, dtype=torch.float32, seed=2)
    expected = torchlpc.sample_wise_lpc(x, A)
    failures = []

    def work():
        for _ in range(10):
            outputs = [torchlpc.sample_wise_lpc(x, A) for _ in range(2)]
            if len({_pointer(o) for o in outputs}) != 2:
                failures.append("two live outputs in one storage")
            if not all(torch.equal(o, expected) for o in outputs):
                failures.append("wrong values")

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
