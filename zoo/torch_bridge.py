"""torch conversions, imported only by callers that asked for torch tensors."""

from __future__ import annotations

import functools
import operator
from typing import Any

import numpy as np

from zoo.codecs.base import TypedArray
from zoo.errors import InputError

_TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64", "F4": "float4_e2m1fn_x2",  # F4: two values a byte, torch counts the bytes
}


def has_torch_dtype(name: str) -> bool:
    """Whether the installed torch has a dtype for zoo's dtype `name`."""
    import torch

    return hasattr(torch, _TORCH_DTYPES.get(name, "-"))


_NAMES = {torch_name: name for name, torch_name in _TORCH_DTYPES.items()}


def dtype_name(dtype: Any) -> str:
    """zoo's name of a torch dtype; U8 (opaque bytes) for those it has no name for."""
    return _NAMES.get(str(dtype).removeprefix("torch."), "U8")


def _whole(array: np.ndarray) -> bool:
    """Whether `array` spans all of the numpy array that owns its memory."""
    owner = array
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    return owner.nbytes == array.nbytes


def check_device(device: Any) -> None:
    """Raise InputError unless torch can put tensors on `device` (a typo, or CUDA on a machine
    without it), in torch's words, rather than torch's own exception."""
    import torch

    # what torch takes for a device: a name, an index (numpy's too), a torch.device; not a bool (a list
    # was "unhashable type", a float torch's own TypeError)
    if isinstance(device, bool) or not (isinstance(device, (str, torch.device)) or _is_index(device)):
        raise InputError(f"device {device!r}: not a device (a name such as 'cpu' or 'cuda:0', an index, or a torch.device)")
    _check_device(device)


def _is_index(value: Any) -> bool:
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


@functools.cache
def _check_device(device: Any) -> None:
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError, ImportError) as error:  # ImportError: "hpu", whose torch module is not there
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"device {device!r}: {reason}") from None


def to_torch(array: TypedArray, device: Any = None) -> Any:
    import torch

    if device is not None:
        check_device(device)

    name = _TORCH_DTYPES.get(array.dtype)
    if name is None:
        raise TypeError(f"dtype {array.dtype} has no torch equivalent")
    dtype = getattr(torch, name)
    raw = np.ascontiguousarray(array.data).reshape(-1).view(np.uint8)
    if not raw.size:  # numpy copies an empty array with a zero stride, which torch cannot view as a wider dtype
        tensor = torch.empty(array.shape, dtype=dtype)
        return tensor.to(device) if device is not None else tensor
    if not raw.flags.writeable or not _whole(raw):
        # torch would share (and warn about) memory it may not write, or keep a larger decoded
        # array alive for a slice of it: one copy the tensor owns
        raw = raw.copy()
    # Otherwise the tensor shares the freshly decoded buffer: no copy.
    tensor = torch.from_numpy(raw).view(dtype).reshape(array.shape)  # F4 comes packed two values a byte, as torch holds it
    return tensor.to(device) if device is not None else tensor
