"""`wan-export refit`: new DiT weights (LoRAs, or another base checkpoint of the same shape) into an existing
engines folder, in place, without building its engines again.

The DiT graphs are exported again with the new weights (the exporter folds weights into new initializers, e.g.
transposed linear weights named `val_22`, so initializer names do not map to state-dict names; a fresh export is
the one exact map) and must come out as the same graph as the folder's, initializer for initializer. ONNX Runtime
components then take the new graph files; TensorRT engines built with `--refittable` are refitted from them
(`OnnxParserRefitter`, which needs a GPU: the refitter works on a deserialized engine).

Atomic: the new files get new names (`dit.r1.onnx`, `dit.r1.onnx.data`, `dit.r1.engine`; external-data locations
rewritten to match) beside the old ones, then manifest.json is replaced in one rename, the commit point; the old
files are removed after. An interruption before the rename leaves the old folder valid (with unreferenced files
that the next refit removes); after it, the new one.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from wan_export.build import BuildOptions, _specs, _write_json_atomic, export_part
from wan_export.isolated import call_in_child
from wan_export.lora import LoraSpec, with_loras
from wan_export.onnx_export import PROTOBUF_LIMIT
from wan_export.weights import base_source_from_manifest
from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, load_manifest, sha256_file

log = logging.getLogger("wan_export")

STAGING = ".refit.partial"
_GENERATION = re.compile(r"^([^.]+)(?:\.r\d+)?\.")  # "dit.onnx", "dit.r3.onnx.data" -> stem "dit"
NEEDS_GPU = ("refitting {backend} engines needs an NVIDIA GPU (the refitter works on a deserialized engine, "
             "which needs one) and none is visible: run wan-export refit on the GPU machine, or rebuild with "
             "wan-export build --lora")


def versioned(name: str, generation: int) -> str:
    """`dit.onnx` -> `dit.r2.onnx` (and `dit.r1.onnx.data` -> `dit.r2.onnx.data`)."""
    return _GENERATION.sub(lambda m: f"{m.group(1)}.r{generation}.", name, count=1)


def refit(engines: Path, loras: list[LoraSpec], ckpt_dir: Path | None = None) -> Path:
    """Give the DiT of engines folder `engines` the weights base + `loras` (base: `ckpt_dir`, or the folder's own
    base weights); the LoRAs replace the ones the folder had. Returns the folder."""
    engines = Path(engines)
    manifest = load_manifest(engines)  # every file present with its sha256
    data = manifest.data
    if not loras and ckpt_dir is None:
        raise WanError("nothing to refit: give --lora FILE[:SCALE] (repeatable) and/or --ckpt-dir with a new base "
                       "checkpoint of the same shape (--ckpt-dir alone: that checkpoint's DiT, without LoRAs)")
    if "sp" in data:
        raise WanError(f"{engines}: refit does not handle sequence-parallel folders (built with --sp) yet; rebuild "
                       f"with wan-export build --sp N --lora ...")
    base = base_source_from_manifest(data, ckpt_dir)
    if base.checkpoint is not None and base.checkpoint.dit_config != base.config.dit:
        raise WanError(f"--ckpt-dir {ckpt_dir}: its DiT has other sizes ({base.checkpoint.dit_config}) than the one "
                       f"{engines} was built for ({base.config.dit}); refit needs the same shape, rebuild instead")
    source = with_loras(base, list(loras))
    names = [s.name for s in _specs(source.config, manifest.limits, BuildOptions(backend="onnxruntime"))
             if s.weights == "dit" and s.name in manifest.components]
    if not names:
        raise WanError(f"{engines} has no DiT graph to refit")
    infos = {name: manifest.components[name] for name in names}
    _check_refittable(engines, infos)
    with _locked(engines):
        _remove_leftovers(engines, names, data)
        generation = int(data.get("refit", {}).get("count", 0)) + 1
        log.info("refit %s: DiT graphs %s from %s", engines, ", ".join(names), source.description
                 + "".join(f" + LoRA {spec.path.name} (scale {spec.scale:g})" for spec in loras))
        _refit_components(engines, source, manifest, infos, generation)
    log.info("refit %s: done (refit %d)", engines, generation)
    return engines


def _check_refittable(engines: Path, infos: dict) -> None:
    """One line, before any work, for engines that cannot be refitted here."""
    libraries = set()
    for info in infos.values():
        if info.backend == "onnxruntime":
            continue
        if not info.target.get("refittable"):
            raise WanError(f"{engines}/{info.file} was built without --refittable, so its weights cannot be "
                           f"replaced; rebuild with wan-export build --refittable (or with --lora)")
        libraries.add(info.backend)
    if libraries:
        from wan_export.trt import library as libs

        for library in sorted(libraries):
            libs.load(library)  # missing library: one line naming the pip package
        if libs.gpu_info() is None:
            raise WanError(NEEDS_GPU.format(backend=", ".join(sorted(libraries))))


@contextmanager
def _locked(engines: Path):
    """One refit (or build swap) of a folder at a time; locks the folder itself, so no file is added to it."""
    handle = os.open(engines, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise WanError(f"{engines}: another wan-export refit is running on this folder; wait for it") from None
        yield
    finally:
        os.close(handle)


def _remove_leftovers(engines: Path, names: list[str], data: dict) -> None:
    """Files an interrupted refit left: the staging folder, and DiT files of a generation the manifest never named."""
    shutil.rmtree(engines / STAGING, ignore_errors=True)
    named = {f for entry in data["components"].values() for f in entry["files"]}
    pattern = re.compile(rf"^({'|'.join(map(re.escape, names))})\.r\d+\.")
    for path in engines.iterdir():
        if path.is_file() and pattern.match(path.name) and path.name not in named:
            log.info("refit: removing %s, left by an interrupted refit", path.name)
            path.unlink()


def _refit_components(engines: Path, source, manifest, infos: dict, generation: int) -> dict:
    data = manifest.data
    old_files = [f for info in infos.values() for f in info.files]
    external = any(f.endswith(".onnx.data") for f in old_files)
    options = BuildOptions(backend="onnxruntime", external_data_threshold=0 if external else PROTOBUF_LIMIT)
    precisions = {name: info.precision for name, info in infos.items()}
    staging = engines / STAGING
    staging.mkdir()
    placed: list[Path] = []
    committed = False
    try:
        arguments = (source, manifest.limits, options, "dit", list(infos), precisions, staging)
        if all(info.backend == "onnxruntime" for info in infos.values()):
            exported = export_part(*arguments)
        else:  # the refit that follows needs the memory an exporting process keeps
            exported = call_in_child(f"exporting {', '.join(infos)}", export_part, *arguments)
        components = dict(data["components"])
        for graph, files, _seconds in exported:
            info = infos[graph]
            old_onnx = next(f for f in info.files if f.endswith(".onnx"))
            _check_same_graph(graph, engines / old_onnx, staging / files[0])
            renamed = _place(staging, files, engines, generation)
            placed += [engines / name for name in renamed.values()]
            main = renamed[files[0]]
            if info.backend != "onnxruntime":
                main = versioned(info.file, generation)
                placed.append(engines / main)
                call_in_child(f"refitting {info.file}", refit_engine_file, info.backend, engines / info.file,
                              engines / renamed[files[0]], engines / main)
            names = [*renamed.values(), *([main] if main not in renamed.values() else [])]
            components[graph] = {**data["components"][graph], "file": main,
                                 "files": {name: sha256_file(engines / name) for name in names}}
        record = {"count": generation, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "components": list(infos)}
        _write_json_atomic(engines / MANIFEST_NAME, {**data, "weights": source.manifest_record(),
                                                     "components": components, "refit": record})
        committed = True  # the new manifest names the new files: from here the old ones are garbage
    except BaseException:
        if not committed:
            for path in placed:
                path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kept = {f for entry in components.values() for f in entry["files"]}
    for name in old_files:
        if name not in kept:
            (engines / name).unlink(missing_ok=True)
    return components


def _graph_signature(path: Path) -> dict:
    """Everything of an ONNX graph but its weight values."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    return {
        "nodes": [(n.op_type, n.domain, tuple(n.input), tuple(n.output), tuple(sorted(a.name for a in n.attribute)))
                  for n in graph.node],
        "initializers": sorted((t.name, tuple(t.dims), t.data_type) for t in graph.initializer),
        "io": [(v.name, v.type.SerializeToString()) for v in (*graph.input, *graph.output)],
        "functions": [(f.domain, f.name, len(f.node)) for f in model.functions],
    }


