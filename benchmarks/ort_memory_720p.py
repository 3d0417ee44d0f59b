"""ONNX Runtime CUDA at 720p: weight bytes per component per precision, and which --memory modes fit 24/48/80 GB.

Weights come from the model config's parameter shapes (`wan_export.precision.graph_weight_bytes`: the fp32 islands
at 4 bytes, the rest at 2 for bf16/fp16), nothing exported; tests/test_precision.py's tiny builds cross-check the
rule against real exports. The --memory figures are `wan_rt.residency`'s own (need_bytes / stage_need) on a manifest
made in memory for each ONNX Runtime profile: weights plus each engine's I/O at the default request (1280x704x121).
ONNX Runtime reports no activation sizes, so a second figure adds the activations TensorRT's builder reported for the
same graphs (docs/benchmarks.md, issue 13 table) as an estimate of what the CUDA provider's arena will hold.

    python benchmarks/ort_memory_720p.py
"""
from __future__ import annotations

import datetime
from pathlib import Path

from wan_export.components import component_specs
from wan_export.config import TI2V_5B
from wan_export.precision import graph_weight_bytes
from wan_export.profiles import load_profile
from wan_rt.manifest import ComponentInfo, Manifest
from wan_rt.residency import host_bytes, need_bytes, stage_groups, stage_need, stages

# TensorRT-RTX builder's activation figures at the 720p profile max (GB), docs/benchmarks.md (issue 13)
TRT_ACTIVATIONS_GB = {"dit": 5.44, "text_encoder": 0.87, "vae_encoder": 1.16, "vae_decoder_first": 4.40,
                      "vae_decoder_step": 12.61}
DENOISE = ("dit", "dit_skip", "dit_time")
USABLE_GB = {24: 0.9 * (24 * 1.073741824 - 0.5), 48: 0.9 * (48 * 1.073741824 - 0.5), 80: 0.9 * (80 * 1.073741824 - 0.5)}


def manifest_for(profile_name: str, specs: list, activations: bool) -> Manifest:
    profile = load_profile(profile_name)
    components = {}
    for spec in specs:
        precision = profile.precision[spec.precision_key]
        if profile.placement.get(spec.precision_key) == "cpu":
            precision = "fp32"
        memory = {"weight_bytes": graph_weight_bytes(TI2V_5B, spec, precision)}
        if activations and spec.name in TRT_ACTIVATIONS_GB:
            memory["activation_bytes"] = {"max": int(TRT_ACTIVATIONS_GB[spec.name] * 1e9)}
        entry = {"backend": "onnxruntime", "precision": precision, "file": f"{spec.name}.onnx", "files": {},
                 "memory": memory, **spec.manifest_io()}
        if profile.placement.get(spec.precision_key) == "cpu":
            entry["device"] = "cpu"
        components[spec.name] = entry
    data = {"components": components, "limits": profile.limits.to_dict()}
    infos = {name: ComponentInfo.from_dict(name, entry) for name, entry in components.items()}
    return Manifest(root=Path("."), data=data, limits=profile.limits, components=infos)


def main() -> None:
    limits = load_profile("720p-ort").limits
    specs = [s for s in component_specs(TI2V_5B, limits) if s.weights != "tiny_vae"]
    print(f"date {datetime.date.today()}; weights from the TI2V-5B config; GB = 1e9 bytes\n")
    print("| component | fp32 GB | bf16 GB | fp16 GB | fp32 islands GB (in the bf16/fp16 figure) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for spec in specs:
        sizes = {p: graph_weight_bytes(TI2V_5B, spec, p) / 1e9 for p in ("fp32", "bf16", "fp16")}
        islands = 2 * (sizes["bf16"] - sizes["fp32"] / 2)  # bf16 = 2 x reduced + 4 x islands; fp32 = 4 x both
        print(f"| {spec.name} | {sizes['fp32']:.2f} | {sizes['bf16']:.2f} | {sizes['fp16']:.2f} | {islands:.3f} |")
    print("\n| profile | activations counted | keep GB (device) | stage GB (device; largest stage) | host GB | "
          "fits 24 GiB | fits 48 GiB | fits 80 GiB |")
    print("| --- | --- | ---: | ---: | ---: | --- | --- | --- |")
    for name in ("720p-ort", "720p-ort-t5cpu"):
        for activations in (False, True):
            manifest = manifest_for(name, specs, activations)
            every = [n for names in stages(DENOISE).values() for n in names]
            keep = need_bytes(manifest, every) / 1e9
            most, largest = max((stage_need(manifest, groups) / 1e9, stage)
                                for stage, groups in stage_groups(DENOISE).items())
            fits = [" / ".join(m for m, gb in (("keep", keep), ("stage", most)) if gb <= USABLE_GB[card]) or "none"
                    for card in (24, 48, 80)]
            print(f"| {name} | {'TensorRT figures (estimate)' if activations else 'none (manifest: weights + I/O)'} | "
                  f"{keep:.1f} | {most:.1f} ({largest}) | {host_bytes(manifest) / 1e9:.1f} | {' | '.join(fits)} |")
    print(f"\nusable = 0.9 x (card - 0.5 GB CUDA context): "
          f"{', '.join(f'{k} GiB -> {v:.1f} GB' for k, v in USABLE_GB.items())}")


if __name__ == "__main__":
    main()
