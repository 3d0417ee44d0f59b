"""ONNX Runtime backend: one InferenceSession per component graph, run through IOBinding.

IOBinding lets an output stay where the session's provider put it (an OrtValue on the CPU, or in GPU memory
with the CUDA provider) and be bound as the next call's input, so the streaming decoder's caches and the DiT's
per-request inputs never make a host round trip. The CPU provider runs the same code path in CI.
"""
from __future__ import annotations

import logging
import os
import threading

import numpy as np

from wan_rt.backends import ort_providers
from wan_rt.backends.base import DeviceTensor, Runner
from wan_rt.errors import WanError

log = logging.getLogger("wan_rt")


def default_providers() -> list[str]:
    ort = ort_providers.import_onnxruntime()
    available = ort.get_available_providers()
    preferred = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    requested = os.environ.get("WAN_RT_ORT_PROVIDERS")
    return requested.split(",") if requested else preferred


def component_providers(component) -> list[str]:
    """The providers of one component: its manifest placement `device: cpu` (the official `t5_cpu`: the text
    encoder on the CPU beside GPU engines) pins it to the CPU provider, else the default list."""
    if getattr(component, "device", "") == "cpu":
        return [ort_providers.CPU]
    return default_providers()


_said: set[str] = set()  # one-time log lines already written


def _said_once(key: str) -> bool:
    if key in _said:
        return True
    _said.add(key)
    return False


def cpu_threads() -> int:
    """$WAN_RT_ORT_THREADS: ONNX Runtime's CPU threads per session (default 0: one per core). Set it to 1 where
    several processes share the cores (sequence-parallel ranks or Triton instances on one CPU host, parallel test
    workers): a full pool per process oversubscribes the cores, and its spinning threads waste them."""
    text = os.environ.get("WAN_RT_ORT_THREADS", "").strip()
    if not text:
        return 0
    if not text.isdigit():
        raise WanError(f"WAN_RT_ORT_THREADS={text!r} is not a thread count; set a whole number (0 = one per core)")
    return int(text)


_shared_arena = threading.Lock()
_shared_arena_ready = False


def use_shared_cpu_arena(ort, options) -> None:
    """CPU sessions allocate from one process-wide arena instead of one each: a tensor one engine made and another
    consumed (the first decoder chunk's caches, read by the steady-state decoder) goes back to an arena the next
    engine allocates from, not to one that is never used again; engines run in turn, so they share the memory as
    TensorRT engines share one activation block (measured: docs/benchmarks.md, issue 13)."""
    global _shared_arena_ready
    with _shared_arena:
        if not _shared_arena_ready:
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))
            _shared_arena_ready = True
    options.add_session_config_entry("session.use_env_allocators", "1")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class OrtRunner(Runner):
    def _open(self):
        ort = ort_providers.import_onnxruntime()

        self._ort = ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        threads = cpu_threads()
        if threads:
            options.intra_op_num_threads = threads
        providers = component_providers(self.component)
        if providers[:1] == ["CPUExecutionProvider"]:
            use_shared_cpu_arena(ort, options)
        with_options = list(providers)
        if ort_providers.CUDA in providers:
            ort_providers.check_attention_kernel(ort.__version__)
            ort_providers.preload_cuda_libraries(ort)
            cuda_options = ort_providers.cuda_provider_options()
            with_options[providers.index(ort_providers.CUDA)] = (ort_providers.CUDA, cuda_options)
            if not _said_once("tf32"):
                log.info("ONNX Runtime CUDA %s: TF32 %s (WAN_RT_ORT_TF32=1 allows it: faster fp32 parts, ~1e-3 "
                         "relative error)", ort.__version__, "on" if cuda_options["use_tf32"] == "1" else
                         "off, as the fp32 PyTorch reference")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=with_options)
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            if self.component.precision != "fp32" and providers[:1] == [ort_providers.CPU]:
                raise WanError(f"{self.component.name}: this {self.component.precision} graph is for ONNX Runtime "
                               f"CUDA (the CPU provider lacks its kernels: {_first_line(exc)}); run it on a GPU "
                               f"(pip install 'wan-deploy[cuda]') or rebuild it with --precision fp32") from None
            raise WanError(f"{self.path}: ONNX Runtime cannot load this graph ({_first_line(exc)}); rebuild the "
                           f"engines") from None
        ort_providers.check_session_providers(
            providers, self.session.get_providers(),
            lambda: ort_providers.cuda_load_failure(ort_providers.cuda_provider_library()))
        self.output_names = [o.name for o in self.session.get_outputs()]
        # where kept outputs live: the CUDA provider's memory when it runs the graph, else host memory
        self.memory = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.device_name = f"onnxruntime:{self.memory}:0"

    def _wrap(self, value) -> DeviceTensor:
        return DeviceTensor(value, value.shape(), _numpy_dtype(value), self.device_name, value.numpy)

    def _run(self, feeds: dict, keep: frozenset) -> dict:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, DeviceTensor):
                binding.bind_ortvalue_input(name, value.handle)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, self.memory if name in keep else "cpu")
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:  # a failed kernel (e.g. out of memory) is one line, not an ORT trace
            raise WanError(f"{self.component.name}: ONNX Runtime failed to run the graph ({_first_line(exc)})") from None
        values = binding.get_outputs()
        return {name: self._wrap(value) if name in keep else value.numpy()
                for name, value in zip(self.output_names, values)}

    def _to_device(self, array: np.ndarray) -> DeviceTensor:
        # own copy: the caller may reuse its array while the tensor lives
        value = self._ort.OrtValue.ortvalue_from_numpy(array.copy(), self.memory, 0)
        return self._wrap(value)

    def _close(self):
        self.session = None


_ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8"}


def _numpy_dtype(value) -> np.dtype:
    return np.dtype(_ONNX_TYPES[value.data_type()])
