"""ONNX graph -> serialized TensorRT / TensorRT-RTX engine, one graph per call.

    target = build_engine(EngineRequest(onnx_path=..., engine_path=..., library="tensorrt-rtx",
                                        shapes={"x": ((1, 1, 32), (1, 64, 32), (1, 256, 32))}, precision="bf16"))

`library="tensorrt"` builds on (and for) the NVIDIA GPU of this machine. `library="tensorrt-rtx"` builds ahead of
time on any machine, GPU or not, for the compute capabilities asked (default SM89, the RTX 4090); the engine's
kernels are compiled just in time on the target GPU when it is first loaded there.

What TensorRT-RTX 1.7 does on a CPU-only machine (checked with 1.7.1.116):
- strongly typed networks, fp32 / fp16 / bf16 graphs: yes (bf16 not for SM75: the build fails, said in one line);
- optimization profiles with dynamic axes: yes;
- builder_optimization_level: accepted, but the AOT engine bytes are identical for levels 0 and 5 (the kernel
  choice happens at JIT time on the GPU), so it is recorded, not relied on;
- timing cache: no. The API exists but is a deprecated no-op since TensorRT-RTX 1.2 and, per NVIDIA, makes an AOT
  build query a GPU; `timing_cache` is therefore not touched for tensorrt-rtx (a log line says so). TensorRT-RTX's
  *runtime* cache (kernels JIT-compiled on the GPU) belongs to the runtime, not to this builder;
- inspecting an engine (`Runtime.get_engine_validity`, `deserialize_cuda_engine`): needs a GPU. The 64-byte engine
  header can be read without one: see `engine_header_info` (in `wan_rt.backends.trt`, which the runtime shares).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from wan_rt.backends.trt_engine_check import engine_header_info  # noqa: F401 (re-exported)
from wan_rt.backends.trt_library import make_logger
from wan_rt.errors import WanError
from wan_export.trt import library as libs

PRECISIONS = {"fp32": "FLOAT", "bf16": "BF16", "fp16": "HALF"}  # precision -> TensorRT DataType name
MAX_OPTIMIZATION_LEVEL = 5
_MAX_FORWARDED_WARNINGS = 20


@dataclass(frozen=True)
class EngineRequest:
    onnx_path: Path  # may use external data (a .onnx.data file beside it): parsed from the path so it is found
    engine_path: Path  # written atomically: a temp file in the same folder, renamed when complete
    library: str  # "tensorrt" | "tensorrt-rtx"
    shapes: dict  # input name -> (min, opt, max) shapes, for every input with a dynamic axis
    precision: str  # "fp32" | "bf16" | "fp16": the graph's own dtype (strongly typed network); recorded
    compute_capabilities: tuple[str, ...] = ()  # tensorrt-rtx only: ("SM89",), ("SM86", "SM89"), ("CURRENT",)
    timing_cache: Path | None = None  # tensorrt: read if present, written back after the build
    optimization_level: int | None = None  # builder_optimization_level, 0..5
    workspace_bytes: int | None = None
    strict_fp32: bool = False  # clear TF32: fp32 matmuls/convolutions in true fp32 (default: TF32 allowed)
    weight_streaming: bool = False  # BuilderFlag.WEIGHT_STREAMING: weights may stay in host memory at run time
    refittable: bool = False  # BuilderFlag.REFIT: `wan-export refit` can replace the weights (wan_export.refit)


def library_available(library: str) -> bool:
    return libs.library_available(library)


def gpu_compute_capability() -> str | None:
    return libs.gpu_compute_capability()


def check_can_build(library: str, compute_capabilities: tuple[str, ...] = ()) -> tuple[str, ...]:
    return libs.check_can_build(library, compute_capabilities)


_BUDGET_LINE = re.compile(r"Exceeded mem budget of (\d+)\. Need (\d+)")


def _allow_attention_fallback(trt, network, precision: str, log) -> None:
    """ONNX Attention (opset 23) becomes IAttention, fused into a flash kernel for fp16/bf16. fp32 attention (the
    VAE's per-frame attention, fp32 test builds) has no dedicated kernel: let TensorRT decompose it there, and keep
    the default elsewhere so a half-precision attention without a kernel fails loudly instead of going slow."""
    if precision != "fp32" or not hasattr(trt, "IAttentionBoundaryLayer"):
        return
    kinds = {getattr(trt.LayerType, name, None) for name in ("ATTENTION_INPUT", "ATTENTION_OUTPUT")}
    marked = set()
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in kinds:
            layer.__class__ = trt.IAttentionBoundaryLayer  # the bindings hand out the base ILayer
            attention = layer.attention
            # Mark through every boundary layer: wrappers are temporary, so an id()-based "seen" set can skip an
            # attention whose wrapper reuses a freed address. Names are stable; setting the flag twice is harmless.
            attention.decomposable = True
            marked.add(attention.name)
    if marked:
        log(f"  {len(marked)} fp32 attention op(s) may be decomposed (no fused fp32 kernel)")


def _memory_budget_hint(errors: list[str]) -> str:
    """Plain words for the builder's device-memory estimate, when that is why it failed ("" otherwise)."""
    match = next((m for m in map(_BUDGET_LINE.search, errors) if m), None)
    if match is None:
        return ""
    budget, need = (int(g) / 1e9 for g in match.groups())
    return (f"the engine would need about {need:.1f} GB of GPU memory at the profile's largest shapes, over the "
            f"builder's budget of {budget:.1f} GB (weights + workspace; host memory is not the limit): lower the "
            f"profile's maximum shapes or raise --workspace-gb if the target GPU has the room. Library says: ")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _make_logger(trt, log, label: str):
    """A TensorRT logger that keeps errors (for the WanError) and forwards distinct warnings to `log`."""
    return make_logger(trt, log, label, _MAX_FORWARDED_WARNINGS)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def _write_atomic(path: Path, fill) -> int:
    """Create `path` through a temp file in the same folder: `fill(handle)` writes it and returns the byte count.
    On any failure nothing is left behind (an old file at `path` stays as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as handle:
            written = fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        return written
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _write_buffer(path: Path, data) -> int:
    return _write_atomic(path, lambda handle: handle.write(memoryview(data)))


def _build_into(trt, builder, network, config, engine_path: Path, failure) -> int:
    """Build the engine straight into `engine_path` (atomically); returns its size. `failure()` makes the error.

    Where the library can stream the plan (TensorRT 10.x, TensorRT-RTX), its bytes go to the file as they come
    instead of into one more engine-sized host buffer (5B DiT, 9.5 GiB engine: peak RSS 20.1 instead of 21.1 GiB,
    about half of it the memory-mapped ONNX weights, which the kernel can drop under pressure)."""
    if hasattr(builder, "build_serialized_network_to_stream") and hasattr(trt, "IStreamWriter"):
        class FileWriter(trt.IStreamWriter):
            def __init__(self, handle):
                trt.IStreamWriter.__init__(self)
                self.handle, self.written = handle, 0

            def write(self, data):
                count = self.handle.write(data)
                self.written += count
                return count

        def fill(handle):
            writer = FileWriter(handle)
            if not builder.build_serialized_network_to_stream(network, config, writer):
                raise failure()
            return writer.written
    else:
        def fill(handle):
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise failure()
            return handle.write(memoryview(serialized))
    return _write_atomic(engine_path, fill)


def _dims(shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape)


def _check_request(request: EngineRequest) -> None:
    if request.precision not in PRECISIONS:
        raise WanError(f"precision {request.precision!r} is not one of {sorted(PRECISIONS)}")
    level = request.optimization_level
    if level is not None and not (0 <= level <= MAX_OPTIMIZATION_LEVEL):
        raise WanError(f"optimization level {level} is outside 0..{MAX_OPTIMIZATION_LEVEL}")
    if request.workspace_bytes is not None and request.workspace_bytes <= 0:
        raise WanError(f"workspace size {request.workspace_bytes} must be positive")
    for name, triple in request.shapes.items():
        if len(triple) != 3:
            raise WanError(f"shapes[{name!r}] must be (min, opt, max), got {triple!r}")


def _network_inputs(network) -> dict:
    return {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}


def _profile_shapes(network, shapes: dict) -> dict:
    """Check `shapes` against the network's inputs; returns {name: (min, opt, max)} as int tuples."""
    inputs = _network_inputs(network)
    described = ", ".join(f"{name}{_dims(t.shape)}" for name, t in inputs.items())
    unknown = [name for name in shapes if name not in inputs]
    if unknown:
        raise WanError(f"shapes name input(s) {unknown} that the network lacks; its inputs are: {described}")
    missing = [name for name, t in inputs.items() if -1 in _dims(t.shape) and name not in shapes]
    if missing:
        raise WanError(f"network input(s) {missing} have dynamic axes but no (min, opt, max) shapes were given; "
                       f"inputs: {described}")
    profile = {}
    for name, triple in shapes.items():
        tensor = inputs[name]
        declared = _dims(tensor.shape)
        if tensor.is_shape_tensor:
            raise WanError(f"input {name} is a shape tensor; shape-tensor profiles are not supported")
        low, opt, high = (tuple(int(d) for d in s) for s in triple)
        for label, shape in (("min", low), ("opt", opt), ("max", high)):
            if len(shape) != len(declared):
                raise WanError(f"input {name}: {label} shape {shape} has rank {len(shape)}, the network's "
                               f"{declared} has rank {len(declared)}")
            wrong = [axis for axis, (want, got) in enumerate(zip(declared, shape)) if want != -1 and want != got]
            if wrong:
                raise WanError(f"input {name}: {label} shape {shape} differs from the network's fixed axes "
                               f"{declared} at axis {wrong}")
        if not all(1 <= a <= b <= c for a, b, c in zip(low, opt, high)):
            raise WanError(f"input {name}: need 1 <= min <= opt <= max on every axis, got min {low} opt {opt} "
                           f"max {high}")
        profile[name] = (low, opt, high)
    return profile


def _float_dtypes(network) -> Counter:
    counts: Counter = Counter()
    floats = set(PRECISIONS.values())
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            name = layer.get_output(j).dtype.name
            if name in floats:
                counts[name] += 1
    return counts


def _check_precision(network, precision: str, log) -> Counter:
    counts = _float_dtypes(network)
    wanted = PRECISIONS[precision]
    if precision != "fp32" and counts and counts[wanted] == 0:
        raise WanError(f"precision {precision} was asked, but the graph computes in "
                       f"{', '.join(sorted(counts))} only: export the graph with {precision} weights")
    others = {k: v for k, v in counts.items() if k != wanted and k != "FLOAT"}
    if others:
        log(f"note: a {precision} graph with tensors in {dict(others)} too")
    return counts


def _load_timing_cache(config, path: Path | None, log):
    """tensorrt only: the timing cache from `path` (or a fresh one), attached to `config`."""
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = None
    try:
        cache = config.create_timing_cache(data)
    except Exception as exc:
        log(f"timing cache {path}: unreadable ({_one_line(exc)}); starting a fresh one")
    if cache is not None and config.set_timing_cache(cache, False):
        if data:
            log(f"timing cache: loaded {path} ({len(data)} bytes)")
        return cache
    if data:
        log(f"timing cache {path}: made for another GPU or TensorRT version; starting a fresh one")
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config, cache, path: Path, log) -> None:
    current = config.get_timing_cache() or cache
    serialized = current.serialize()
    _write_buffer(path, serialized)
    log(f"timing cache: wrote {path} ({serialized.nbytes} bytes)")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