def _check_same_graph(graph: str, old: Path, new: Path) -> None:
    before, after = _graph_signature(old), _graph_signature(new)
    differs = [key for key in before if before[key] != after[key]]
    if differs:
        raise WanError(f"{graph}: the graph exported now differs from the folder's ({', '.join(differs)}; torch or "
                       f"wan-deploy changed since the build?), so its weights cannot simply be replaced; rebuild "
                       f"with wan-export build --lora")


def _place(staging: Path, files: list[str], folder: Path, generation: int) -> dict[str, str]:
    """Move the exported `files` into `folder` under this generation's names; returns {exported: placed}."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    renamed = {name: versioned(name, generation) for name in files}
    for name in files:
        if name.endswith(".onnx"):
            model = onnx.load(str(staging / name), load_external_data=False)
            for tensor in filter(uses_external_data, _get_all_tensors(model)):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = renamed.get(entry.value, entry.value)
            onnx.save_model(model, str(staging / name))  # the proto only: the weights stay in their file
    for name in files:
        os.replace(staging / name, folder / renamed[name])
    return renamed


def refit_engine_file(library: str, engine_path: Path, onnx_path: Path, out_path: Path) -> None:
    """Write `out_path`: the engine at `engine_path` with the weights of `onnx_path` (same graph). Needs a GPU."""
    from wan_export.trt import library as libs
    from wan_export.trt.builder import _make_logger, _one_line, _write_buffer

    if libs.gpu_info() is None:
        raise WanError(NEEDS_GPU.format(backend=library))
    trt = libs.load(library)
    logger = _make_logger(trt, log.info, library)
    with logger.active():
        engine = trt.Runtime(logger.logger).deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise WanError(f"{engine_path}: {library} could not load the engine to refit it: "
                           f"{'; '.join(logger.errors) or 'deserialize_cuda_engine returned None'}")
        refitter = trt.Refitter(engine, logger.logger)
        parser = trt.OnnxParserRefitter(refitter, logger.logger)
        if not parser.refit_from_file(str(onnx_path)):
            errors = [_one_line(parser.get_error(i)) for i in range(parser.num_errors)]
            raise WanError(f"{engine_path}: {library} could not take the weights of {onnx_path.name}: "
                           f"{'; '.join(errors + logger.errors) or 'unknown error'}")
        if not refitter.refit_cuda_engine():
            missing = list(getattr(refitter, "get_missing_weights", list)())
            why = f"weights not given: {', '.join(missing[:5])}" if missing else "; ".join(logger.errors)
            raise WanError(f"{engine_path}: {library} refit failed ({why or 'unknown error'})")
        _write_buffer(Path(out_path), engine.serialize())
    log.info("refitted %s -> %s", Path(engine_path).name, Path(out_path).name)
