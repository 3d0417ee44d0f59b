"""TensorRT and TensorRT-RTX backend: run a serialized engine from an engines folder, without torch.

    with open_runner(manifest, "dit") as dit:          # a TrtRunner when the manifest says tensorrt(-rtx)
        velocity = dit.run(feeds)["velocity"]

- Library: `tensorrt` or `tensorrt_rtx_bindings`, chosen by the component's backend in the manifest. Device
  memory, copies and the stream go through cuda-python's runtime bindings (`cuda.bindings.runtime`, pip package
  `cuda-bindings`). Both are imported on open, never at import time: this module imports on any machine.
- Before anything is deserialized the engine is checked against this machine, in this order: a GPU is
  visible; the library is installed; its version is the one the engine was built with; the GPU's compute
  capability is one the engine was built for (manifest target, cross-checked with the TensorRT-RTX engine
  header). Each refusal is one WanError line naming what differs and the `wan-export build` command to rebuild.
- One execution context per engine. Numpy inputs go through pinned staging buffers into device buffers bound by
  the manifest's tensor names, grown on demand and reused across calls (a denoising loop allocates on its first
  step only); outputs returned to the host come back the same way. Input shapes are set per call and output
  shapes read from the context.
- Device-resident tensors (the Runner API's `keep=` and `to_device`): a kept output is written into a fresh
  buffer from the device's pool (`device_pool.BufferPool`) and handed out as a `DeviceTensor`; as a later
  input it is bound by address, nothing copied. A call therefore never reads and writes the same buffer (the
  decoder's caches alternate between two buffers), and the pool recycles buffers whose tensors were dropped.
- Activation memory is shared and sized per request: contexts are created with the USER_MANAGED allocation
  strategy; after a call's input shapes are set, the context says what those shapes need
  (`update_device_memory_size_for_shapes`) and all engines of a process use one scratch block grown to that,
  not to the profile's largest corner. T5, DiT and the VAE run in turn on one stream, so one block serves them
  all (pattern of the TensorRT diffusion demo's `calculate_max_device_memory` + `activate_engines`); the block
  is freed when the last engine closes (so `--memory stage` gives each stage its own). Engine weights are not
  shared: each open engine holds its own on the GPU.
- TensorRT-RTX compiles its kernels just in time when an engine is loaded on the GPU. The compiled kernels
  are kept in a runtime cache file, `~/.cache/wan-rt/tensorrt-rtx/` (WAN_RT_TRT_CACHE=DIR to move it,
  WAN_RT_TRT_CACHE=off to disable), so a second start skips the compilation. WAN_RT_TRT_SPECIALIZATION=eager
  makes TensorRT-RTX specialize kernels to a new shape before its first run instead of in the background.

The libraries and the GPU probe are in `trt_library`, the engine-vs-machine checks in `trt_engine_check`
(both also used by `wan_export.trt`).

As polygraphy says of its TrtRunner: host outputs are fresh numpy arrays each call (callers may keep them);
input arrays are copied to the device before `run` returns.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np

from wan_rt.backends.base import DeviceTensor, Runner
from wan_rt.backends.device_pool import BufferPool
from wan_rt.backends.trt_engine_check import (  # noqa: F401 (engine_header_info, built_for: part of this API)
    built_for, check_engine_fits, check_weight_streaming, engine_header_info, no_gpu_message, rebuild_command,
    rtx_targets)
from wan_rt.backends.trt_library import (  # noqa: F401 (re-exported names used by callers and tests)
    CUDA_HINT, INSTALL_HINTS, LIBRARY_MODULES, _import, _one_line, driver_too_old_message, gpu_info, load_library,
    make_logger)
from wan_rt.errors import WanError
from wan_rt.manifest import ComponentInfo

log = logging.getLogger("wan_rt")

# --- CUDA through cuda-python ------------------------------------------------------------------------------
def load_cudart():
    """cuda-python's runtime module (`cuda.bindings.runtime`; `cuda.cudart` in cuda-python before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401  (old cuda-python layout)
        except ImportError:
            raise WanError(f"TensorRT engines need cuda-python for device memory and streams, and it is not "
                           f"installed here: {CUDA_HINT}") from None
    return cudart


