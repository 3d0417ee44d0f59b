"""Device memory of each 720p engine and of each `wan-rt --memory` mode, from real TensorRT-RTX ahead-of-time builds.

    python benchmarks/memory_720p.py --work /tmp/mem720 --steps dit-1      # one build per call (watch its RSS)
    python benchmarks/memory_720p.py --work /tmp/mem720                    # the rest, then the table

Builds (random weights, seed 0: sizes do not depend on the values) the full-WIDTH 720p components at reduced
DEPTH with `wan_export.build.build` for SM89 (RTX 4090), and reads the memory figures the builder reports
("Total Weights Memory", "Total Activation Memory": manifest component "memory"):
- DiT with 1, 2, 3 blocks, umT5 with 1, 2, 3 layers (--dit-depths, --t5-depths): weights are a + b * layers,
  extrapolated to 30 and 24; activations nearly do not depend on depth (the DiT's second block adds ~0.7 GB, each
  later one the ~17 MB it precomputes), so they are extrapolated linearly from the two deepest builds;
- the VAE encoder and both decoder graphs at full size (vae_decoder_step with its opt point at SMALL_OPT).
Mode needs follow wan_rt.residency (weights + one shared activation block) and, as "total", add the largest set
of engine inputs/outputs held on the device (the decoder's caches, twice).
TensorRT reports activations only at a profile's max shapes, so each component is also built with a profile
whose max is the one request 1280x704 x 121 frames (batch 2 for the DiT and umT5), unless that profile gives the
component the same shapes as the 720p profile (then the 720p build already is that point). Steps already built
in --work are reused. Writes benchmarks/results/memory_720p.json and prints markdown tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import itertools
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path, package in ((ROOT, "wan_export"), (ROOT / "runtime", "wan_rt")):  # a checkout without pip install
    if importlib.util.find_spec(package) is None:  # (appended, and only when missing: runtime/ has a `triton`)
        sys.path.append(str(path))

from wan_rt.residency import HEADROOM, STAGE_ORDER, stages
from export_memory import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

from wan_export.components import component_specs
from wan_export.config import TI2V_5B
from wan_export.profiles import load_profile

log = logging.getLogger("memory_720p")

FULL_DEPTH = {"dit": TI2V_5B.dit.num_layers, "t5": TI2V_5B.t5.num_layers}  # 30 blocks, 24 layers
DEPTHS = {"dit": (1, 2, 3), "t5": (1, 2, 3)}  # layers built per part (--dit-depths, --t5-depths)
VAE_PARTS = ("vae_encoder", "vae_decoder_first", "vae_decoder_step")
COMPONENT_OF = {"dit": "dit", "t5": "text_encoder"}
# vae_decoder_step is exported at (its sample inputs are) the profile's opt point; at 1280x704 its 32 cache inputs
# are 6.4 GB, copied once more on the way to torch (wan_export/onnx_export.py export_graph): ~15.8 GB peak RSS,
# too much for this shared 24 GB VM. Its builds take the opt point SMALL_OPT instead, same max; OPT_CHECK builds
# vae_decoder_first both ways to show the opt point does not move the figures.
SMALL_OPT = "512x512"
OPT_CHECK = "vae-first-smallopt"
VAE_STEPS = {"vae": ("720p", ("vae_encoder", "vae_decoder_first")), "vae-step": ("720p-smallopt", ("vae_decoder_step",)),
             OPT_CHECK: ("720p-smallopt", ("vae_decoder_first",))}
REQUEST = {"width": 1280, "height": 704, "frames": 121, "batch": 2}
GPUS_GIB = (24, 48, 80)  # RTX 4090 / RTX 6000 Ada / H100: their memory is GiB (24564, 49140, 81559 MiB)
CUDA_CONTEXT = 0.5e9  # bytes the CUDA context and TensorRT's runtime take before any engine (approximate)
# Measured full-size engine files (docs/benchmarks.md, issue 6: TensorRT-RTX 1.7.1.116, SM89, random bf16 weights)
MEASURED_ENGINE_BYTES = {"dit": 10.18e9, "text_encoder": 11.37e9}


# --- what to build ------------------------------------------------------------------------------------------
def model_config(part: str | None, layers: int | None):
    """TI2V-5B at full width; `part` ("dit" | "t5") with `layers` layers."""
    if part is None:
        return TI2V_5B
    return dataclasses.replace(TI2V_5B, **{part: dataclasses.replace(getattr(TI2V_5B, part), num_layers=layers)})


def profile_file(base, folder: Path, request: bool, small_opt: bool) -> Path:
    """`base` with shape ranges that end at REQUEST (TensorRT reports activations at a profile's max only) and/or
    with its opt point (where the graphs are also exported) at SMALL_OPT; written as TOML into `folder`."""
    shapes = {**base.limits.to_dict(), "default_size": "x".join(map(str, base.limits.default_size))}
    if request:
        shapes.update(width=[base.limits.width[0], REQUEST["width"]], height=[base.limits.height[0], REQUEST["height"]],
                      frames=[base.limits.frames[0], REQUEST["frames"]], batch=[base.limits.batch[0], REQUEST["batch"]],
                      max_area=REQUEST["width"] * REQUEST["height"], default_frames=REQUEST["frames"],
                      default_size=f"{REQUEST['width']}x{REQUEST['height']}")
    if small_opt:
        shapes["default_size"] = SMALL_OPT
    tables = {"model": {"preset": base.model_preset, "seed": base.seed}, "build": {"backend": base.backend},
              "precision": base.precision, "shapes": shapes, "sampling": base.sampling}
    lines = []
    for table, values in tables.items():  # JSON scalars and lists of them are valid TOML values
        lines += [f"[{table}]", *(f"{key} = {json.dumps(value)}" for key, value in values.items()), ""]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{base.name}{'-request' if request else ''}{'-smallopt' if small_opt else ''}.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def load_profiles(folder: Path) -> dict:
    """The 720p profile and its request / small-opt variants, by name."""
    base = load_profile("720p")
    profiles = {base.name: base}
    for request, small_opt in ((True, False), (False, True), (True, True)):
        variant = load_profile(str(profile_file(base, folder, request, small_opt)))
        profiles[variant.name] = variant
    return profiles


def max_corner(config, limits, names) -> dict:
    """The max dims the engines of `names` would be built with (what their activation figure is for)."""
    return {s.name: {dim: r[2] for dim, r in s.dims.items()} for s in component_specs(config, limits)
            if s.name in names}


def plan_steps(profiles: dict, depths: dict) -> dict:
    """Step name -> (part, layers, profile name, component names)."""
    steps = {}
    for part in ("dit", "t5"):
        for layers in depths[part]:
            steps[f"{part}-{layers}"] = (part, layers, "720p", (COMPONENT_OF[part],))
    for name, (profile, names) in VAE_STEPS.items():
        steps[name] = (None, None, profile, names)
    for name, (part, layers, profile, names) in list(steps.items()):
        if name == OPT_CHECK or (part is not None and layers != max(depths[part])):
            continue  # one request build per component (activations: see depth_activations)
        config, request = model_config(part, layers), profile.replace("720p", "720p-request")
        if max_corner(config, profiles[profile].limits, names) != max_corner(config, profiles[request].limits, names):
            steps[f"{name}-request"] = (part, layers, request, names)
    return steps


def run_step(name: str, step, profiles: dict, work: Path) -> dict:
    """Build one step into work/name (skipped when its manifest is there); its manifest components."""
    from wan_export.build import BuildOptions, build
    from wan_export.weights import WeightSource

    part, layers, profile, names = step
    out = work / name
    manifest = out / "manifest.json"
    if not manifest.is_file():
        started = time.perf_counter()
        source = WeightSource(config=model_config(part, layers), checkpoint=None, seed=0)
        options = BuildOptions(backend="tensorrt-rtx", only=names, compute_capabilities=("SM89",))
        build(profiles[profile], source, out, options)
        record = {"seconds": round(time.perf_counter() - started, 1),
                  "peak_child_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)}
        (out / "memory_720p_step.json").write_text(json.dumps(record), encoding="utf-8")
    data = json.loads(manifest.read_text(encoding="utf-8"))
    components = {}
    for component, entry in data["components"].items():
        files = {f: (out / f).stat().st_size for f in entry["files"]}
        components[component] = {"memory": entry.get("memory", {}), "reported": entry["target"].get("reported_memory"),
                                 "engine_bytes": files.get(entry["file"]), "profile": entry["target"].get("profile")}
    step_file = out / "memory_720p_step.json"
    timing = json.loads(step_file.read_text(encoding="utf-8")) if step_file.is_file() else {}
    return {"part": part, "layers": layers, "profile": profile, "components": components, **timing}


# --- from builds to figures ---------------------------------------------------------------------------------
def _activation(entry: dict) -> int | None:
    return (entry["memory"].get("activation_bytes") or {}).get("max")


def linear_fit(points: dict) -> tuple[float, float]:
    """(a, b) of a + b * layers through {layers: bytes} (least squares; exact for two depths)."""
    import numpy as np

    layers = sorted(points)
    b, a = np.polyfit(layers, [points[n] for n in layers], 1)
    return float(a), float(b)


def depth_activations(acts: dict, full: int) -> tuple[int | None, str]:
    """The activation figure at `full` layers from {layers: bytes}: linear from the two deepest builds (the DiT's
    first block is special: a second one adds ~0.7 GB of buffers, later ones only what they precompute)."""
    if any(v is None for v in acts.values()):
        return None, "not reported"
    layers = sorted(acts)
    a, b = linear_fit({n: acts[n] for n in layers[-2:]})
    growth = ", ".join(f"{m}->{n}: {(acts[n] - acts[m]) / 1e6:+.1f} MB" for m, n in itertools.pairwise(layers))
    return round(a + b * full), f"{growth}; linear from {layers[-2]} and {layers[-1]} layers to {full}"


def component_figures(results: dict, depths: dict) -> dict:
    """Per component: weights at full depth, activations at the 720p max and at the request."""
    figures = {}
    for part, component in COMPONENT_OF.items():
        built = sorted(depths[part])
        at = {layers: results[f"{part}-{layers}"]["components"][component] for layers in built}
        full = FULL_DEPTH[part]
        base, per_layer = linear_fit({n: e["memory"]["weight_bytes"] for n, e in at.items()})
        file_base, file_per_layer = linear_fit({n: e["engine_bytes"] for n, e in at.items()})
        acts = {layers: _activation(e) for layers, e in at.items()}
        max_act, how = depth_activations(acts, full)
        request_step = results.get(f"{part}-{built[-1]}-request")
        request_act = None
        if request_step:  # measured at the deepest build; the depth growth (if any) found at the max applies too
            measured = _activation(request_step["components"][component])
            request_act = None if measured is None or max_act is None else measured + max_act - acts[built[-1]]
        figures[component] = {
            "layers_built": built, "full_layers": full,
            "weight_bytes_by_layers": {str(k): e["memory"]["weight_bytes"] for k, e in at.items()},
            "weight_bytes_per_layer": round(per_layer), "weight_bytes_fixed": round(base),
            "weight_bytes": round(base + per_layer * full),
            "engine_file_bytes_by_layers": {str(k): e["engine_bytes"] for k, e in at.items()},
            "engine_file_bytes_extrapolated": round(file_base + file_per_layer * full),
            "engine_file_bytes_measured_full_size": MEASURED_ENGINE_BYTES[component],
            "activation_bytes_by_layers": {str(k): v for k, v in acts.items()},
            "activation_bytes_max": max_act, "activation_depth": how,
            "activation_bytes_request": request_act if request_step else max_act,
            "request_is_profile_max": request_step is None,
        }
    for name, (_, names) in VAE_STEPS.items():
        if name == OPT_CHECK:
            continue
        request_step = results.get(f"{name}-request")
        for component in names:
            entry = results[name]["components"][component]
            request = request_step["components"][component] if request_step else entry
            figures[component] = {
                "weight_bytes": entry["memory"]["weight_bytes"], "engine_file_bytes": entry["engine_bytes"],
                "built_with_profile": results[name]["profile"],
                "activation_bytes_max": _activation(entry), "activation_bytes_request": _activation(request),
                "request_is_profile_max": request_step is None}
    return figures


def opt_check(results: dict) -> dict:
    """vae_decoder_first built at the 720p opt point and at SMALL_OPT, same max: do the figures move?"""
    at = {SMALL_OPT if step == OPT_CHECK else "1280x704": results[step]["components"]["vae_decoder_first"]["memory"]
          for step in ("vae", OPT_CHECK)}
    return {"component": "vae_decoder_first", "by_opt": at,
            "same": len({json.dumps(m, sort_keys=True) for m in at.values()}) == 1}


def io_bytes(limits) -> dict:
    """Per component: bytes of its inputs and outputs at the profile's max shapes, float32/int64 as declared. These
    are device buffers while it runs, besides the activation block: the runtime keeps the decoder's caches (in and
    out: two alternating sets) and the DiT's context and RoPE tables on the device."""
    import numpy as np

    def extent(dim, top: dict) -> int:
        if isinstance(dim, int):
            return dim
        name, _, factor = dim.partition("*")
        return top[name] * int(factor or 1)

    sizes = {}
    for spec in component_specs(TI2V_5B, limits):
        top = {name: r[2] for name, r in spec.dims.items()}
        sizes[spec.name] = int(sum(np.prod([extent(d, top) for d in t.shape], dtype=np.int64)
                                   * np.dtype(t.dtype).itemsize for t in (*spec.inputs, *spec.outputs)))
    return sizes


