"""`wan-rt generate --sp N`: start N local worker processes, run the requests, collect rank 0's results.

The launching process never imports torch. It checks the engines folder (one WanError line, before any process
starts), picks a free port, and starts N `python -m wan_rt.parallel RUN_DIR` subprocesses with the environment
torch.distributed's env:// rendezvous reads: MASTER_ADDR=127.0.0.1, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK.
On a machine with NVIDIA GPUs each worker is shown one GPU (CUDA_VISIBLE_DEVICES = its rank, or the rank-th entry
of the caller's CUDA_VISIBLE_DEVICES), so its engines and NCCL both use that worker's cuda:0.

RUN_DIR (private, removed afterwards) carries the requests in (`jobs.pkl`), rank 0's results out
(`results.pkl`) and each failed rank's one-line error (`error-RANK.txt`, after the time it was written). The
first failure ends the run: the other workers are terminated (a rank that fails inside a collective would leave
the others waiting) and the root cause, the error written first, is raised here as the one WanError line.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from wan_rt.errors import WanError
from wan_rt.manifest import load_manifest
from wan_rt.parallel.layout import sp_layout
from wan_rt.request_checks import check_request

log = logging.getLogger("wan_rt")

JOBS, RESULTS = "jobs.pkl", "results.pkl"
FAILED = 3  # a worker's exit status after writing error-RANK.txt


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for torch.distributed's store on rank 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _visible_gpus() -> list[str] | None:
    """GPU ids a worker may be given: the caller's CUDA_VISIBLE_DEVICES, else every NVIDIA GPU the driver lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return None
    return [str(i) for i in range(count)]


def worker_env(rank: int, ranks: int, port: int, gpus: list[str] | None) -> dict:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(ranks),
           "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(ranks)}
    if gpus:
        if len(gpus) < ranks:
            log.warning("--sp %d with %d visible GPU(s): ranks share GPUs", ranks, len(gpus))
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)]
    return env


def _stop(processes: list) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


FAILURE_GRACE_S = 2.0  # how long the other ranks get to exit (and report) after the first failure


def _failure(run_dir: Path, processes: list, rank: int, code: int) -> str:
    """The one line for a run in which rank `rank` exited with `code`: the root cause, which is the error written
    first. A rank blocked in a collective when another rank fails gets a communication error ("connection closed
    by peer") a moment later, and may exit first; workers write their error before leaving the group, so the
    cause's file is always the older one."""
    deadline = time.monotonic() + FAILURE_GRACE_S
    while time.monotonic() < deadline and any(process.poll() is None for process in processes):
        time.sleep(0.05)
    written = []  # (when, message): file mtimes are too coarse (a few ms) to order them
    for path in run_dir.glob("error-*.txt"):
        when, _, message = path.read_text().partition("\n")
        written.append((int(when), message.strip()))
    if written:
        return min(written)[1]
    return f"sequence-parallel rank {rank} exited unexpectedly (exit status {code}); rerun with -vv for its log"


def check_cfg_parallel(manifest, jobs: list[tuple], ranks: int) -> None:
    """--cfg-parallel's refusals, before any process starts."""
    if ranks != 1:
        raise WanError(f"--cfg-parallel with --sp {ranks} is not supported yet; use one of them")
    if "dit" not in manifest.components:
        raise WanError(f"--cfg-parallel runs the whole dit graph, which {manifest.root} lacks (built --sp-only); "
                       f"rebuild without --sp-only")
    for request, _, _ in jobs:
        guide = manifest.sampling["guide_scale"] if request.guide_scale is None else request.guide_scale
        if guide == 1:
            raise WanError("--cfg-parallel splits the guidance branches, but guide scale 1 has only one; run "
                           "without --cfg-parallel")