def _cuda_call(cudart, result, what: str):
    """Unpack a cuda-python (error, values...) tuple; a CUDA error becomes one WanError line."""
    if not isinstance(result, tuple):
        result = (result,)
    error = result[0]
    if error != cudart.cudaError_t.cudaSuccess:
        try:
            text = cudart.cudaGetErrorString(error)[1].decode(errors="replace")
        except Exception:
            text = ""
        raise WanError(f"CUDA {what} failed: {getattr(error, 'name', error)}{': ' + text if text else ''}")
    return result[1] if len(result) == 2 else result[1:] or None


def _round_up(n: int, to: int = 1 << 20) -> int:
    return max(to, (n + to - 1) // to * to)


class SharedDevice:
    """What the TensorRT runners of a process share: cuda-python, one stream, one activation scratch block.

    Acquired by each runner on open and released on close; the last release frees the block and the stream.
    Runs are serialized by `lock`, so engines never use the block at the same time.
    """

    _current: "SharedDevice | None" = None
    _guard = threading.Lock()

    def __init__(self):
        self.cuda = load_cudart()
        self.users = 0
        self.lock = threading.RLock()
        first = self.cuda.cudaFree(0)  # first contact: the primary context, made current
        if first[0] == getattr(self.cuda.cudaError_t, "cudaErrorInsufficientDriver", None):
            raise WanError(driver_too_old_message(self.cuda, "context initialisation"))
        _cuda_call(self.cuda, first, "context initialisation")
        self.stream = _cuda_call(self.cuda, self.cuda.cudaStreamCreateWithFlags(self.cuda.cudaStreamNonBlocking),
                                 "stream creation")
        self.stream_handle = int(self.stream)
        self.scratch_ptr, self.scratch_size = 0, 0
        # buffers of tensors kept on the device between calls (DeviceTensor), shared by the runners
        self.pool = BufferPool(lambda n: self.malloc(n, "a tensor kept on the device"), self.free)

    @classmethod
    def acquire(cls) -> "SharedDevice":
        with cls._guard:
            if cls._current is None:
                cls._current = cls()
            cls._current.users += 1
            return cls._current

    def release(self) -> None:
        with SharedDevice._guard:
            self.users -= 1
            if self.users > 0:
                return
            SharedDevice._current = None
        try:
            self.synchronize()
        finally:
            if self.scratch_ptr:
                self.cuda.cudaFree(self.scratch_ptr)
            self.pool.close()
            self.cuda.cudaStreamDestroy(self.stream)
            self.scratch_ptr, self.scratch_size = 0, 0

    def call(self, result, what: str):
        return _cuda_call(self.cuda, result, what)

    def malloc(self, nbytes: int, what: str) -> int:
        return self.call(self.cuda.cudaMalloc(max(int(nbytes), 256)), f"allocation of {nbytes} bytes for {what}")

    def free(self, ptr: int) -> None:
        if ptr:
            self.call(self.cuda.cudaFree(ptr), "free")

    def pinned(self, nbytes: int, what: str) -> int:
        """Page-locked host memory: copies from it run at full bus speed and truly asynchronously."""
        return self.call(self.cuda.cudaMallocHost(max(int(nbytes), 256)),
                         f"allocation of {nbytes} bytes of pinned host memory for {what}")

    def free_pinned(self, ptr: int) -> None:
        if ptr:
            self.call(self.cuda.cudaFreeHost(ptr), "free of pinned host memory")

    def free_bytes(self) -> tuple[int, int]:
        """(free, total) device memory now (cudaMemGetInfo)."""
        return tuple(int(v) for v in self.call(self.cuda.cudaMemGetInfo(), "device memory query"))

    def synchronize(self) -> None:
        self.call(self.cuda.cudaStreamSynchronize(self.stream), "stream synchronize")

    def scratch(self, nbytes: int) -> tuple[int, int]:
        """The shared activation block, grown to at least `nbytes`; returns (address, size)."""
        with self.lock:
            if nbytes > self.scratch_size:
                self.synchronize()  # whoever used the old block is done with it
                if self.scratch_ptr:
                    self.free(self.scratch_ptr)
                    self.scratch_ptr, self.scratch_size = 0, 0
                size = _round_up(nbytes)
                self.scratch_ptr = self.malloc(size, "TensorRT activations (shared by the engines)")
                self.scratch_size = size
                log.debug("shared TensorRT activation memory: %.1f MiB", size / 2**20)
            return self.scratch_ptr, self.scratch_size

    def upload(self, ptr: int, array: np.ndarray) -> None:
        if array.nbytes:
            self.call(self.cuda.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes,
                                                self.cuda.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream),
                      "host-to-device copy")

    def download(self, array: np.ndarray, ptr: int) -> None:
        if array.nbytes:
            self.call(self.cuda.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes,
                                                self.cuda.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream),
                      "device-to-host copy")

    def to_host(self, ptr: int, shape: tuple, dtype) -> np.ndarray:
        """A fresh host array with the contents of device memory at `ptr` (waits for the copy)."""
        with self.lock:
            array = np.empty(shape, dtype=dtype)
            self.download(array, ptr)
            self.synchronize()
            return array


