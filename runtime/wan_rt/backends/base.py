"""What every backend runner does: validate a feed against the manifest, then run it.

Pattern of polygraphy's runners: `with open_runner(manifest, "dit") as dit: outputs = dit.run(feeds)`.
Validation comes first, so a shape outside the built range is one clear line, not a library trace.

Tensors can stay on the runner's device between calls (backend-neutral, so the same host logic runs on ONNX
Runtime's CPU device in CI and on a GPU):
- `run(feeds, keep=("cache_out.0", ...))` returns the outputs named in `keep` as `DeviceTensor`s, not numpy;
- a `DeviceTensor` is a valid feed for any runner of the same backend and device in this process;
- `to_device(array)` uploads once what several calls read (the DiT's context and RoPE tables per request).
Every numpy feed counts as a host-to-device copy and every numpy output as device-to-host, in the
`TransferCounter` of the device (`runner.transfers`), so tests and benchmarks can see what crosses the bus.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from wan_rt.errors import WanError
from wan_rt.manifest import ComponentInfo


@dataclass
class TransferCounter:
    """Host<->device traffic of one device: bytes and copies each way."""
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    h2d_copies: int = 0
    d2h_copies: int = 0

    def __post_init__(self):
        self._lock = threading.Lock()

    def to_device(self, nbytes: int) -> None:
        with self._lock:
            self.h2d_bytes += int(nbytes)
            self.h2d_copies += 1

    def to_host(self, nbytes: int) -> None:
        with self._lock:
            self.d2h_bytes += int(nbytes)
            self.d2h_copies += 1

    def snapshot(self) -> dict:
        return {"h2d_bytes": self.h2d_bytes, "d2h_bytes": self.d2h_bytes, "h2d_copies": self.h2d_copies,
                "d2h_copies": self.d2h_copies}


_counters: dict[str, TransferCounter] = {}
_counters_guard = threading.Lock()


def transfer_counter(device: str) -> TransferCounter:
    """The one counter of `device` (e.g. "onnxruntime:cpu:0", "cuda:0") in this process."""
    with _counters_guard:
        return _counters.setdefault(device, TransferCounter())


class DeviceTensor:
    """A tensor that a backend holds on its device: shape and dtype on the host, data where the runner put it.

    `handle` is the backend's own object (an OrtValue, a device buffer); `device` names where it lives, so a
    runner refuses a tensor from another device instead of reading the wrong memory.
    """

    def __init__(self, handle, shape, dtype, device: str, download):
        self.handle = handle
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self._download = download

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def numpy(self) -> np.ndarray:
        """A host copy (counted as a device-to-host transfer)."""
        transfer_counter(self.device).to_host(self.nbytes)
        return self._download()

    def __repr__(self) -> str:
        return f"DeviceTensor({list(self.shape)}, {self.dtype}, on {self.device})"


def check_feeds(component: ComponentInfo, feeds: dict) -> None:
    expected = {tensor.name: tensor for tensor in component.inputs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        raise WanError(f"{component.name}: inputs do not match the engine (missing {missing}, unexpected {extra})")
    bound: dict[str, int] = {}
    for name, tensor in expected.items():
        array = feeds[name]
        if array.dtype != np.dtype(tensor.dtype):
            raise WanError(f"{component.name}: input {name} is {array.dtype}, the engine takes {tensor.dtype}")
        if array.ndim != len(tensor.shape):
            raise WanError(f"{component.name}: input {name} has shape {array.shape}, the engine takes {list(tensor.shape)}")
        for axis, (size, want) in enumerate(zip(array.shape, tensor.shape)):
            if isinstance(want, int):
                if size != want:
                    raise WanError(f"{component.name}: input {name} axis {axis} is {size}, the engine takes {want}")
                continue
            dim, _, factor = want.partition("*")
            factor = int(factor or 1)
            if size % factor:
                raise WanError(f"{component.name}: input {name} axis {axis} is {size}, not a multiple of {factor}")
            value = size // factor
            low, _, high = component.dims[dim]
            if not low <= value <= high:
                raise WanError(f"{component.name}: input {name} axis {axis} is {size}, outside the range the engine "
                               f"was built for ({low * factor}..{high * factor}); rebuild with a profile that covers it")
            if bound.setdefault(dim, value) != value:
                raise WanError(f"{component.name}: input {name} axis {axis} is {size}, inconsistent with the other "
                               f"inputs ({dim} = {bound[dim]})")


class Runner:
    """Base runner: subclasses set `device` on open and implement `_open`, `_run`, `_to_device`, optionally
    `_close` and `preflight`."""

    device_name = "host"

    def __init__(self, component: ComponentInfo, path):
        self.component = component
        self.path = path

    def __enter__(self):
        self._open()
        return self

    def __exit__(self, *exc):
        self._close()

    @property
    def transfers(self) -> TransferCounter:
        return transfer_counter(self.device_name)

    def preflight(self) -> None:
        """Cheap checks that this machine can open the engine, without loading it (used when engines open one
        stage at a time, so a bad engine is refused before any work)."""

    def run(self, feeds: dict, keep=()) -> dict:
        """Outputs as numpy, except those named in `keep`: `DeviceTensor`s left on the device."""
        check_feeds(self.component, feeds)
        keep = frozenset(keep)
        outputs = {tensor.name for tensor in self.component.outputs}
        if not keep <= outputs:
            raise WanError(f"{self.component.name}: cannot keep {sorted(keep - outputs)} on the device: the engine "
                           f"has no such outputs")
        counter = self.transfers
        for name, value in feeds.items():
            if isinstance(value, DeviceTensor):
                if value.device != self.device_name:
                    raise WanError(f"{self.component.name}: input {name} lives on {value.device}, this engine runs "
                                   f"on {self.device_name}")
            else:
                counter.to_device(value.nbytes)
        results = self._run(feeds, keep)
        for name, value in results.items():
            if name not in keep:
                counter.to_host(value.nbytes)
        return results

    def to_device(self, array: np.ndarray) -> DeviceTensor:
        """Upload `array` once for many calls (counted as a host-to-device transfer)."""
        array = np.ascontiguousarray(array)
        self.transfers.to_device(array.nbytes)
        return self._to_device(array)

    def _open(self):
        raise NotImplementedError

    def _run(self, feeds: dict, keep: frozenset) -> dict:
        raise NotImplementedError

    def _to_device(self, array: np.ndarray) -> DeviceTensor:
        raise NotImplementedError

    def _close(self):
        pass