def generate_parallel(engines: str | Path, jobs: list[tuple], ranks: int, verify: bool = True,
                      show_progress: bool = True, verbose: int = 0, memory: str = "auto",
                      cfg_parallel: bool = False) -> list:
    """Run `jobs` [(GenerationRequest, out or None, save_latents or None)] on `ranks` local processes (twice as
    many with `cfg_parallel`: the two guidance branches, wan_rt.parallel.cfg).

    Returns rank 0's `GenerationResult`s in order. ranks = 1 runs in this process (no torch): the whole `dit` graph
    when the folder has it (a folder built with --sp N keeps it unless --sp-only), else segments built for 1 rank.
    """
    engines = Path(engines).resolve()
    for request, _, _ in jobs:  # a bad number is refused before any process starts, as without --sp
        check_request(request)
    manifest = load_manifest(engines, verify=verify)  # hashed once here; the workers trust it
    if cfg_parallel:
        check_cfg_parallel(manifest, jobs, ranks)
    elif ranks == 1 and "dit" in manifest.components:
        from wan_rt.pipeline import Pipeline

        log.info("--sp 1: the whole dit graph in this process")
        with Pipeline(engines, verify=False, show_progress=show_progress, memory=memory) as pipeline:
            return [pipeline.generate(request, out, save_latents) for request, out, save_latents in jobs]
    if not cfg_parallel:
        sp_layout(manifest, ranks)  # heads % N, no segments, segments for another N: refused before any process starts
    if ranks == 1 and not cfg_parallel:
        from wan_rt.parallel.comm import LocalComm
        from wan_rt.parallel.worker import SPPipeline

        with SPPipeline(engines, LocalComm(), 1, show_progress=show_progress, memory=memory) as pipeline:
            return [pipeline.generate(request, out, save_latents) for request, out, save_latents in jobs]

    run_dir = Path(tempfile.mkdtemp(prefix="wan-rt-sp-"))
    processes = []
    try:
        with open(run_dir / JOBS, "wb") as handle:
            pickle.dump({"engines": str(engines), "ranks": ranks, "jobs": list(jobs), "show_progress": show_progress,
                         "verbose": verbose, "memory": memory, "cfg_parallel": cfg_parallel}, handle)
        port, gpus = free_port(), _visible_gpus()
        world = 2 * ranks if cfg_parallel else ranks
        log.info("%s: %d worker processes, torch.distributed rendezvous on 127.0.0.1:%d",
                 "CFG parallel" if cfg_parallel else "sequence parallel", world, port)
        for rank in range(world):
            env = {**os.environ, **worker_env(rank, world, port, gpus)}
            processes.append(subprocess.Popen([sys.executable, "-m", "wan_rt.parallel", str(run_dir)], env=env,
                                              stdin=subprocess.DEVNULL))
        running = set(range(world))
        while running:
            for rank in sorted(running):
                code = processes[rank].poll()
                if code is None:
                    continue
                running.discard(rank)
                if code != 0:
                    raise WanError(_failure(run_dir, processes, rank, code))
            time.sleep(0.05)
        with open(run_dir / RESULTS, "rb") as handle:
            return pickle.load(handle)
    except BaseException:
        _stop(processes)
        raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _save_results(run_dir: Path, results: list) -> None:
    tmp = run_dir / f".{RESULTS}.tmp"
    with open(tmp, "wb") as handle:
        pickle.dump(results, handle)
    os.replace(tmp, run_dir / RESULTS)


def _cfg_rank(spec: dict, run_dir: Path, comm, rank: int) -> int:
    """One rank of a --cfg-parallel run: rank 0 the pipeline and the conditional branch, rank 1 the other."""
    from wan_rt.parallel.cfg import CFGPipeline, follow_branch

    if rank == 0:
        with CFGPipeline(spec["engines"], comm, show_progress=spec["show_progress"], memory=spec["memory"]) as pipeline:
            results = [pipeline.generate(request, out, save) for request, out, save in spec["jobs"]]
            pipeline.stop_followers()
        _save_results(run_dir, results)
    else:
        follow_branch(spec["engines"], comm)
    return 0


def worker_main(run_dir: str) -> int:
    """One rank (`python -m wan_rt.parallel RUN_DIR`, environment from `worker_env`); returns the exit status."""
    run_dir = Path(run_dir)
    rank, ranks = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with open(run_dir / JOBS, "rb") as handle:
        spec = pickle.load(handle)
    from wan_rt.cli_support import setup_logging

    verbose = spec["verbose"]
    setup_logging(verbose)
    if rank and verbose < 2:
        logging.getLogger("wan_rt").setLevel(logging.WARNING)  # rank 0 narrates; the others only warn
    comm = message = None
    try:
        from wan_rt.parallel.comm import TorchComm

        if spec.get("cfg_parallel"):
            comm = TorchComm(cfg_parallel=True)
            return _cfg_rank(spec, run_dir, comm, rank)
        wire = sp_layout(load_manifest(spec["engines"], verify=False), ranks).wire_dtype
        comm = TorchComm(wire_dtype=wire)
        if rank == 0:
            from wan_rt.parallel.worker import SPPipeline

            with SPPipeline(spec["engines"], comm, ranks, show_progress=spec["show_progress"],
                            memory=spec["memory"]) as pipeline:
                results = [pipeline.generate(request, out, save) for request, out, save in spec["jobs"]]
                pipeline.stop_followers()
            _save_results(run_dir, results)
        else:
            from wan_rt.parallel.worker import follow

            follow(spec["engines"], comm, ranks)
        return 0
    except WanError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        message = "interrupted"
    except BaseException as exc:  # noqa: BLE001 - reported to the launcher as one line, traceback with -vv
        logging.getLogger("wan_rt").debug("rank %d failed:\n%s", rank, traceback.format_exc())
        message = f"sequence-parallel rank {rank} failed: {type(exc).__name__}: {exc}"
    finally:
        if message is not None:  # before leaving the group, so the root cause is the oldest file (see _failure)
            tmp = run_dir / f".error-{rank}.tmp"
            tmp.write_text(f"{time.monotonic_ns()}\n{message}\n")  # one clock for every process of this machine
            os.replace(tmp, run_dir / f"error-{rank}.txt")
        if comm is not None:
            try:
                comm.close()
            except Exception:  # noqa: BLE001 - the group may be broken already; the process is ending anyway
                pass
    return FAILED
