"""`wan-export check`: every engine of a folder against the PyTorch reference, through polygraphy.

The reference runs once per shape point (a polygraphy runner of its own); each engine runner is compared
with it by polygraphy's comparator, with tolerances per precision. The ONNX graph always runs in ONNX
Runtime; a TensorRT engine runs too when its library and a GPU are present, otherwise the table says why not.
"""
from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from wan_export.components import ComponentSpec, RequestPoint, component_specs
from wan_export.precision import cpu_graph_runner
from wan_export.weights import weight_source_from_manifest
from wan_rt.errors import WanError
from wan_rt.finite import all_finite
from wan_rt.manifest import load_manifest

log = logging.getLogger("wan_export")

# (atol, rtol) per engine precision: an element passes when within either (polygraphy's elementwise rule).
# "tf32": an fp32 TensorRT engine built with TF32 allowed (the default; manifest target "tf32": true): its matmul and
# convolution inputs are rounded to a 10-bit mantissa (unit roundoff 2**-11 = 4.9e-4, fp16's) and summed in fp32,
# so it sits between fp32 and fp16. Estimated on the CPU by benchmarks/tf32_emulation.py (5B VAE shapes, random
# weights, 128x128): max |diff| 2.5e-3 (encoder), 4x under its atol; measuring it on a GPU is a gpu_check stage.
TOLERANCES = {"fp32": (1e-3, 1e-3), "tf32": (1e-2, 1e-2), "fp16": (2e-2, 2e-2), "bf16": (6e-2, 6e-2)}
# bf16's absolute tolerance scales with the output: atol = max(atol, k * max |reference|). bf16 keeps 8 mantissa bits,
# so its rounding is relative to the activations' magnitude, not to each element: PyTorch's own bf16 umT5 (fp32 norms,
# as the official code) differs from its fp32 module by 0.26 abs (0.066 of the output's max |value| ~4) on the tiny
# random-weight model, which a fixed 0.06 failed (issue 24, docs/onnxruntime_cuda.md).
SCALED_ATOL = {"bf16": 0.1}


def tolerance_key(info) -> str:
    """The TOLERANCES entry of an engine: its precision, or "tf32" for an fp32 TensorRT engine built with TF32."""
    if info.precision == "fp32" and (info.target or {}).get("tf32"):
        return "tf32"
    return info.precision


class ReferenceRunner(BaseRunner):
    """The PyTorch reference graph of one component as a polygraphy runner."""

    def __init__(self, spec: ComponentSpec, model: torch.nn.Module):
        super().__init__(name=f"torch-reference:{spec.name}", prefix="torch")
        self.spec = spec
        self.graph = spec.graph(model).eval()

    def get_input_metadata_impl(self):
        metadata = TensorMetadata()
        for tensor in self.spec.inputs:
            metadata.add(tensor.name, np.dtype(tensor.dtype), [d if isinstance(d, int) else -1 for d in tensor.shape])
        return metadata

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def infer_impl(self, feed_dict):
        args = self.spec.pack([torch.from_numpy(np.array(feed_dict[t.name])) for t in self.spec.inputs])
        started = time.perf_counter()
        with torch.no_grad():
            outputs = self.graph(*args)
        self.inference_time = time.perf_counter() - started  # polygraphy sums runner times
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return OrderedDict((t.name, np.ascontiguousarray(o.numpy())) for t, o in zip(self.spec.outputs, outputs))


@dataclass
class Row:
    component: str
    point: str
    runner: str
    output: str
    max_abs: float
    max_rel: float  # max |a - r| / max |r|
    cosine: float
    tolerance: str
    passed: bool
    note: str = ""


@dataclass
class CheckReport:
    rows: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    def failures(self) -> str:
        bad = [f"{r.component}/{r.output} at {r.point} ({r.runner}{', ' + r.note if r.note else ''})"
               for r in self.rows if not r.passed]
        return ", ".join(bad) if bad else "none"

    def table(self) -> str:
        header = ("component", "shape", "runner", "output", "max abs", "max rel", "cosine", "atol/rtol", "")
        lines = [header] + [
            (r.component, r.point, r.runner, r.output, f"{r.max_abs:.2e}", f"{r.max_rel:.2e}", f"{r.cosine:.6f}",
             r.tolerance, ("ok" if r.passed else "FAIL") + (f" ({r.note})" if r.note else ""))
            for r in self.rows]
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps({"passed": self.passed, "rows": [asdict(r) for r in self.rows]}, indent=2))


def _metrics(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float, float]:
    a, e = actual.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    max_abs = float(np.abs(a - e).max()) if a.size else 0.0
    max_rel = max_abs / max(float(np.abs(e).max()), 1e-30)
    denominator = np.linalg.norm(a) * np.linalg.norm(e)
    cosine = float(a @ e / denominator) if denominator > 0 else float(np.array_equal(a, e))
    return max_abs, max_rel, cosine


def check_points(limits) -> list[RequestPoint]:
    """The smallest and the largest request the engines accept."""
    (small_w, small_h), (large_w, large_h) = limits.extreme_sizes()
    return [RequestPoint(small_w, small_h, limits.frames[0], limits.batch[0]),
            RequestPoint(large_w, large_h, limits.frames[1], limits.batch[1])]


def _engine_runners(info, manifest) -> tuple[list, str]:
    """Runners for the engine itself (beyond its ONNX graph), or a note why none runs here."""
    if info.backend == "onnxruntime":
        return [], ""
    from wan_export.trt import gpu_compute_capability, library_available

    if gpu_compute_capability() is None:
        return [], f"{info.backend} engine not run: no GPU"
    if not library_available(info.backend):
        return [], f"{info.backend} engine not run: library missing"
    from wan_rt.backends import open_runner

    return [PolygraphyAdapter(open_runner(manifest, info.name))], ""


