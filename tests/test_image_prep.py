"""wan_rt.image: i2v preprocessing against the official wan/utils/utils.py and WanTI2V.i2v."""
from __future__ import annotations

import functools
import itertools
import types

import numpy as np
import pytest
import torch
from PIL import Image

import oracle
from wan_rt.errors import WanError
from wan_rt.image import best_output_size, load_image, prepare_image

@functools.lru_cache(maxsize=None)
def load_official():
    return oracle.load_official()


AREAS = [704 * 1280, 480 * 832, 1024 * 1024, 512 * 512, 256 * 256, 100_000, 32 * 32 * 3]


def _sizes():
    rng = np.random.default_rng(0)
    fixed = [(1280, 704), (704, 1280), (1920, 1080), (1080, 1920), (1024, 1024), (1, 1), (33, 33),
             (4000, 3000), (3000, 4000), (640, 480), (480, 640), (1000, 10), (10, 1000),
             (5000, 50), (50, 5000), (20000, 100), (100, 20000), (123, 457), (7, 3), (31, 32)]
    return fixed + [tuple(int(v) for v in rng.integers(1, 6000, 2)) for _ in range(200)]


def test_best_output_size_matches_official():
    official = load_official().utils.best_output_size
    failures = 0
    for (w, h), area in itertools.product(_sizes(), AREAS):
        try:
            expected = official(w, h, 32, 32, area)
        except (ZeroDivisionError, AssertionError):
            failures += 1
            with pytest.raises(WanError, match="aspect ratio"):
                best_output_size(w, h, 32, 32, area)
            continue
        got = best_output_size(w, h, 32, 32, area)
        assert got == expected and all(type(v) is int for v in got), (w, h, area)
        assert got[0] % 32 == 0 and got[1] % 32 == 0 and got[0] * got[1] <= area
    assert failures > 0  # the extreme ratios did reach the official failure paths
    for dw, dh in ((16, 16), (32, 16), (64, 64)):  # other block sizes, as the official allows
        for (w, h), area in itertools.product(_sizes()[:20], AREAS[:4]):
            try:
                expected = official(w, h, dw, dh, area)
            except (ZeroDivisionError, AssertionError):  # where the official code fails, ours refuses
                with pytest.raises(WanError, match="aspect ratio"):
                    best_output_size(w, h, dw, dh, area)
                continue
            assert best_output_size(w, h, dw, dh, area) == expected


def official_i2v_input(img: Image.Image, max_area: int):
    """Run the official WanTI2V.i2v up to its preprocessing result and take `img`, `ow`, `oh`.

    A bare `self` has what the preprocessing reads (patch_size, vae_stride, device, sp_size) and
    no `vae`, so i2v stops with AttributeError right after; its frame's locals hold the tensor.
    """
    official = load_official()
    fake = types.SimpleNamespace(patch_size=(1, 2, 2), vae_stride=(4, 16, 16),
                                 device=torch.device("cpu"), sp_size=1)
    try:
        official.pipeline.WanTI2V.i2v(fake, "a prompt", img, max_area=max_area, frame_num=5,
                                      seed=0)
    except AttributeError as err:
        tb = err.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_name != "i2v":
            tb = tb.tb_next
        assert tb is not None, "i2v frame not found"
        local = tb.tb_frame.f_locals
        return local["img"].numpy(), (local["ow"], local["oh"])
    raise AssertionError("official i2v did not stop where expected")


def torch_i2v_input(img: Image.Image, max_area: int):
    """The same steps re-typed with real-torchvision to_tensor semantics (uint8 -> float32 / 255)."""
    ih, iw = img.height, img.width
    ow, oh = load_official().utils.best_output_size(iw, ih, 32, 32, max_area)
    scale = max(ow / iw, oh / ih)
    img = img.resize((round(iw * scale), round(ih * scale)), Image.LANCZOS)
    x1, y1 = (img.width - ow) // 2, (img.height - oh) // 2
    img = img.crop((x1, y1, x1 + ow, y1 + oh))
    t = torch.from_numpy(np.array(img, np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    t = t.to(dtype=torch.get_default_dtype()).div(255)
    return t.sub_(0.5).div_(0.5).unsqueeze(1).numpy(), (ow, oh)


def test_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height)[:, None, None]
    x = np.linspace(0, 255, width)[None, :, None]
    base = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                           np.broadcast_to(y, (height, width, 1)),
                           np.broadcast_to((x + y) / 2, (height, width, 1))], axis=2)
    noisy = base + rng.normal(0, 40, (height, width, 3))  # edges and noise exercise LANCZOS
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8), "RGB")


test_image.__test__ = False  # a helper, not a test


CASES = [((640, 480), 704 * 1280), ((480, 640), 704 * 1280), ((1920, 1080), 704 * 1280),
         ((1000, 1000), 480 * 832), ((123, 457), 256 * 256), ((2000, 300), 480 * 832),
         ((333, 1001), 100_000), ((1280, 704), 704 * 1280)]


@pytest.mark.parametrize("size,max_area", CASES)
def test_prepare_image_matches_official_i2v(size, max_area):
    img = test_image(*size, seed=size[0] * 7 + size[1])
    ours, (ow, oh) = prepare_image(img, max_area)
    ref, ref_size = official_i2v_input(img, max_area)
    assert (ow, oh) == ref_size
    assert ours.dtype == np.float32 and ours.shape == (3, 1, oh, ow) == ref.shape
    np.testing.assert_array_equal(ours, ref)
    typed, _ = torch_i2v_input(img, max_area)
    np.testing.assert_array_equal(ours, typed)
    assert ours.min() >= -1.0 and ours.max() <= 1.0


def test_load_image(tmp_path):
    rgba = Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 60, 4), np.uint8), "RGBA")
    rgba.save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (60, 40)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(rgba.convert("RGB")))
    Image.fromarray(np.full((20, 30), 99, np.uint8), "L").save(tmp_path / "g.jpg")
    gray = load_image(str(tmp_path / "g.jpg"))
    assert gray.mode == "RGB" and gray.size == (30, 20)
    arr, size = prepare_image(gray, 256 * 256)
    assert arr.shape == (3, 1, size[1], size[0])


def test_load_image_errors(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(WanError, match="missing.png"):
        load_image(missing)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    with pytest.raises(WanError, match="garbage.jpg"):
        load_image(garbage)
    good = tmp_path / "truncated.png"
    test_image(64, 64, 0).save(good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(WanError, match="truncated.png"):
        load_image(good)
    with pytest.raises(WanError, match="cannot read image"):
        load_image(tmp_path)  # a directory


def test_prepare_image_errors():
    img = test_image(4000, 10, 1)
    with pytest.raises(WanError, match="aspect ratio"):
        prepare_image(img, 32 * 32 * 3)
    with pytest.raises(WanError, match="max area"):
        prepare_image(img, 0)
