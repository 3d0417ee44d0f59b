"""`wan-export build`: every component to ONNX (and to a TensorRT engine when asked), plus manifest.json.

The build happens in a hidden staging folder beside the output and is renamed into place only when every
component and the manifest are written, so a failed or interrupted build never leaves a folder that looks valid;
it keeps the components it finished for the next run of the same build (wan_export.resume).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from wan_export.components import RequestPoint, component_specs
from wan_export.disk import estimate_bytes, say_disk_needs
from wan_export.isolated import call_in_child
from wan_export.onnx_export import PROTOBUF_LIMIT, TORCH_DTYPES, cast_for_precision, export_graph
from wan_export.onnx_reuse import reuse_graphs
from wan_export.profiles import BuildProfile
from wan_export.resume import Staging, component_key, weights_fingerprint
from wan_export.weights import WeightSource
from wan_rt.errors import WanError
from wan_rt.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME, axis_size, sha256_file

log = logging.getLogger("wan_export")


@dataclass
class BuildOptions:
    backend: str
    external_data_threshold: int = PROTOBUF_LIMIT
    only: tuple[str, ...] = ()  # component names; empty = all
    timing_cache: Path | None = None
    optimization_level: int | None = None
    workspace_bytes: int | None = None  # TensorRT workspace pool limit (the default can exceed a build host's memory)
    compute_capabilities: tuple[str, ...] = ()
    strict_fp32: bool = False  # TensorRT: fp32 engines without TF32 (default: TF32 allowed, as PyTorch's convolutions)
    weight_streaming: bool = False  # TensorRT: engines whose weights can stream from host memory (--gpu-memory-budget)
    refittable: bool = False  # TensorRT: engines whose weights `wan-export refit` can replace (BuilderFlag.REFIT)
    extra: dict = field(default_factory=dict)
    sp: int = 0  # > 0: also export the sequence-parallel DiT segments for this many ranks (docs/sequence_parallel.md)
    sp_only: bool = False  # with sp: the segments instead of the whole `dit` graph
    onnx_from: Path | None = None  # an engines folder whose graphs to build from instead of exporting (onnx_reuse)
    tiny_vae_config: object | None = None  # TinyVAEConfig of the TAEHV decoder to export too (build() sets it)
    no_profile_tiny_vae: bool = False  # --tiny-vae none: not the profile's [model] tiny_vae either


def library_versions() -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "tensorrt", "tensorrt-rtx-cu13-bindings", "polygraphy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def effective_precision(profile: BuildProfile, key: str, backend: str) -> str:
    """bf16/fp16 graphs run on ONNX Runtime CUDA (wan_export.precision says what each component may take)."""
    from wan_export.precision import component_precision

    return component_precision(profile.precision[key], key, backend, profile.placement)


def spec_backend(profile: BuildProfile, spec, backend: str) -> str:
    """A component placed on the CPU (profile [placement]) is an ONNX Runtime graph whatever the build's backend."""
    return "onnxruntime" if profile.placement.get(spec.precision_key) == "cpu" else backend


def _build_engine(spec, onnx_path: Path, staging: Path, precision: str, options: BuildOptions) -> tuple[str, dict]:
    from wan_export.trt import EngineRequest

    shapes = {}
    for tensor in spec.inputs:
        if any(isinstance(d, str) for d in tensor.shape):
            shapes[tensor.name] = tuple(
                tuple(axis_size(d, spec.dims, which) for d in tensor.shape) for which in range(3))
    engine_name = f"{spec.name}.engine"
    request = EngineRequest(
        onnx_path=onnx_path, engine_path=staging / engine_name, library=options.backend, shapes=shapes,
        precision=precision, compute_capabilities=options.compute_capabilities, timing_cache=options.timing_cache,
        optimization_level=options.optimization_level, workspace_bytes=options.workspace_bytes,
        strict_fp32=options.strict_fp32, weight_streaming=options.weight_streaming, refittable=options.refittable)
    return engine_name, call_in_child(f"building {engine_name}", build_engine_logged, request,
                                      cleanup=lambda: remove_partial_engines(staging / engine_name))


def build_engine_logged(request) -> dict:
    """`build_engine` with its lines in the wan_export log (what a build child runs)."""
    from wan_export.trt import build_engine

    return build_engine(request, log=log.info)


def remove_partial_engines(engine_path: Path) -> None:
    """The temp files a killed builder leaves beside `engine_path` (wan_export.trt.builder._write_atomic)."""
    for partial in engine_path.parent.glob(f".{engine_path.name}.*.tmp"):
        partial.unlink(missing_ok=True)


