"""Decoded arrays handed to torch: shared when freshly decoded, copied when they are read-only or a
slice of something larger, and every dtype bit for bit."""

import warnings

import numpy as np
import pytest

from zoo.torch_bridge import _TORCH_DTYPES, to_torch
from zoo.codecs.base import TypedArray
from zoo.dtypes import DTYPES

from tests.conftest import random_storage

torch = pytest.importorskip("torch")


def test_a_fresh_array_is_shared_not_copied():
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = to_torch(TypedArray(data, "F32"))
    assert tensor.data_ptr() == data.ctypes.data and tensor.shape == (3, 4)
    assert torch.equal(tensor, torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_read_only_memory_is_copied_into_a_writable_tensor_without_a_warning():
    data = np.frombuffer(np.arange(6, dtype=np.float32).tobytes(), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tensor = to_torch(TypedArray(data, "F32"))
    tensor += 1  # the tensor owns its memory
    assert tensor.tolist() == [1, 2, 3, 4, 5, 6] and data.tolist() == [0, 1, 2, 3, 4, 5]


def test_a_slice_does_not_keep_the_whole_array_alive():
    whole = np.zeros((1000, 64), dtype=np.float32)
    tensor = to_torch(TypedArray(whole[10:12], "F32"))
    assert tensor.untyped_storage().nbytes() == 2 * 64 * 4
    whole[10, 0] = 7.0
    assert tensor[0, 0].item() == 0.0


@pytest.mark.parametrize("dtype", sorted(d for d in _TORCH_DTYPES if d in DTYPES and DTYPES[d].storage is not None))
def test_every_dtype_keeps_its_bits(dtype):
    data = random_storage(dtype, (5, 7), seed=1)
    tensor = to_torch(TypedArray(data, dtype))
    back = tensor.contiguous().view(torch.uint8).numpy()
    assert back.tobytes() == np.ascontiguousarray(data).view(np.uint8).tobytes() and tuple(tensor.shape) == (5, 7)