def mode_needs(figures: dict, io: dict, which: str) -> dict:
    """Device memory for --memory keep and stage, activations at `which` ("max" | "request"). `engines`:
    wan_rt.residency's rule (weights of the engines open together plus one shared activation block, the largest of
    theirs); `total`: plus the largest I/O set of those engines (`io`, at the same shapes)."""
    def need(names):
        engines = sum(figures[n]["weight_bytes"] for n in names) + max(
            figures[n][f"activation_bytes_{which}"] or 0 for n in names)
        return {"engines": engines, "io": max(io[n] for n in names), "total": engines + max(io[n] for n in names)}

    groups = stages(("dit",))
    per_stage = {stage: need(groups[stage]) for stage in STAGE_ORDER}
    stage = {}
    for part in ("engines", "total"):  # the largest stage by each measure (they differ: denoise vs decode)
        largest = max(per_stage, key=lambda name: per_stage[name][part])
        stage[part], stage[f"{part}_stage"] = per_stage[largest][part], largest
    stage["io"] = per_stage[stage["total_stage"]]["io"]
    return {"keep": need([n for name in STAGE_ORDER for n in groups[name]]), "stage": stage, "stages": per_stage}


def fits(need: int) -> dict:
    """Per GPU: does `need` fit in HEADROOM of what the CUDA context leaves (what --memory auto compares)."""
    return {f"{gib} GiB": need <= HEADROOM * (gib * 2**30 - CUDA_CONTEXT) for gib in GPUS_GIB}