class PolygraphyAdapter(BaseRunner):
    """A wan-rt backend runner seen as a polygraphy runner."""

    def __init__(self, runner):
        super().__init__(name=f"{runner.component.backend}:{runner.component.name}", prefix=runner.component.backend)
        self.runner = runner

    def get_input_metadata_impl(self):
        metadata = TensorMetadata()
        for tensor in self.runner.component.inputs:
            metadata.add(tensor.name, np.dtype(tensor.dtype), [d if isinstance(d, int) else -1 for d in tensor.shape])
        return metadata

    def activate_impl(self):
        self.runner.__enter__()

    def deactivate_impl(self):
        self.runner.__exit__(None, None, None)

    def infer_impl(self, feed_dict):
        started = time.perf_counter()
        outputs = self.runner.run(dict(feed_dict))
        self.inference_time = time.perf_counter() - started
        return OrderedDict(outputs)


def check_engines(engines: Path, ckpt_dir: Path | None = None, json_path: Path | None = None,
                  only: tuple[str, ...] = ()) -> CheckReport:
    """Every component of the folder (or those named in `only`) against the PyTorch reference."""
    if not log.isEnabledFor(logging.DEBUG):
        G_LOGGER.module_severity = G_LOGGER.WARNING  # polygraphy narrates every run at INFO
    manifest = load_manifest(engines)
    source = weight_source_from_manifest(manifest.data, ckpt_dir)
    specs = component_specs(source.config, manifest.limits, source.tiny_vae.config if source.tiny_vae else None)
    if "sp" in manifest.data:  # sequence-parallel segment graphs are checked like any other engine
        from wan_export.components.dit_segments import add_segment_specs

        specs = add_segment_specs(specs, source.config, manifest.limits, manifest.data["sp"]["ranks"])
    specs = {s.name: s for s in specs}
    unknown = sorted(set(only) - set(manifest.components))
    if unknown:
        raise WanError(f"--only {', '.join(unknown)}: not a component of {manifest.root}; choose from "
                       f"{', '.join(manifest.components)}")
    if only:
        specs = {name: spec for name, spec in specs.items() if name in only}
    points = check_points(manifest.limits)
    report = CheckReport()
    for part in ("t5", "dit", "vae", "tiny_vae"):
        names = [n for n, s in specs.items() if s.weights == part and n in manifest.components]
        if not names:
            continue
        model = source.load(part)
        for name in names:
            spec, info = specs[name], manifest.components[name]
            atol, rtol = TOLERANCES[tolerance_key(info)]
            onnx_file = next(f for f in info.files if f.endswith(".onnx"))
            extra, note = _engine_runners(info, manifest)
            runners = [ReferenceRunner(spec, model),  # bf16 graphs: onnx's reference evaluator (no ORT CPU kernels)
                       cpu_graph_runner(str(manifest.root / onnx_file), info.precision, name), *extra]
            for point in points:
                label = f"{point.width}x{point.height}x{point.frames} b{point.batch}"
                feeds = spec.sample(point, np.random.default_rng(1))
                results = Comparator.run(runners, data_loader=[feeds])
                reference = results[0][1][0]
                atols, tolerance = output_atols(reference, atol, rtol, SCALED_ATOL.get(tolerance_key(info)))
                accuracy = Comparator.compare_accuracy(
                    results, comparisons=[(0, i) for i in range(1, len(runners))],
                    compare_func=SimpleCompareFunc(atol=atols, rtol=rtol))[0]  # one compare function
                for index, (runner_name, iterations) in enumerate(list(results)[1:], start=1):
                    passed_by_output = accuracy[(results[0][0], runner_name)][0]
                    report.rows.extend(_rows(name, label, runner_name.split(":")[0], reference, iterations[0],
                                             passed_by_output, tolerance))
                log.info("%s at %s: %s", name, label, "ok" if accuracy else "FAIL")
            if note:
                report.rows.append(Row(name, "-", info.backend, "-", float("nan"), float("nan"), float("nan"),
                                       "-", True, note))
        del model
    if json_path is not None:
        report.write_json(json_path)
    return report


def output_atols(reference, atol: float, rtol: float, scale: float | None) -> tuple[dict, str]:
    """Per-output absolute tolerances (scaled by each output's largest reference magnitude for bf16) and the
    tolerance as the table shows it."""
    if scale is None:
        return dict.fromkeys(reference.keys(), atol), f"{atol:g}/{rtol:g}"
    atols = {name: max(atol, scale * float(np.abs(value).max(initial=0.0))) for name, value in reference.items()}
    return atols, f"max({atol:g},{scale:g}*max|ref|)/{rtol:g}"


NON_FINITE = "non-finite values (NaN/Inf)"


def _rows(component, label, runner, reference, actual, passed_by_output, tolerance) -> list[Row]:
    """One row per named output; the decoder's many cache outputs folded into one row. An output holding NaN or
    Inf fails whatever the tolerance says (where the reference holds them too, both compare "equal")."""
    rows, caches = [], []
    for output in reference.keys():
        metrics = _metrics(actual[output], reference[output])
        finite = all_finite(actual[output])
        passed = bool(passed_by_output[output]) and finite
        note = "" if finite else NON_FINITE
        if output.startswith("cache_out."):
            caches.append((metrics, passed, note))
        else:
            rows.append(Row(component, label, runner, output, *metrics, tolerance, passed, note))
    if caches:
        rows.append(Row(component, label, runner, f"cache_out.* ({len(caches)})",
                        max(m[0] for m, _, _ in caches), max(m[1] for m, _, _ in caches),
                        min(m[2] for m, _, _ in caches), tolerance, all(p for _, p, _ in caches),
                        next((n for _, _, n in caches if n), "")))
    return rows