def build_engine(request: EngineRequest, log=print) -> dict:
    """Build one engine; returns the manifest "target" entry.

    {"library", "version", "compute_capabilities": [...] ("SM89"... for tensorrt-rtx; this GPU's for tensorrt,
    with "gpu": its name), "precision", "profile": {input: {"min", "opt", "max"}}, "strongly_typed", "tf32",
    "optimization_level"}, and with weight streaming "weight_streaming": true, "weight_bytes" (the graph's) and
    "streamable_bytes" (the engine's, None when built without a GPU). Every failure is one WanError line; a failed build leaves no engine (or temp) file.
    """
    spec = libs.get_library(request.library)
    _check_request(request)
    gpu = None
    if spec.needs_gpu_to_build or "CURRENT" in (cc.upper() for cc in request.compute_capabilities):
        gpu = libs.gpu_info()
    if spec.needs_gpu_to_build and gpu is None:
        raise WanError(libs.NO_GPU_MESSAGE)
    trt = libs.load(request.library)
    onnx_path = Path(request.onnx_path)
    if not onnx_path.is_file():
        raise WanError(f"ONNX graph {onnx_path} does not exist")
    version = libs.version(trt)
    libs.check_version(request.library, version)
    logger = _make_logger(trt, log, request.library)
    with logger.active():  # the library's messages of this build land in `logger.errors`
        return _build(trt, request, spec, gpu, logger, version, log)