def _specs(config, limits, options: BuildOptions) -> list:
    specs = component_specs(config, limits, options.tiny_vae_config)
    if options.only:
        unknown = set(options.only) - {s.name for s in specs}
        if unknown:
            raise WanError(f"unknown component(s) {sorted(unknown)}; choose from {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in options.only]
    if options.sp:
        from wan_export.components.dit_segments import add_segment_specs

        specs = add_segment_specs(specs, config, limits, options.sp, keep_dit=not options.sp_only)
    return specs


def export_part(source: WeightSource, limits, options: BuildOptions, part: str, names: list[str],
                precisions: dict, staging: Path) -> list[tuple[str, list[str], float]]:
    """Export the graphs `names` of checkpoint part `part` ("t5", "dit", "vae") into `staging`: one load of the
    reference serves them all. Returns (graph, files written, seconds) per graph. Specs hold closures, so they
    are made again here from the config (this runs in a child process when engines are built)."""
    specs = {s.name: s for s in _specs(source.config, limits, options)}
    wanted = [precisions[name] for name in names]
    model = source.load(part, TORCH_DTYPES["fp32" if "fp32" in wanted else wanted[0]])
    point = RequestPoint.default(limits)
    exported = []
    for name in names:
        spec = specs[name]
        started = time.perf_counter()
        cast_for_precision(model, precisions[name], spec.fp32_modules)
        files = export_graph(spec, model, staging, point, options.external_data_threshold)
        if getattr(spec, "write_extra", None) is not None:  # the SP segments' per-layer weights
            files += spec.write_extra(model, staging)
        exported.append((name, files, time.perf_counter() - started))
    return exported


def _reuse_relevant(options: BuildOptions) -> dict:
    """The build options a finished component depends on (not `only`, which picks components, nor the timing
    cache, which only speeds a build up)."""
    return {"compute_capabilities": list(options.compute_capabilities), "opt": options.optimization_level,
            "workspace": options.workspace_bytes, "external_data": options.external_data_threshold,
            "sp": options.sp, "sp_only": options.sp_only, "extra": options.extra,
            "strict_fp32": options.strict_fp32, "weight_streaming": options.weight_streaming,
            "refittable": options.refittable,
            "onnx_from": str(options.onnx_from) if options.onnx_from else None}


def memory_record(onnx_path: Path, target: dict) -> dict:
    """What the engine needs in device memory, for `wan-rt --memory auto` and planning: its weights (the
    builder's figure for TensorRT, else the graph's initializers) and, where the builder reports it, activations
    at the profile's max shapes (TensorRT reports no other point; ONNX Runtime reports none)."""
    from wan_export.trt.builder import onnx_weight_bytes  # no TensorRT import: reads the ONNX graph

    reported = target.get("reported_memory", {})
    record = {"weight_bytes": int(reported.get("weight_bytes") or onnx_weight_bytes(onnx_path))}
    if "activation_bytes" in reported:
        record["activation_bytes"] = {"max": int(reported["activation_bytes"])}
    return record


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def _replace_folder(staging: Path, out: Path) -> None:
    """Swap the finished staging folder in; an existing output is moved aside first, removed after."""
    backup = None
    if out.exists():
        if not (out / MANIFEST_NAME).is_file():
            raise WanError(f"{out} exists and is not an engines folder; choose another --out or remove it")
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(backup)
    staging.rename(out)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def build(profile: BuildProfile, source: WeightSource, out: Path, options: BuildOptions) -> Path:
    if source.tiny_vae is None and profile.tiny_vae and not options.no_profile_tiny_vae:
        from wan_export.checkpoints.taehv_file import with_tiny_vae

        source = with_tiny_vae(source, profile.tiny_vae, profile.seed)
    if source.tiny_vae is not None:
        tiny = source.tiny_vae.config
        options = dataclasses.replace(options, tiny_vae_config=tiny)
        log.info("tiny decoder: TAEHV %s (widths %s) from %s", tiny.variant, tiny.widths, source.tiny_vae.origin)
    backend = options.backend
    if backend == "onnxruntime" and (options.strict_fp32 or options.weight_streaming or options.refittable):
        raise WanError("--strict-fp32, --weight-streaming and --refittable are TensorRT build options (ONNX Runtime "
                       "folders can always be refitted); add --backend tensorrt or --backend tensorrt-rtx")
    if backend in ("tensorrt", "tensorrt-rtx"):
        from wan_export.trt.library import check_can_build, check_targets_fit

        # no GPU, no library, bad targets: fail now, not after the export
        target_gpus = check_can_build(backend, options.compute_capabilities)
        if options.refittable and backend == "tensorrt-rtx":
            from wan_export.trt.library import gpu_info

            if gpu_info() is None:  # found out the hard way: after minutes of export
                raise WanError("--refittable TensorRT-RTX engines need an NVIDIA GPU at build time (TensorRT-RTX "
                               "1.7 compiles refittable engines on the GPU: without one its builder fails with a "
                               "CUDA driver error); build them on the GPU machine, or build without --refittable")
    source.check_tokenizer()  # neither tokenizer.json nor spiece.model: refused before minutes of export
    if source.checkpoint is None:
        log.warning("NO CHECKPOINT GIVEN: building from %s. These engines make noise, not video; pass --ckpt-dir "
                    "for real weights.", source.description)
    specs = _specs(source.config, profile.limits, options)
    groups = dict.fromkeys(spec.precision_key for spec in specs)
    wanted = {group: effective_precision(profile, group, backend) for group in groups}
    precisions = {spec.name: wanted[spec.precision_key] for spec in specs}
    if backend in ("tensorrt", "tensorrt-rtx"):
        check_targets_fit(backend, target_gpus, precisions)  # before minutes of export
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("building %s engines for profile %s (backend %s) from %s into %s", len(specs), profile.name, backend,
             source.description, out)
    say_disk_needs(out.parent, estimate_bytes(source.config, specs, precisions, engines=backend != "onnxruntime",
                                              sp_weights=bool(options.sp)))
    build_key = {"profile": profile.to_dict(), "backend": backend, "options": _reuse_relevant(options),
                 "versions": library_versions()}
    weights = {part: weights_fingerprint(source, part) for part in {spec.weights for spec in specs}}
    keys = {spec.name: component_key(build_key, weights[spec.weights], spec.name, precisions[spec.name],
                                     spec.manifest_io()) for spec in specs}
    resumable = Staging(out)  # locked: one build per output at a time
    staging = resumable.path
    components = {}
    try:
        resumable.load(keys)
        progress = tqdm(total=len(specs), desc="components", unit="graph", disable=None)
        for part in ("t5", "dit", "vae", "tiny_vae"):
            part_specs = []
            for spec in (s for s in specs if s.weights == part):
                reused = resumable.reused(spec.name)
                if reused is None:
                    part_specs.append(spec)
                else:
                    components[spec.name] = reused
                    progress.update(1)
            if not part_specs:
                continue
            names = [s.name for s in part_specs]
            progress.set_postfix_str(", ".join(names))
            arguments = (source, profile.limits, options, part, names, precisions, staging)
            if options.onnx_from is not None:
                exported = reuse_graphs(Path(options.onnx_from), source, profile.limits, part_specs, precisions,
                                        staging)
                log.info("%s: graphs taken from %s", ", ".join(names), options.onnx_from)
            elif backend == "onnxruntime":
                exported = export_part(*arguments)
            else:  # the engine builds that follow need the memory an exporting process keeps
                exported = call_in_child(f"exporting {', '.join(names)}", export_part, *arguments)
            by_name = {s.name: s for s in part_specs}
            for graph, files, seconds in exported:
                spec = by_name[graph]
                started = time.perf_counter()
                precision = precisions[spec.name]
                main_file, target = files[0], {}
                placed = spec_backend(profile, spec, backend)
                if placed != "onnxruntime":
                    main_file, target = _build_engine(spec, staging / files[0], staging, precision, options)
                    files.append(main_file)
                components[spec.name] = {
                    "backend": placed, "precision": precision, "file": main_file,
                    "files": {name: sha256_file(staging / name) for name in files}, "target": target,
                    "memory": memory_record(staging / files[0], target), **spec.manifest_io()}
                if profile.placement.get(spec.precision_key) == "cpu":
                    components[spec.name]["device"] = "cpu"
                resumable.add(spec.name, keys[spec.name], components[spec.name])
                log.info("%s: done in %.1f s (%s, %s)", spec.name, seconds + time.perf_counter() - started, placed,
                         precision)
                progress.update(1)
        progress.close()
        components = {spec.name: components[spec.name] for spec in specs}  # the specs' order, reused or not
        resumable.remove_record()
        source.write_tokenizer(staging / "tokenizer")
        tokenizer_files = {f"tokenizer/{p.name}": sha256_file(p) for p in sorted((staging / "tokenizer").iterdir())
                           if p.is_file()}
        config = source.config
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": config.to_dict(), "weights": source.manifest_record(), "profile": profile.to_dict(),
            "limits": profile.limits.to_dict(),
            "sampling": {**config.to_dict()["sampling"], **profile.dmd_sampling(), "max_area": profile.limits.max_area},
            "tokenizer": {"dir": "tokenizer", "files": tokenizer_files},
            "versions": library_versions(), "components": components,
        }
        if options.sp:
            from wan_export.components.dit_segments import sp_manifest

            manifest["sp"] = sp_manifest(config, options.sp, precisions["dit_sp_attn"])
        _write_json_atomic(staging / MANIFEST_NAME, manifest)
        _replace_folder(staging, out)
    except BaseException:
        resumable.keep_finished()
        raise
    finally:
        resumable.release()
    log.info("wrote %s", out / MANIFEST_NAME)
    return out
