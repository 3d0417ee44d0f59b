"""Streaming video writers that never leave a half-written output, and a reader for checks.

`open_video_writer(path, fps, width, height)` picks the format from the extension:

* ``.mp4``: H.264 (libx264, yuv420p) through `imageio_ffmpeg.write_frames`, ``-crf 10`` by default
  (what the official ``save_video``'s ``quality=8`` maps to), ``+faststart``. Frames go to ffmpeg as
  they arrive; no resize (macro_block_size=1), so any even width/height, e.g. multiples of 16 or 32,
  is stored exactly.
* ``.npy``: uint8 ``[F, H, W, 3]``. Frames are appended after a fixed-size header that is rewritten
  with the final frame count at close, so memory use does not depend on the number of frames.

Everything is written to a temporary file beside the output (``.NAME.partial-XXXXXXXX``) that is
renamed onto the output only when the writer closes successfully. If the ``with`` block raises,
the temporary file is deleted and whatever was at the output path stays as it was.

Float frames follow the official ``wan.utils.utils.save_video`` arithmetic exactly: clamp to
[-1, 1], ``(x + 1) / 2`` (torchvision ``make_grid`` with ``normalize=True, value_range=(-1, 1)``),
``* 255``, then a cast to uint8 that truncates toward zero (no rounding), in the input's float
precision (float32 for the VAE output).
"""
from __future__ import annotations

import ast
import numbers
import os
import secrets
from fractions import Fraction
from typing import Optional, Tuple

import numpy as np

from .errors import WanError

SUPPORTED_EXTENSIONS = (".mp4", ".npy")

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "VideoWriter",
    "open_video_writer",
    "read_video",
    "to_uint8_frames",
]


def to_uint8_frames(frames) -> np.ndarray:
    """Frames as uint8 ``[T, H, W, 3]``.

    Accepts float ``[3, T, H, W]`` in [-1, 1] (the VAE decoder's layout) or ``[3, H, W]`` (one
    frame), converted exactly like the official ``save_video``, or uint8 ``[T, H, W, 3]`` /
    ``[H, W, 3]``, passed through.
    """
    array = np.asarray(frames)
    if array.dtype == np.uint8:
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"uint8 frames must be [T, H, W, 3], got shape {array.shape}")
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames must be float [3, T, H, W] in [-1, 1] or uint8 [T, H, W, 3], "
                         f"got dtype {array.dtype}")
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[0] != 3:
        raise ValueError(f"float frames must be [3, T, H, W], got shape {array.shape}")
    # torch computes float32/float64 in their own precision; anything narrower is widened here.
    dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    x = array.astype(dtype, copy=True)
    one, two, scale = dtype.type(1), dtype.type(2), dtype.type(255)
    np.nan_to_num(x, copy=False, nan=-1.0)  # the official cast of NaN is undefined; store black
    np.clip(x, -one, one, out=x)            # save_video's clamp and make_grid's clamp_ (idempotent)
    x += one                                # make_grid norm_ip: sub_(low=-1) ...
    x /= two                                # ... div_(max(high - low, 1e-5)) = div_(2)
    x *= scale                              # (tensor * 255)
    out = x.astype(np.uint8)                # .type(torch.uint8): truncation toward zero
    return np.ascontiguousarray(out.transpose(1, 2, 3, 0))  # permute(1, 2, 3, 0): [T, H, W, 3]


def _check_output_path(path) -> Tuple[str, str]:
    """(absolute final path, lower-case extension); WanError for anything that cannot work."""
    path = os.path.abspath(os.fspath(path))
    ext = os.path.splitext(path)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise WanError(f"unsupported video output {path!r}: use a file name ending in "
                       f"{' or '.join(SUPPORTED_EXTENSIONS)}")
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise WanError(f"output directory {directory!r} does not exist: create it first "
                       f"(mkdir -p) or choose another output path")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise WanError(f"output directory {directory!r} is not writable: fix its permissions "
                       f"or choose another output path")
    if os.path.isdir(path):
        raise WanError(f"output path {path!r} is a directory: give a file name ending in {ext}")
    return path, ext