# --- output -------------------------------------------------------------------------------------------------
def _gb(n) -> str:
    return "not reported" if n is None else f"{n / 1e9:.2f}"


def markdown(figures: dict, needs: dict) -> str:
    rows = ["| component | weight GB (full depth) | activations GB, 720p profile max | activations GB, 1280x704x121 |",
            "| --- | ---: | ---: | ---: |"]
    for name, f in figures.items():
        depth = f" ({f['full_layers']} layers, from {'+'.join(map(str, f['layers_built']))})" if "full_layers" in f else ""
        same = " (= max)" if f["request_is_profile_max"] else ""
        rows.append(f"| {name}{depth} | {_gb(f['weight_bytes'])} | {_gb(f['activation_bytes_max'])} | "
                    f"{_gb(f['activation_bytes_request'])}{same} |")
    rows += ["", "| --memory | activation block sized for | engines GB (weights + activations) | total GB (+ I/O on "
             "the device) | total + CUDA context GB | "
             + " | ".join(f"fits {g} GiB: engines / total" for g in GPUS_GIB) + " |",
             "| --- | --- | ---: | ---: | ---: | " + " | ".join(":---:" for _ in GPUS_GIB) + " |"]
    for which, label in (("request", "the request (1280x704x121)"), ("max", "the 720p profile max")):
        for mode in ("keep", "stage"):
            need = needs[which][mode]
            engines, total = _gb(need["engines"]), _gb(need["total"])
            if mode == "stage":
                engines, total = f"{engines} ({need['engines_stage']})", f"{total} ({need['total_stage']})"
            ok = {part: fits(need[part]) for part in ("engines", "total")}
            rows.append(f"| {mode} | {label} | {engines} | {total} | {_gb(need['total'] + CUDA_CONTEXT)} | "
                        + " | ".join(" / ".join("yes" if ok[part][g] else "no" for part in ok) for g in ok["total"])
                        + " |")
    rows += ["", ("| component | layers built | weight GB per build | weight GB per layer | engine file GB, "
                  "extrapolated / measured full size | activation GB per build (720p max) |"),
             "| --- | --- | --- | ---: | --- | --- |"]
    for name, f in figures.items():
        if "full_layers" not in f:
            continue
        built = ", ".join(map(str, f["layers_built"]))
        weights = ", ".join(_gb(v) for v in f["weight_bytes_by_layers"].values())
        acts = ", ".join(_gb(v) for v in f["activation_bytes_by_layers"].values())
        rows.append(f"| {name} | {built} | {weights} | {_gb(f['weight_bytes_per_layer'])} | "
                    f"{_gb(f['engine_file_bytes_extrapolated'])} / {_gb(f['engine_file_bytes_measured_full_size'])} | "
                    f"{acts} |")
    rows += ["", "| stage | " + " | ".join(STAGE_ORDER) + " |", "| --- | " + " | ".join("---:" for _ in STAGE_ORDER) + " |"]
    for which in ("request", "max"):
        for part in ("engines", "total"):
            rows.append(f"| {part} GB ({which}) | "
                        + " | ".join(_gb(needs[which]["stages"][s][part]) for s in STAGE_ORDER) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the engines folders (reused)")
    parser.add_argument("--steps", nargs="*", default=None, help="build only these steps (default: all missing)")
    parser.add_argument("--dit-depths", type=int, nargs="+", default=DEPTHS["dit"], help="DiT blocks to build")
    parser.add_argument("--t5-depths", type=int, nargs="+", default=DEPTHS["t5"], help="umT5 layers to build")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory_720p.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    profiles = load_profiles(args.work)
    depths = {"dit": tuple(args.dit_depths), "t5": tuple(args.t5_depths)}
    if min(len(set(d)) for d in depths.values()) < 2:
        parser.error("--dit-depths and --t5-depths need two different depths or more each (weights = a + b * layers)")
    steps = plan_steps(profiles, depths)
    log.info("steps: %s", ", ".join(steps))
    chosen = steps if args.steps is None else {n: steps[n] for n in args.steps}
    results = {name: run_step(name, step, profiles, args.work) for name, step in chosen.items()}
    if args.steps is not None:
        print(json.dumps(results, indent=2))
        return
    figures = component_figures(results, depths)
    io = {"request": io_bytes(profiles["720p-request"].limits), "max": io_bytes(profiles["720p"].limits)}
    needs = {which: mode_needs(figures, io[which], which) for which in ("request", "max")}
    table = markdown(figures, needs)
    report = {"date": datetime.date.today().isoformat(), "machine": f"CPU VM, {cpu_model()}, {os.cpu_count()} cores",
              "command": " ".join(sys.argv), "library": "tensorrt-rtx", "compute_capability": "SM89",
              "request": REQUEST, "headroom": HEADROOM, "cuda_context_bytes": CUDA_CONTEXT,
              "steps": results, "components": figures, "opt_check": opt_check(results), "modes": needs,
              "io_bytes": io,
              "fits": {which: {mode: {part: fits(needs[which][mode][part]) for part in ("engines", "total")}
                               for mode in ("keep", "stage")} for which in needs},
              "table": table}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
    os.replace(tmp, args.out)
    print(table)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
