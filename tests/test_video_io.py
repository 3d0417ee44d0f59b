"""wan_rt.video: streaming MP4/NPY writers, the official float -> uint8 conversion, atomic output."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import oracle
from requires import unwritable_folder
from wan_rt.errors import WanError
from wan_rt.video import open_video_writer, read_video, to_uint8_frames

W, H, FPS = 96, 64, 24


def official_uint8(video: torch.Tensor) -> np.ndarray:
    """What the official `save_video` hands its writer for `video` [3, T, H, W] (tests/oracle.py)."""
    return oracle.official_uint8_frames(oracle.load_official(), video)


def gradient_video(frames: int, height: int = H, width: int = W) -> np.ndarray:
    """Smooth moving colour gradients, float32 [3, T, H, W] in [-1, 1] (kind to H.264)."""
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    y = np.linspace(0, 1, height, dtype=np.float32)[None, :, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, None, :]
    r = np.sin(2.0 * x + 0.15 * t) * 0.8
    g = np.cos(1.5 * y - 0.1 * t) * 0.7
    b = (x + y) - 1.0 + 0.02 * t
    return np.stack([np.broadcast_to(c, (frames, height, width)) for c in (r, g, b)]
                    ).clip(-1, 1).astype(np.float32)


def boundary_values() -> np.ndarray:
    """Values that probe the truncating cast: exact k/255 points and their float32 neighbours."""
    k = np.arange(256, dtype=np.float64)
    exact = (k / 255.0 * 2.0 - 1.0).astype(np.float32)
    values = np.concatenate([exact, np.nextafter(exact, np.float32(-2)),
                             np.nextafter(exact, np.float32(2)),
                             np.float32([-1.5, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 1e-8, -1e-8])])
    rng = np.random.default_rng(0)
    return np.concatenate([values, rng.uniform(-1.2, 1.2, 4096).astype(np.float32)])


def test_uint8_conversion_matches_official_float32():
    values = boundary_values()
    n = values.size // (3 * 2 * 4) * (3 * 2 * 4)
    video = values[:n].reshape(3, 2, 4, -1)  # [3, T, H, W]
    ours = to_uint8_frames(video)
    ref = official_uint8(torch.from_numpy(video))
    assert ours.dtype == np.uint8 and ours.shape == ref.shape == (2, 4, n // 24, 3)
    np.testing.assert_array_equal(ours, ref)
    # truncation, not rounding: 0.0 -> 127.5 -> 127; +-1 -> 255 / 0; out of range is clamped
    spot = to_uint8_frames(np.float32([0.0, 1.0, -1.0, 2.0, -3.0, 0.999]).reshape(3, 1, 1, 2))
    assert spot[0, 0, :, :].T.tolist() == [[127, 255], [0, 255], [0, 254]]


def test_uint8_conversion_matches_official_float64_and_gradient():
    video = gradient_video(5)
    np.testing.assert_array_equal(to_uint8_frames(video), official_uint8(torch.from_numpy(video)))
    video64 = boundary_values()[:3 * 1 * 1 * 1000].astype(np.float64).reshape(3, 1, 1, 1000)
    np.testing.assert_array_equal(to_uint8_frames(video64),
                                  official_uint8(torch.from_numpy(video64)))
    # uint8 [T, H, W, 3] passes through unchanged; bad layouts are refused
    frames = np.random.default_rng(1).integers(0, 256, (2, 4, 6, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8_frames(frames), frames)
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((4, 2, 4, 6), np.float32))


def test_mp4_roundtrip_chunked(tmp_path):
    video = gradient_video(9)
    path = tmp_path / "out.mp4"
    with open_video_writer(path, FPS, W, H) as writer:
        for start, stop in ((0, 1), (1, 5), (5, 9)):  # the decoder's chunks: 1 frame, then 4s
            writer.write(video[:, start:stop])
            assert not path.exists()
            temps = [n for n in os.listdir(tmp_path) if n.startswith(".out.mp4.partial-")]
            assert len(temps) == 1
        assert writer.frames_written == 9
    assert sorted(os.listdir(tmp_path)) == ["out.mp4"]
    frames, fps = read_video(path)
    assert frames.shape == (9, H, W, 3) and frames.dtype == np.uint8
    assert fps == pytest.approx(FPS)
    expected = to_uint8_frames(video).astype(np.float64)
    mae = np.abs(frames.astype(np.float64) - expected).mean()
    assert mae < 2.0, mae
    per_frame = np.abs(frames.astype(np.float64) - expected).mean(axis=(1, 2, 3))
    assert per_frame.max() < 3.0, per_frame  # frames in order, none dropped or duplicated


@pytest.mark.parametrize("width,height", [(80, 48), (160, 96), (70, 38)])
def test_mp4_sizes_written_without_resize(tmp_path, width, height):
    path = tmp_path / "size.mp4"
    frames = to_uint8_frames(gradient_video(2, height, width))
    with open_video_writer(path, 16, width, height) as writer:
        writer.write(frames)
    back, fps = read_video(path)
    assert back.shape == (2, height, width, 3) and fps == pytest.approx(16)
    assert np.abs(back.astype(float) - frames).mean() < 2.0


def test_npy_exact_and_memory_mappable(tmp_path):
    video = gradient_video(9)
    path = tmp_path / "out.npy"
    with open_video_writer(path, FPS, W, H) as writer:
        writer.write(video[:, :1])
        writer.write(video[:, 1:5])
        writer.write(to_uint8_frames(video[:, 5:9]))  # uint8 chunks mix with float ones
    assert sorted(os.listdir(tmp_path)) == ["out.npy"]
    expected = official_uint8(torch.from_numpy(video))
    loaded = np.load(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (9, H, W, 3)
    np.testing.assert_array_equal(loaded, expected)
    mapped = np.load(path, mmap_mode="r")
    assert mapped.offset % 64 == 0
    np.testing.assert_array_equal(mapped, expected)
    frames, fps = read_video(path)
    np.testing.assert_array_equal(frames, expected)
    assert fps is None
    # zero frames is a valid (empty) array
    with open_video_writer(tmp_path / "empty.npy", FPS, W, H):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0, H, W, 3)


@pytest.mark.parametrize("ext", [".mp4", ".npy"])
def test_exception_leaves_nothing_and_keeps_existing_file(tmp_path, ext):
    video = gradient_video(5)
    fresh = tmp_path / f"fresh{ext}"
    with pytest.raises(RuntimeError, match="boom"):
        with open_video_writer(fresh, FPS, W, H) as writer:
            writer.write(video[:, :1])
            writer.write(video[:, 1:5])
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []

    existing = tmp_path / f"existing{ext}"
    existing.write_bytes(b"previous result")
    with pytest.raises(KeyboardInterrupt):
        with open_video_writer(existing, FPS, W, H) as writer:
            writer.write(video[:, :1])
            raise KeyboardInterrupt
    assert existing.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == [existing.name]

    # a bad chunk inside the block is an exception like any other
    with pytest.raises(ValueError):
        with open_video_writer(existing, FPS, W, H) as writer:
            writer.write(video[:, :1, :32])  # wrong height
    assert existing.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == [existing.name]

    # a successful write replaces it
    with open_video_writer(existing, FPS, W, H) as writer:
        writer.write(video)
    assert read_video(existing)[0].shape == (5, H, W, 3)
    assert os.listdir(tmp_path) == [existing.name]


def test_mp4_without_frames_fails_cleanly(tmp_path):
    with pytest.raises(WanError, match="no frames"):
        with open_video_writer(tmp_path / "none.mp4", FPS, W, H):
            pass
    assert os.listdir(tmp_path) == []


def test_bad_extension_and_sizes(tmp_path):
    with pytest.raises(WanError, match=r"\.mp4.*\.npy"):
        open_video_writer(tmp_path / "out.avi", FPS, W, H)
    with pytest.raises(WanError, match="even"):
        open_video_writer(tmp_path / "odd.mp4", FPS, 95, 64)
    with pytest.raises(WanError, match="fps"):
        open_video_writer(tmp_path / "out.mp4", 0, W, H)
    with pytest.raises(WanError, match="unsupported"):
        open_video_writer(tmp_path, FPS, W, H)  # no extension at all
    (tmp_path / "adir.mp4").mkdir()
    with pytest.raises(WanError, match="is a directory"):
        open_video_writer(tmp_path / "adir.mp4", FPS, W, H)
    assert sorted(os.listdir(tmp_path)) == ["adir.mp4"]


def test_missing_or_unusable_directory(tmp_path):
    with pytest.raises(WanError, match="does not exist"):
        open_video_writer(tmp_path / "missing" / "out.mp4", FPS, W, H)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(WanError, match="does not exist"):
        open_video_writer(tmp_path / "file" / "out.npy", FPS, W, H)
    if sys.platform.startswith("linux") and os.path.isdir("/proc"):
        with pytest.raises(WanError, match="/proc"):  # no one, not even root, creates files here
            open_video_writer("/proc/out.mp4", FPS, W, H)
    with pytest.raises(WanError, match="not found"):
        read_video(tmp_path / "nothing.mp4")


def test_read_only_directory(tmp_path):
    """A folder that refuses new files (for root too: see requires.unwritable_folder): one error, nothing left."""
    locked = unwritable_folder(tmp_path)
    before = sorted(os.listdir(locked))
    try:
        with pytest.raises(WanError, match=r"output directory .* (is not writable|\(Permission denied\))"):
            open_video_writer(locked / "out.mp4", FPS, W, H)
        assert sorted(os.listdir(locked)) == before
    finally:
        if locked.is_relative_to(tmp_path):
            locked.chmod(0o755)
