"""`wan-export build --onnx-from FOLDER`: the ONNX graphs of an engines folder built before, instead of exporting them.

Exporting is the slow, memory-hungry half of an engine build and does not depend on the backend or the target GPU:
export once (`--backend onnxruntime`, on a host with the memory for it), then build engines for each target from
those graphs. A graph is taken only when the folder was made from the same weights (same random preset and seed, or
the same checkpoint, unchanged since), for the same model, shape limits and precision, with the same I/O; anything
else is one error line, and every file is checked against its sha256 first.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.manifest import MANIFEST_NAME, load_manifest


def reuse_graphs(folder: Path, source, limits, specs: list, precisions: dict,
                 staging: Path) -> list[tuple[str, list[str], float]]:
    """Copy the graphs of `specs` from engines folder `folder` into `staging`; returns (graph, files, seconds) per
    spec, as `export_part` does (the .onnx first)."""
    manifest = load_manifest(folder)  # every file's sha256
    data = manifest.data

    def refuse(problem: str):
        raise WanError(f"--onnx-from {folder}: {problem}; build without --onnx-from, or export the graphs again "
                       f"with the same weights and profile")

    if data["weights"] != _plain(source.manifest_record()) or data["model"] != _plain(source.config.to_dict()):
        refuse(f"its graphs come from other weights ({data['weights']}), not {source.manifest_record()}")
    if data["limits"] != _plain(limits.to_dict()):
        refuse("its graphs were exported for other shape limits (another profile)")
    built = (folder / MANIFEST_NAME).stat().st_mtime_ns
    if source.checkpoint is not None:
        changed = [path for spec in specs if spec.weights != "tiny_vae"  # its file's sha256 is in the record
                   for path in source.checkpoint.part_files(spec.weights) if path.stat().st_mtime_ns > built]
        if changed:
            refuse(f"the checkpoint changed after the folder was built ({changed[0].name})")
    reused = []
    for spec in specs:
        entry = data["components"].get(spec.name)
        if entry is None:
            refuse(f"it has no {spec.name} graph")
        if entry["precision"] != precisions[spec.name]:
            refuse(f"its {spec.name} graph is {entry['precision']}, this build wants {precisions[spec.name]}")
        io = _plain(spec.manifest_io())
        if {key: entry.get(key) for key in io} != io:
            refuse(f"its {spec.name} graph has other inputs, outputs or dimensions")
        files = sorted((name for name in entry["files"] if not name.endswith(".engine")),
                       key=lambda name: name != f"{spec.name}.onnx")
        for name in files:  # copies, not links: the new folder's files must not change with the old one's
            shutil.copy2(folder / name, staging / name)
        reused.append((spec.name, files, 0.0))
    return reused


def _plain(value):
    """`value` as manifest.json holds it (tuples become lists)."""
    return json.loads(json.dumps(value))