def _build(trt, request: EngineRequest, spec, gpu, logger, version: str, log) -> dict:
    onnx_path, engine_path = Path(request.onnx_path), Path(request.engine_path)
    label = f"{request.library} {version}"
    builder = trt.Builder(logger.logger)
    config = builder.create_builder_config()
    targets = libs.set_targets(trt, config, request.library, tuple(request.compute_capabilities), gpu)

    flags = libs.strongly_typed_flag(trt)
    strongly_typed = flags is not None
    if flags is None:  # TensorRT < 9: explicit batch, weakly typed
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_one_line(parser.get_error(i)) for i in range(parser.num_errors)]
        extra = [e for e in logger.errors if not any(e in p or p in e for p in errors)]
        raise WanError(f"{label} could not parse {onnx_path}: {'; '.join(extra + errors) or 'unknown error'}")

    profile_shapes = _profile_shapes(network, request.shapes)
    counts = _check_precision(network, request.precision, log)
    _allow_attention_fallback(trt, network, request.precision, log)
    if profile_shapes:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile_shapes.items():
            profile.set_shape(name, low, opt, high)
        if config.add_optimization_profile(profile) < 0:
            raise WanError(f"{label} rejected the optimization profile {profile_shapes}: "
                           f"{'; '.join(logger.errors) or 'invalid profile'}")

    to_set, to_clear = libs.precision_flags(trt, request.precision, strongly_typed, request.strict_fp32)
    if request.weight_streaming:
        to_set.append(libs.weight_streaming_flag(trt, request.library, strongly_typed))
    if request.refittable:
        to_set.append(trt.BuilderFlag.REFIT)  # both libraries have it (TensorRT 8+, TensorRT-RTX 1.x)
    for flag in to_set:
        config.set_flag(flag)
    for flag in to_clear:
        config.clear_flag(flag)
    tf32 = hasattr(trt.BuilderFlag, "TF32") and config.get_flag(trt.BuilderFlag.TF32)
    if request.optimization_level is not None:
        config.builder_optimization_level = request.optimization_level
    if request.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_bytes)
    cache = None
    if request.timing_cache is not None:
        if spec.timing_cache:
            cache = _load_timing_cache(config, Path(request.timing_cache), log)
        else:
            log(f"timing cache: not used; {request.library} ignores timing caches (a deprecated no-op since "
                f"TensorRT-RTX 1.2: kernels are tuned just in time on the target GPU), so "
                f"{request.timing_cache} is neither read nor written")

    where = ", ".join(targets["compute_capabilities"])
    if "gpu" in targets:
        where += f" ({targets['gpu']})"
    dtypes = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
    log(f"{label}: building {engine_path.name} from {onnx_path.name} for {where}; precision {request.precision} "
        f"({'strongly typed' if strongly_typed else 'weakly typed'}; tensors: {dtypes or 'none'}; "
        f"tf32 {'on' if tf32 else 'off'}; weight streaming {'on' if request.weight_streaming else 'off'}; "
        f"optimization level {config.builder_optimization_level})")
    for name, (low, opt, high) in profile_shapes.items():
        log(f"  profile {name}: min {low} opt {opt} max {high}")
    started = time.perf_counter()
    size = _build_into(trt, builder, network, config, engine_path, lambda: WanError(
        f"{label} failed to build {engine_path.name} from {onnx_path} for {where}: {_memory_budget_hint(logger.errors)}"
        f"{'; '.join(logger.errors) or 'the builder returned no engine'}"))
    seconds = time.perf_counter() - started
    log(f"{label}: built {engine_path} ({_size(size)}) in {seconds:.1f} s")
    if cache is not None:
        _save_timing_cache(config, cache, Path(request.timing_cache), log)

    target = {"library": request.library, "version": version, **targets, "precision": request.precision,
              "profile": {name: {"min": list(low), "opt": list(opt), "max": list(high)}
                          for name, (low, opt, high) in profile_shapes.items()},
              "strongly_typed": strongly_typed, "tf32": bool(tf32),
              "optimization_level": int(config.builder_optimization_level)}
    if logger.reported:  # at the profile's max shapes (the builder reports no other point)
        target["reported_memory"] = dict(logger.reported)
    if request.refittable:
        target["refittable"] = True
    if request.weight_streaming:
        target["weight_streaming"] = True
        target["weight_bytes"] = onnx_weight_bytes(onnx_path)
        target["streamable_bytes"] = _streamable_bytes(trt, logger, engine_path, gpu, log)
    return target