def _create_temp(final_path: str) -> str:
    """Create an empty, obviously temporary file beside final_path (mode 0666 & ~umask)."""
    directory, name = os.path.split(final_path)
    for _ in range(100):
        temp = os.path.join(directory, f".{name}.partial-{secrets.token_hex(4)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as err:
            raise WanError(f"cannot write in output directory {directory!r} ({err.strerror}): "
                           f"fix its permissions or choose another output path") from None
        os.close(fd)
        return temp
    raise WanError(f"cannot create a temporary file in {directory!r}: remove stale "
                   f".{name}.partial-* files there")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VideoWriter:
    """Context manager; `write()` frames, then leave the block (or `close()`) to publish the file.

    Leaving the block with an exception (or calling `abort()`) discards everything written.
    """

    def __init__(self, path: str, temp_path: str, fps, width: int, height: int):
        self.path = path
        self.temp_path = temp_path
        self.fps = fps
        self.width = width
        self.height = height
        self.frames_written = 0
        self._done = False

    # -- the format-specific part ------------------------------------------------------------
    def _write_uint8(self, frames: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        """Flush and finalise the temporary file (it is then renamed by close())."""
        raise NotImplementedError

    def _discard(self) -> None:
        """Stop any helper process and release handles; the temporary file is removed after."""
        raise NotImplementedError

    # -- the public part ----------------------------------------------------------------------
    def write(self, frames) -> None:
        """Append frames: float [3, T, H, W] in [-1, 1] or uint8 [T, H, W, 3]."""
        if self._done:
            raise ValueError(f"video writer for {self.path!r} is already closed")
        array = to_uint8_frames(frames)
        if array.shape[1:3] != (self.height, self.width):
            raise ValueError(f"frames are {array.shape[2]}x{array.shape[1]} (WxH) but the writer "
                             f"was opened for {self.width}x{self.height}")
        if array.shape[0]:
            self._write_uint8(array)
            self.frames_written += array.shape[0]

    def close(self) -> None:
        """Finish the file and move it onto the output path. Idempotent."""
        if self._done:
            return
        try:
            self._finish()
            _fsync_file(self.temp_path)
            os.replace(self.temp_path, self.path)
        except BaseException as err:
            self.abort()
            if isinstance(err, OSError):
                raise WanError(f"could not finish {self.path!r} ({err}): check free disk space "
                               f"and permissions") from err
            raise
        self._done = True

    def abort(self) -> None:
        """Drop everything written; the output path is left untouched. Idempotent."""
        if self._done:
            return
        self._done = True
        try:
            self._discard()
        finally:
            try:
                os.remove(self.temp_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):  # a writer dropped without close() leaves nothing behind
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass


class _Mp4Writer(VideoWriter):
    def __init__(self, path, temp_path, fps, width, height, crf: int, preset: str):
        super().__init__(path, temp_path, fps, width, height)
        self._gen = None
        self._proc = None
        try:
            import imageio_ffmpeg
            imageio_ffmpeg.get_ffmpeg_exe()
        except Exception as err:
            raise WanError(f"no ffmpeg available for MP4 output ({err}): pip install imageio-ffmpeg, "
                           f"or write .npy instead") from None
        self._gen = imageio_ffmpeg.write_frames(
            temp_path, (width, height), fps=fps, codec="libx264", quality=None,
            pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=1,
            ffmpeg_log_level="error",
            # The temporary name does not end in .mp4, so the muxer is named explicitly.
            output_params=["-crf", str(crf), "-preset", preset, "-movflags", "+faststart",
                           "-f", "mp4"])
        self._gen.send(None)  # starts ffmpeg
        frame = getattr(self._gen, "gi_frame", None)
        self._proc = frame.f_locals.get("p") if frame is not None else None

    def _write_uint8(self, frames):
        for frame in frames:
            try:
                self._gen.send(frame)
            except OSError as err:
                raise WanError(f"ffmpeg stopped while writing {self.path!r}: check free disk space "
                               f"({str(err).splitlines()[0]})") from None

    def _finish(self):
        if self.frames_written == 0:
            raise WanError(f"no frames were written to {self.path!r}: an MP4 needs at least one "
                           f"frame")
        gen, self._gen = self._gen, None
        gen.close()  # closes ffmpeg's stdin and waits for it to finish the file
        code = getattr(self._proc, "returncode", 0)
        if code not in (0, None):
            raise WanError(f"ffmpeg failed (exit status {code}) writing {self.path!r}: check free "
                           f"disk space and the frame size")
        if os.path.getsize(self.temp_path) == 0:
            raise WanError(f"ffmpeg produced an empty file for {self.path!r}: check free disk space")

    def _discard(self):
        gen, self._gen = self._gen, None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()  # don't wait for an encode nobody wants
        if gen is not None:
            gen.close()
        if self._proc is not None:
            self._proc.wait()


class _NpyWriter(VideoWriter):
    # numpy's own reader takes any header length; keep it a multiple of 64 like np.save does.
    _ALIGN = 64
    _MAX_FRAME_DIGITS = 21

    def __init__(self, path, temp_path, fps, width, height):
        super().__init__(path, temp_path, fps, width, height)
        widest = self._header_dict(10 ** (self._MAX_FRAME_DIGITS - 1))
        prefix = len(np.lib.format.magic(1, 0)) + 2
        self._header_size = -(-(prefix + len(widest) + 1) // self._ALIGN) * self._ALIGN
        self._file = open(temp_path, "r+b")
        self._file.write(self._header(0))

    def _header_dict(self, count: int) -> str:
        shape = (int(count), self.height, self.width, 3)
        return "{'descr': '|u1', 'fortran_order': False, 'shape': %r, }" % (shape,)

    def _header(self, count: int) -> bytes:
        magic = np.lib.format.magic(1, 0)
        body = self._header_dict(count)
        body_len = self._header_size - len(magic) - 2
        body = body.ljust(body_len - 1) + "\n"
        assert len(body) == body_len and ast.literal_eval(body.strip())
        return magic + body_len.to_bytes(2, "little") + body.encode("latin1")

    def _write_uint8(self, frames):
        self._file.write(memoryview(frames).cast("B"))

    def _finish(self):
        self._file.seek(0)
        self._file.write(self._header(self.frames_written))
        self._file.close()

    def _discard(self):
        self._file.close()


def open_video_writer(path, fps: int, width: int, height: int, *, crf: int = 10,
                      preset: str = "medium") -> VideoWriter:
    """A writer for `path` (.mp4 or .npy). Checks the output location before any work is done.

    crf/preset apply to MP4 only (x264: crf 0 lossless ... 51 worst; 10 is the official default).
    """
    path, ext = _check_output_path(path)
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0:
        raise WanError(f"fps must be a positive number, got {fps!r}")
    fps = fps if isinstance(fps, (int, Fraction)) else float(fps)
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise WanError(f"video {name} must be a positive integer, got {value!r}")
    width, height = int(width), int(height)
    if ext == ".mp4":
        if width % 2 or height % 2:
            raise WanError(f"MP4 (H.264 yuv420p) needs an even width and height, got "
                           f"{width}x{height}: pick a size that is a multiple of 32, or write .npy")
        if not 0 <= int(crf) <= 51:
            raise WanError(f"crf must be between 0 and 51, got {crf!r}")
    temp = _create_temp(path)
    try:
        if ext == ".mp4":
            return _Mp4Writer(path, temp, fps, width, height, int(crf), str(preset))
        return _NpyWriter(path, temp, fps, width, height)
    except BaseException:
        try:
            os.remove(temp)
        except FileNotFoundError:
            pass
        raise


def read_video(path) -> Tuple[np.ndarray, Optional[float]]:
    """(frames uint8 [F, H, W, 3], fps). fps is None for .npy, which stores no rate."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WanError(f"video file {path!r} not found: check the path")
    if path.lower().endswith(".npy"):
        frames = np.load(path)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise WanError(f"{path!r} is not a uint8 [F, H, W, 3] video array: write it with "
                           f"open_video_writer")
        return frames, None
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    try:
        meta = reader.__next__()
        width, height = meta["size"]
        frames = [np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3) for buf in reader]
    except (OSError, RuntimeError, KeyError) as err:
        raise WanError(f"cannot read video {path!r} ({str(err).splitlines()[0]}): check that it "
                       f"is a complete video file") from None
    finally:
        reader.close()
    array = np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
    return array, float(meta["fps"])
