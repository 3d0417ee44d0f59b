"""Recycled device buffers for tensors that stay on the GPU between engine calls (TensorRT backend).

An output kept on the device (`run(..., keep=...)`) gets a buffer from the pool and hands it to the caller inside
a `DeviceTensor`; the next call binds a fresh buffer for the same output. So a call that reads a state tensor and
writes its successor (the decoder's `cache_in.*` -> `cache_out.*`) never reads and writes the same memory: two
buffers per cache alternate, which is double buffering without a fixed pair. A buffer goes back to the pool when
its `DeviceTensor` is garbage collected; buffers are reused by size class, so a steady loop allocates nothing
after its first two iterations.

Allocation is injected (`malloc(nbytes) -> address`, `free(address)`), so the pool's bookkeeping is plain Python.
"""
from __future__ import annotations

import threading
import weakref
from collections import defaultdict


def size_class(nbytes: int) -> int:
    """Capacities are rounded up to 1 MiB steps (256 B for small tensors), so near sizes share buffers."""
    step = 1 << 20 if nbytes > 1 << 20 else 256
    return max(step, (int(nbytes) + step - 1) // step * step)


class DeviceBuffer:
    __slots__ = ("address", "capacity", "__weakref__")

    def __init__(self, address: int, capacity: int):
        self.address = address
        self.capacity = capacity


class BufferPool:
    def __init__(self, malloc, free):
        self._malloc, self._free = malloc, free
        self._idle: dict[int, list[int]] = defaultdict(list)  # capacity -> idle addresses
        self._lock = threading.Lock()
        self.closed = False
        self.allocated = 0  # bytes currently allocated by the pool (idle or lent out)

    def take(self, nbytes: int) -> DeviceBuffer:
        capacity = size_class(nbytes)
        with self._lock:
            if self.closed:
                raise RuntimeError("device pool used after the device was released")
            idle = self._idle[capacity]
            address = idle.pop() if idle else None
        if address is None:
            address = self._malloc(capacity)
            with self._lock:
                self.allocated += capacity
        return DeviceBuffer(address, capacity)

    def lend(self, owner, buffer: DeviceBuffer) -> None:
        """`buffer` comes back to the pool when `owner` (the DeviceTensor holding it) is collected."""
        weakref.finalize(owner, self._give_back, buffer.address, buffer.capacity)

    def _give_back(self, address: int, capacity: int) -> None:
        with self._lock:
            if not self.closed:
                self._idle[capacity].append(address)
                return
            self.allocated -= capacity
        self._free(address)  # the device was released while this tensor lived: free it now

    def idle_count(self) -> int:
        with self._lock:
            return sum(len(addresses) for addresses in self._idle.values())

    def close(self) -> None:
        """Free the idle buffers; buffers still lent out are freed when their tensors go."""
        with self._lock:
            self.closed = True
            idle = [(address, capacity) for capacity, addresses in self._idle.items() for address in addresses]
            self._idle.clear()
            self.allocated -= sum(capacity for _, capacity in idle)
        for address, _ in idle:
            self._free(address)