def onnx_weight_bytes(onnx_path: Path) -> int:
    """Bytes of the graph's initializers (external data included, not read): what weight streaming can at most
    leave in host memory; TensorRT streams the weights of its matmul/convolution layers, so a bit less."""
    import numpy as np
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        count = int(np.prod(tensor.dims, dtype=np.int64))
        total += count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return total


def _streamable_bytes(trt, logger, engine_path: Path, gpu, log) -> int | None:
    """The engine's `streamable_weights_size`, read by deserializing it, which needs a GPU (None without one:
    a TensorRT-RTX engine built ahead of time on a CPU; the runtime reads the number when it loads the engine)."""
    if gpu is None:
        log("  weight streaming: streamable bytes are known once the engine is loaded on a GPU (none here); "
            "manifest records the graph's weight bytes")
        return None
    try:
        engine = trt.Runtime(logger.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        size = int(engine.streamable_weights_size) if engine is not None else None
    except Exception as exc:
        log(f"  weight streaming: streamable bytes not read ({_one_line(exc)})")
        return None
    if size is not None:
        log(f"  weight streaming: {_size(size)} of the weights can stream")
    return size


# --- reading engines back -----------------------------------------------------------------------------------
# engine_header_info (the TensorRT-RTX header, read without TensorRT or a GPU) lives in the runtime, which needs it
# to refuse an engine built for another GPU or version; imported above and re-exported from wan_export.trt.


def inspect_engine(engine_path: Path, library: str, log=print) -> dict | None:
    """Deserialize an engine to check it fits this machine, and list its I/O; None (and a log line) without a GPU.

    Returns {"valid": bool, "library", "version", "gpu", "gpu_compute_capability", and either "reason" (invalid:
    built by another version, for another GPU, ...) or "inputs"/"outputs": [{"name", "dtype", "shape",
    "profile": {"min", "opt", "max"}}]}. TensorRT-RTX's `get_engine_validity` is asked first when present.
    """
    libs.get_library(library)
    gpu = libs.gpu_info()
    if gpu is None:
        log(f"{engine_path}: not inspected: deserializing a {library} engine needs an NVIDIA GPU and none is visible")
        return None
    trt = libs.load(library)
    data = Path(engine_path).read_bytes()
    logger = _make_logger(trt, log, library)
    info = {"library": library, "version": libs.version(trt), "gpu": gpu[0], "gpu_compute_capability": gpu[1]}
    with logger.active():
        return _inspect(trt, data, logger, info)


def _inspect(trt, data: bytes, logger, info: dict) -> dict:
    runtime = trt.Runtime(logger.logger)
    if hasattr(runtime, "get_engine_validity"):
        validity, diagnostics = runtime.get_engine_validity(data)
        reasons = [name for name, bit in trt.EngineInvalidityDiagnostics.__members__.items()
                   if int(diagnostics) & int(bit)]
        info["validity"], info["diagnostics"] = validity.name, reasons
        if validity == trt.EngineValidity.INVALID:
            return {**info, "valid": False, "reason": ", ".join(reasons) or "; ".join(logger.errors) or "invalid"}
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        return {**info, "valid": False,
                "reason": "; ".join(logger.errors) or "deserialize_cuda_engine returned None"}
    tensors = {"inputs": [], "outputs": []}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry = {"name": name, "dtype": engine.get_tensor_dtype(name).name,
                 "shape": list(_dims(engine.get_tensor_shape(name)))}
        if is_input and -1 in entry["shape"] and engine.num_optimization_profiles > 0:
            low, opt, high = engine.get_tensor_profile_shape(name, 0)
            entry["profile"] = {"min": list(_dims(low)), "opt": list(_dims(opt)), "max": list(_dims(high))}
        tensors["inputs" if is_input else "outputs"].append(entry)
    return {**info, "valid": True, **tensors}
