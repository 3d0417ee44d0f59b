"""What a failed or interrupted `wan-export build` keeps: the components it finished, for the next run.

A build writes into its staging folder `.OUT.partial` beside the output (hidden, no manifest.json: it never looks
like an engines folder). When the build fails or is interrupted, half-written files are removed but finished
components stay, listed in `finished.json` with the key they were made under: the weights of their part (the
sizes and times of its checkpoint files, or the random preset and seed), the profile, backend, build options,
library versions, and the component's precision and I/O. Running the same build again reuses every component
whose key still matches and whose files still hash to what was recorded, and starts the rest; anything else
found there is removed.

One build at a time writes an output: the staging folder is locked (flock) while a build uses it.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.manifest import sha256_file

log = logging.getLogger("wan_export")

FINISHED = "finished.json"


def weights_fingerprint(source, part: str) -> dict:
    """What identifies the weights of checkpoint part `part`: the manifest's record, the model's sizes and, for a
    checkpoint, the size and time of every file the part is read from."""
    record = {**source.manifest_record(), "model": source.config.to_dict()}
    if part != "dit":
        record.pop("loras", None)  # LoRAs (sha256 + scale) change the DiT only
    if part != "tiny_vae":
        record.pop("tiny_vae", None)  # the TAEHV file changes its own graph only
    if part == "tiny_vae":
        return {"tiny_vae": record.get("tiny_vae")}  # not made from the Wan checkpoint
    if source.checkpoint is not None:
        record["files"] = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in source.checkpoint.part_files(part)]
    return record


def component_key(build_key: dict, weights: dict, name: str, precision: str, io: dict) -> str:
    """One hash of everything a finished component depends on."""
    text = json.dumps({**build_key, "weights": weights, "component": name, "precision": precision, "io": io},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Staging:
    """The locked staging folder of one build, with the finished components it may reuse."""

    def __init__(self, out: Path):
        self.path = out.parent / f".{out.name}.partial"
        self.path.mkdir(exist_ok=True)
        self._lock = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WanError(f"another wan-export build is writing {out} right now; wait for it to finish or "
                               f"choose another --out") from None
            raise
        self.finished: dict[str, dict] = {}  # component -> {"key", "component": manifest entry}

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def load(self, keys: dict[str, str]) -> None:
        """Keep the recorded components whose key is in `keys` and whose files are intact; clear the rest."""
        try:
            recorded = json.loads((self.path / FINISHED).read_text())
        except (OSError, ValueError):
            recorded = {}
        for name, entry in recorded.items() if isinstance(recorded, dict) else ():
            try:
                files = entry["component"]["files"]
                if keys.get(name) == entry["key"] and all(
                        sha256_file(self.path / file) == digest for file, digest in files.items()):
                    self.finished[name] = entry
            except (KeyError, TypeError, OSError):
                continue
        self._sweep()
        if self.finished:
            log.info("reusing %s from an interrupted build of the same output (%s)", ", ".join(self.finished),
                     self.path)
        self._save()

    def reused(self, name: str) -> dict | None:
        entry = self.finished.get(name)
        return None if entry is None else entry["component"]

    def add(self, name: str, key: str, component: dict) -> None:
        self.finished[name] = {"key": key, "component": component}
        self._save()

    def keep_finished(self) -> None:
        """After a failure: remove what is half-written; keep the finished components, or nothing at all."""
        self._sweep()
        if not self.finished:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        size = sum((self.path / f).stat().st_size for e in self.finished.values() for f in e["component"]["files"])
        log.warning("kept the finished %s (%.1f GB) in %s: run the same build again to continue from there, or "
                    "delete that folder", ", ".join(self.finished), size / 1e9, self.path)

    def _kept_files(self) -> set[str]:
        return {FINISHED} | {f for e in self.finished.values() for f in e["component"]["files"]}

    def _sweep(self) -> None:
        kept = self._kept_files()
        for path in self.path.iterdir():
            if path.name in kept:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _save(self) -> None:
        tmp = self.path / f".{FINISHED}.tmp"
        tmp.write_text(json.dumps(self.finished, indent=1))
        os.replace(tmp, self.path / FINISHED)

    def remove_record(self) -> None:
        (self.path / FINISHED).unlink(missing_ok=True)
