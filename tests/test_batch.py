"""Many videos in one run (`wan-rt generate --requests FILE.jsonl`, `wan_rt.batch.run_batch`) on the tiny engines:
the same outputs as single runs in keep and stage mode, a bad line refuses the whole file, a failing request leaves
the others' outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recording import EngineLog, check_runners_closed
from requires import unwritable_folder
from wan_rt.batch import run_batch
from wan_rt.errors import WanError
from wan_rt.pipeline import GenerationRequest, Pipeline
from wan_rt.requests_file import read_requests
from wan_rt.video import read_video


def lines(input_image, folder) -> list[dict]:
    return [
        {"prompt": "A red fox trots through fresh snow", "seed": 1, "frames": 5, "steps": 2, "out": str(folder / "a.mp4")},
        {"prompt": "The scene comes alive", "image": str(input_image), "seed": 2, "frames": 5, "steps": 2,
         "out": str(folder / "b.mp4"), "save_latents": str(folder / "b.npy")},
        {"prompt": "A lighthouse at dusk", "seed": 3, "frames": 1, "steps": 3, "size": "128x64", "guide_scale": 3.0,
         "out": str(folder / "c.mp4")},
    ]


def write_jsonl(path, rows) -> None:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n# a comment line\n")


def run_cli(engines, *args, stdin=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "wan_rt.cli", "generate", "--engines", str(engines), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, input=stdin)


@pytest.fixture(scope="module")
def single_runs(tiny_engines, input_image, tmp_path_factory):
    """Each request alone, through Pipeline.generate: (frames, latents) per output name."""
    folder = tmp_path_factory.mktemp("single")
    jobs = read_requests(write_and_return(folder, lines(input_image, folder)), GenerationRequest)
    outputs = {}
    for job in jobs:
        with Pipeline(tiny_engines, memory="keep", show_progress=False) as pipeline:
            result = pipeline.generate(job.request, job.out, job.save_latents)
        outputs[job.out.name] = (read_video(job.out)[0], result.latents)
    return outputs


def write_and_return(folder, rows):
    path = folder / "requests.jsonl"
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("memory", ["keep", "stage"])
def test_a_batch_equals_single_runs(tiny_engines, input_image, single_runs, tmp_path, memory, monkeypatch):
    jobs = read_requests(write_and_return(tmp_path, lines(input_image, tmp_path)), GenerationRequest)
    engine_log = EngineLog()
    monkeypatch.setattr("wan_rt.pipeline.open_runner", engine_log.open_runner)
    with Pipeline(tiny_engines, memory=memory, show_progress=False) as pipeline:
        outcomes = run_batch(pipeline, jobs, show_progress=False)
        events = pipeline.engine_events
        if memory == "stage":  # every runner closed by the end of its stage, one open at a time (decode too)
            check_runners_closed(engine_log, most=1)
    check_runners_closed(engine_log, most=1 if memory == "stage" else 5)
    assert [o.error for o in outcomes] == [None, None, None]
    for outcome in outcomes:
        frames, latents = single_runs[outcome.job.out.name]
        assert np.array_equal(read_video(outcome.job.out)[0], frames)
        assert np.array_equal(outcome.result.latents, latents)
    assert np.array_equal(np.load(tmp_path / "b.npy"), single_runs["b.mp4"][1])
    opened = [name for action, name in events if action == "open"]
    if memory == "keep":
        assert sorted(opened) == sorted(set(opened))  # every engine loaded once per batch
    else:  # stage by stage; in each video's decode one decoder at a time (c has one latent frame: no steady one)
        assert opened == ["text_encoder", "vae_encoder", "dit", "vae_decoder_first", "vae_decoder_step",
                          "vae_decoder_first", "vae_decoder_step", "vae_decoder_first"]


def test_cli_reads_requests_from_standard_input_in_stage_mode(tiny_engines, input_image, single_runs, tmp_path):
    rows = lines(input_image, tmp_path)
    result = run_cli(tiny_engines, "--requests", "-", "--memory", "stage",
                     stdin="\n".join(json.dumps(row) for row in rows))
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()[:3]] == ["line 1", "line 2", "line 3"]
    assert result.stdout.splitlines()[-1].startswith("batch: 3 requests, 3 written, 0 failed")
    for row in rows:
        name = row["out"].rsplit("/", 1)[1]
        assert np.array_equal(read_video(row["out"])[0], single_runs[name][0])


@pytest.mark.parametrize("bad, field", [
    ({"steps": "ten"}, "'steps' must be a whole number"),
    ({"guide_scale": float("nan")}, "guide scale must be a finite number"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"frames": 6}, "frame count 6 is not 4n+1"),
    ({"image": "no-such.png"}, "'image' no-such.png does not exist"),
    ({"out": None}, "field 'out' is required"),
])
def test_a_bad_line_refuses_the_whole_file_before_any_output(tiny_engines, input_image, tmp_path, bad, field):
    rows = lines(input_image, tmp_path)
    rows[1] = {**rows[1], **bad}
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    result = run_cli(tiny_engines, "--requests", path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert "line 2" in result.stderr and field in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["requests.jsonl"]  # nothing written


def test_noise_of_the_wrong_shape_refuses_the_batch_before_any_output(tiny_engines, input_image, single_runs,
                                                                      tmp_path):
    rows = lines(input_image, tmp_path)
    shape = single_runs["a.mp4"][1].shape  # what line 1's request needs: [48, latent frames, h/16, w/16]
    for number, (wrong, dtype) in enumerate([((*shape[:3], shape[3] - 1), np.float32), (shape, np.float64)]):
        np.save(tmp_path / f"noise{number}.npy", np.zeros(wrong, dtype))
        rows[0]["noise"] = str(tmp_path / f"noise{number}.npy")
        jobs = read_requests(write_and_return(tmp_path, rows), GenerationRequest)
        with Pipeline(tiny_engines, show_progress=False) as pipeline, pytest.raises(
                WanError, match=rf"^requests line 1: noise has shape \({', '.join(map(str, wrong))}\) {np.dtype(dtype)}; "
                                rf"this request needs float32 \({', '.join(map(str, shape))}\)"):
            run_batch(pipeline, jobs, show_progress=False)
    assert not [path.name for path in tmp_path.iterdir() if path.suffix in (".mp4", ".npy") and
                not path.name.startswith("noise")]


def test_two_lines_writing_one_file_and_per_request_options_are_refused(tiny_engines, input_image, tmp_path):
    rows = lines(input_image, tmp_path)
    rows[2]["out"] = rows[0]["out"]
    with pytest.raises(WanError, match="line 3: output .*a.mp4 is also written by line 1"):
        read_requests(write_and_return(tmp_path, rows), GenerationRequest)
    result = run_cli(tiny_engines, "--requests", tmp_path / "requests.jsonl", "--steps", "3")
    assert result.returncode == 2 and "--steps is a per-request option" in result.stderr


def poisoned_encoder_folder(tiny_engines, folder):
    """The tiny folder (files linked) whose VAE image encoder multiplies its latent by NaN: a real graph, run by
    ONNX Runtime, that fails every image-to-video request at its first stage (the manifest's sha256 updated)."""
    import hashlib

    import onnx
    from onnx import helper

    folder.mkdir()
    for path in tiny_engines.iterdir():
        if path.name not in ("manifest.json", "vae_encoder.onnx"):
            (folder / path.name).symlink_to(path)
    model = onnx.load(str(tiny_engines / "vae_encoder.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["latent.clean" if name == "latent" else name for name in node.output]
    graph.initializer.append(helper.make_tensor("poison", onnx.TensorProto.FLOAT, [], [float("nan")]))
    graph.node.append(helper.make_node("Mul", ["latent.clean", "poison"], ["latent"]))
    onnx.save(model, str(folder / "vae_encoder.onnx"))
    manifest = json.loads((tiny_engines / "manifest.json").read_text())
    digest = hashlib.sha256((folder / "vae_encoder.onnx").read_bytes()).hexdigest()
    manifest["components"]["vae_encoder"]["files"] = {"vae_encoder.onnx": digest}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("memory", ["keep", "stage"])
@pytest.mark.parametrize("failure", ["unwritable output", "non-finite DiT", "poisoned image encoder"])
def test_a_failing_request_leaves_the_others_outputs(tiny_engines, input_image, single_runs, tmp_path, memory,
                                                     failure):
    """Line 2 fails late (its output cannot be written: the last stage) or early (noise so large the fp32 DiT
    overflows at the first step; an image encoder returning NaN): its line says why, it leaves no file, and the
    others' videos equal their single runs."""
    rows, engines = lines(input_image, tmp_path), tiny_engines
    if failure == "unwritable output":
        rows[1]["out"] = str(unwritable_folder(tmp_path) / "b.mp4")  # the folder exists, writing in it fails
        del rows[1]["save_latents"]  # stage mode writes them before the decode stage, rightly
        reason = "cannot write"
    elif failure == "non-finite DiT":
        noise = tmp_path / "huge-noise.npy"
        np.save(noise, np.full(single_runs["b.mp4"][1].shape, 3e38, np.float32))
        rows[1]["noise"] = str(noise)
        reason = "dit returned non-finite values at denoising step 1"
    else:  # line 2 is the only image-to-video request
        engines = poisoned_encoder_folder(tiny_engines, tmp_path / "poisoned")
        reason = "vae_encoder returned non-finite values for the image"
    result = run_cli(engines, "--requests", write_and_return(tmp_path, rows), "--memory", memory)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout.splitlines()
    assert out[1].startswith("line 2: failed:") and reason in out[1], out[1]
    assert out[0].startswith("line 1: wrote") and out[2].startswith("line 3: wrote")
    assert out[-1].startswith("batch: 3 requests, 2 written, 1 failed")
    for name in ("a.mp4", "c.mp4"):
        assert np.array_equal(read_video(tmp_path / name)[0], single_runs[name][0]), name
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(("b.", ".b."))]  # nor partials


def test_python_api_generate_many(tiny_engines, single_runs, input_image, tmp_path):
    rows = lines(input_image, tmp_path)
    jobs = [(GenerationRequest(prompt=row["prompt"], seed=row["seed"], frames=row["frames"], steps=row["steps"],
                               image=row.get("image")), row["out"]) for row in rows[:2]]
    with Pipeline(tiny_engines, memory="stage", show_progress=False) as pipeline:
        outcomes = pipeline.generate_many(jobs)
    assert [o.job.line for o in outcomes] == [1, 2] and all(o.error is None for o in outcomes)
    for outcome in outcomes:
        assert np.array_equal(read_video(outcome.job.out)[0], single_runs[outcome.job.out.name][0])