def _host_view(address: int, shape: tuple, dtype) -> np.ndarray:
    """A numpy array over host memory at `address` (a pinned staging buffer)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    raw = (ctypes.c_byte * max(count * dtype.itemsize, 1)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


# --- the runner --------------------------------------------------------------------------------------------
_NUMPY_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                 "BOOL": "bool", "UINT8": "uint8"}


def runtime_cache_path(component: ComponentInfo, gpu_cc: str) -> Path | None:
    """Where TensorRT-RTX's compiled kernels for this engine on this GPU are kept; None when disabled."""
    setting = os.environ.get("WAN_RT_TRT_CACHE", "")
    if setting.lower() in ("off", "0", "none", "false"):
        return None
    folder = Path(setting) if setting else Path.home() / ".cache" / "wan-rt" / "tensorrt-rtx"
    digest = component.files.get(component.file, "")[:16] or "unknown"
    return folder / f"{component.name}-{digest}-{gpu_cc}.cache"


class TrtRunner(Runner):
    """One TensorRT(-RTX) engine: deserialized on open (after the fit checks), run with numpy or device tensors."""

    def __init__(self, component: ComponentInfo, path, gpu_memory_budget: float | None = None):
        super().__init__(component, path)
        self.gpu_memory_budget = gpu_memory_budget  # GB for this engine's weights (weight streaming), or None
        self._reset()

    def _reset(self):
        self.device: SharedDevice | None = None
        self.trt = self.runtime = self.engine = self.context = self.runtime_config = None
        self._cache = self._cache_path = None
        self._logger = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (address, capacity in bytes), runner-owned
        self._staging: dict[str, tuple[int, int]] = {}  # name -> pinned host (address, capacity) for numpy I/O
        self._addresses: dict[str, int] = {}  # the address each tensor is bound to now
        self._memory_size = 0
        self._bound_memory = None
        self._dtypes: dict[str, np.dtype] = {}

    # -- open -----------------------------------------------------------------------------------------------
    device_name = "tensorrt:cuda:0"

    def preflight(self):
        """A GPU, the library, an engine built for both, a weight-streaming budget it can take: checked without
        deserializing the engine. Returns (gpu, library)."""
        component = self.component
        gpu = gpu_info()
        if gpu is None:
            raise WanError(no_gpu_message(component, self.path))
        trt = load_library(component.backend)
        targets = rtx_targets(trt) if component.backend == "tensorrt-rtx" else None
        check_engine_fits(component, self.path, str(trt.__version__), gpu, targets)
        check_weight_streaming(component, self.path, self.gpu_memory_budget)
        return gpu, trt

    def _open(self):
        gpu, trt = self.preflight()
        self.trt = trt
        self.device = SharedDevice.acquire()
        try:
            self._load(gpu)
        except BaseException:
            self._close()
            raise

    def _fail(self, problem: str) -> WanError:
        errors = "; ".join(self._logger.errors) if self._logger is not None else ""
        return WanError(f"{self.component.name}: {self.component.backend} {problem}"
                        f"{' (' + errors + ')' if errors else ''}")

    def _load(self, gpu):
        trt, component = self.trt, self.component
        started = time.perf_counter()
        self._logger = make_logger(trt, log.warning, component.backend)
        with self._logger.active():  # this runner's library messages land in its own `errors`
            self._load_engine(gpu, started)

    def _load_engine(self, gpu, started: float):
        trt, component = self.trt, self.component
        self.runtime = trt.Runtime(self._logger.logger)
        with open(self.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if hasattr(self.runtime, "get_engine_validity"):  # TensorRT-RTX: the library's own verdict first
                validity, diagnostics = self.runtime.get_engine_validity(data)
                reasons = [n for n, bit in trt.EngineInvalidityDiagnostics.__members__.items()
                           if int(diagnostics) & int(bit)]
                if validity == trt.EngineValidity.INVALID:
                    raise self._fail(f"{trt.__version__} cannot run {Path(self.path).name} on this GPU "
                                     f"({gpu[0]}, {gpu[1]}): {', '.join(reasons) or 'invalid engine'}; rebuild for "
                                     f"this machine: {rebuild_command(component, self.path)}")
                if validity != trt.EngineValidity.VALID:
                    log.warning("%s: %s %s says %s for %s: %s", component.name, component.backend, trt.__version__,
                                validity.name, Path(self.path).name, ", ".join(reasons) or "no reason given")
            self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise self._fail(f"{trt.__version__} could not load {Path(self.path).name}; rebuild for this machine: "
                             f"{rebuild_command(component, self.path)}")
        self._check_io()
        self._set_weight_budget()
        self.context = self._create_context(gpu)
        if self.context is None:
            raise self._fail(f"could not create an execution context for {Path(self.path).name}")
        size = getattr(self.engine, "device_memory_size_v2", None)
        # the profile's largest corner; each call sizes the shared block for its own shapes (see _activation_size)
        self._memory_size = int(size if size is not None else self.engine.device_memory_size)
        log.info("%s: %s %s engine loaded in %.1f s (activations up to %.1f MiB at the profile's max shapes, "
                 "allocated per request shape, shared)", component.name, component.backend, trt.__version__,
                 time.perf_counter() - started, self._memory_size / 2**20)

    def _check_io(self):
        """The engine's I/O must be the manifest's: same names, directions and dtypes."""
        trt, engine, component = self.trt, self.engine, self.component
        have = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        want = {t.name: (t, trt.TensorIOMode.INPUT) for t in component.inputs}
        want.update({t.name: (t, trt.TensorIOMode.OUTPUT) for t in component.outputs})
        if have != set(want):
            raise WanError(f"{component.name}: {Path(self.path).name} has tensors {sorted(have - set(want))} that "
                           f"manifest.json lacks and lacks {sorted(set(want) - have)}; rebuild the engines folder")
        for name, (tensor, mode) in want.items():
            dtype = _NUMPY_DTYPES.get(engine.get_tensor_dtype(name).name)
            if engine.get_tensor_mode(name) != mode or dtype != tensor.dtype:
                raise WanError(f"{component.name}: engine tensor {name} is {engine.get_tensor_mode(name).name} "
                               f"{engine.get_tensor_dtype(name).name}, manifest.json says {mode.name} "
                               f"{tensor.dtype}; rebuild the engines folder")
            self._dtypes[name] = np.dtype(dtype)

    def _set_weight_budget(self):
        """--gpu-memory-budget: at most that many bytes of this engine's streamable weights stay on the GPU, the rest
        stream from host memory as the layers run (set before the context is made, as TensorRT requires)."""
        if self.gpu_memory_budget is None:
            return
        engine, component = self.engine, self.component
        streamable = int(engine.streamable_weights_size)
        budget = min(int(self.gpu_memory_budget * 1e9), streamable)
        engine.weight_streaming_budget_v2 = budget
        log.info("%s: weight streaming budget %.2f GB of %.2f GB streamable weights (%s)", component.name,
                 budget / 1e9, streamable / 1e9, "all on the GPU" if budget == streamable else "the rest streams")

    def _create_context(self, gpu):
        """An execution context whose activation memory we provide (the shared block)."""
        trt, engine = self.trt, self.engine
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        if strategy is None:  # TensorRT before 10
            return engine.create_execution_context_without_device_memory()
        if hasattr(engine, "create_runtime_config"):  # TensorRT-RTX, TensorRT >= 10.11
            self.runtime_config = engine.create_runtime_config()
            self.runtime_config.set_execution_context_allocation_strategy(strategy)
            self._attach_runtime_cache(gpu)
            self._set_specialization()
            return engine.create_execution_context(self.runtime_config)
        return engine.create_execution_context(strategy)

    def _set_specialization(self):
        """TensorRT-RTX: WAN_RT_TRT_SPECIALIZATION=eager|lazy|none, how kernels specialize to the shapes seen
        (the library's default, lazy, compiles them in the background and swaps them in when ready)."""
        wanted = os.environ.get("WAN_RT_TRT_SPECIALIZATION", "").upper()
        strategies = getattr(self.trt, "DynamicShapesKernelSpecializationStrategy", None)
        if not wanted or strategies is None:
            return
        if wanted not in strategies.__members__:
            raise WanError(f"WAN_RT_TRT_SPECIALIZATION={wanted.lower()} is not one of "
                           f"{[name.lower() for name in strategies.__members__]}")
        self.runtime_config.dynamic_shapes_kernel_specialization_strategy = strategies.__members__[wanted]

    def _attach_runtime_cache(self, gpu):
        """TensorRT-RTX: reuse kernels compiled on an earlier start (best effort: any problem only costs time)."""
        if not hasattr(self.runtime_config, "create_runtime_cache"):
            return
        path = runtime_cache_path(self.component, gpu[1])
        if path is None:
            return
        try:
            cache = self.runtime_config.create_runtime_cache()
            if path.is_file():
                loaded = cache.deserialize(path.read_bytes())
                log.debug("%s: runtime cache %s %s", self.component.name, path, "loaded" if loaded else "stale")
            if self.runtime_config.set_runtime_cache(cache):
                self._cache, self._cache_path = cache, path
        except Exception as exc:
            log.debug("%s: no runtime cache (%s)", self.component.name, _one_line(exc))

    # -- run ------------------------------------------------------------------------------------------------
    def _grown(self, table: dict, name: str, nbytes: int, allocate, release) -> int:
        """The buffer in `table` for tensor `name`, replaced by a larger one when `nbytes` no longer fits."""
        ptr, capacity = table.get(name, (0, -1))
        if nbytes > capacity:
            if ptr:
                self.device.synchronize()  # the last call using it is done
                release(ptr)
                del table[name]
            capacity = _round_up(nbytes, 256)
            ptr = allocate(capacity, f"{self.component.name} tensor {name}")
            table[name] = (ptr, capacity)
        return ptr

    def _buffer(self, name: str, nbytes: int) -> int:
        """The runner's own device buffer for tensor `name` (numpy inputs, outputs returned to the host)."""
        return self._grown(self._buffers, name, nbytes, self.device.malloc, self.device.free)

    def _host_buffer(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """A pinned host staging array for tensor `name`, reused across calls."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = self._grown(self._staging, name, nbytes, self.device.pinned, self.device.free_pinned)
        return _host_view(ptr, shape, dtype)

    def _bind(self, name: str, ptr: int) -> None:
        if self._addresses.get(name) != ptr:
            if not self.context.set_tensor_address(name, ptr):
                raise self._fail(f"refused the address of tensor {name}")
            self._addresses[name] = ptr

    def _bind_input(self, name: str, value) -> None:
        context, device = self.context, self.device
        if isinstance(value, DeviceTensor):  # already on the device: bound by address, nothing copied
            shape, ptr = value.shape, value.handle.address
        else:
            array = np.asarray(value, dtype=self._dtypes[name])
            shape = array.shape
            staging = self._host_buffer(name, shape, array.dtype)
            staging[...] = array
            ptr = self._buffer(name, array.nbytes)
            device.upload(ptr, staging)
        if not context.set_input_shape(name, shape):
            raise self._fail(f"refused input {name} of shape {list(shape)}")
        self._bind(name, ptr)

    def _activation_size(self) -> int:
        """Activation bytes for the input shapes just set (TensorRT >= 10.1, TensorRT-RTX), else the profile max."""
        update = getattr(self.context, "update_device_memory_size_for_shapes", None)
        return int(update()) if update is not None else self._memory_size

    def _bind_activations(self) -> None:
        device, context = self.device, self.context
        size = self._activation_size()
        memory, capacity = device.scratch(size)
        if (memory, capacity) != self._bound_memory:  # the shared block is new, moved or grown: re-point
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(memory, capacity)
            else:  # TensorRT < 10.1
                context.device_memory = memory
            self._bound_memory = (memory, capacity)

    def _run(self, feeds: dict, keep: frozenset) -> dict:
        device, context, component = self.device, self.context, self.component
        if context is None:
            raise WanError(f"{component.name}: the engine is not open (use `with open_runner(...)`)")
        with device.lock, self._logger.active():
            for tensor in component.inputs:
                self._bind_input(tensor.name, feeds[tensor.name])
            self._bind_activations()
            results, to_host = {}, {}
            for tensor in component.outputs:
                name, dtype = tensor.name, self._dtypes[tensor.name]
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise self._fail(f"left output {name} with an unknown shape {list(shape)}")
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if name in keep:  # a fresh pool buffer: never the one a kept input of this call lives in
                    results[name] = self._device_tensor(device.pool.take(nbytes), shape, dtype)
                    self._bind(name, results[name].handle.address)
                else:
                    self._bind(name, self._buffer(name, nbytes))
                    to_host[name] = self._host_buffer(name, shape, dtype)
            if not context.execute_async_v3(device.stream_handle):
                raise self._fail("failed to enqueue the engine")
            for name, staging in to_host.items():
                device.download(staging, self._buffers[name][0])
            device.synchronize()  # also: a kept tensor is complete before its caller can free or read it
            # fresh arrays: staging buffers are reused by the next call
            results.update({name: np.array(staging, copy=True) for name, staging in to_host.items()})
        return results

    def _device_tensor(self, buffer, shape: tuple, dtype) -> DeviceTensor:
        device = self.device
        tensor = DeviceTensor(buffer, shape, dtype, self.device_name,
                              lambda: device.to_host(buffer.address, shape, dtype))
        device.pool.lend(tensor, buffer)
        return tensor

    def _to_device(self, array: np.ndarray) -> DeviceTensor:
        device = self.device
        with device.lock:
            tensor = self._device_tensor(device.pool.take(array.nbytes), array.shape, array.dtype)
            device.upload(tensor.handle.address, array)
            device.synchronize()
        return tensor

    # -- close ----------------------------------------------------------------------------------------------
    def _save_runtime_cache(self):
        if self._cache is None or self._cache_path is None:
            return
        try:
            blob = memoryview(self._cache.serialize())
            path = self._cache_path
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except Exception as exc:
            log.debug("%s: runtime cache not saved (%s)", self.component.name, _one_line(exc))

    def _close(self):
        device = self.device
        if device is not None:
            try:
                device.synchronize()
            except WanError:
                pass
        self._save_runtime_cache()
        # Destroy in dependency order: context, then the runtime config, then the runtime cache it was given (the
        # config refers to the cache, so the cache outlives it), then engine, then runtime; then the memory.
        self.context = None
        self.runtime_config = None
        self._cache = None
        self.engine = None
        self.runtime = None
        if device is not None:
            for release, buffers in ((device.free, self._buffers), (device.free_pinned, self._staging)):
                for ptr, _ in buffers.values():
                    try:
                        release(ptr)
                    except WanError:
                        pass
            device.release()
        self._reset()
