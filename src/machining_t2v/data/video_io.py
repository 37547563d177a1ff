"""Video reading and writing shared by every pipeline.

Reading opens every file with decord (frame count, frame rate, keyframes, clear errors for files
that are not videos) and decodes the frames a caller needs with the faster access pattern for
that file: reading on from the first frame up to the last one needed, skipping the others (dense
sampling, short files), or seeking from keyframe to keyframe (sparse sampling of long files); both
return the same pixels. Writing goes through OpenCV for the training-data containers (mp4v .mp4, VP9 .webm, MJPG .avi) and
through the ffmpeg binary shipped by ``imageio-ffmpeg`` for browser-playable H.264 .mp4.
Nothing here imports Kedro, so it also runs in notebooks and under ``accelerate launch``.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".webm", ".mkv")

# FourCC per container for OpenCV's writer; the pip wheels cannot encode H.264.
_OPENCV_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".webm": "VP90", ".mkv": "VP90"}


class VideoReadError(RuntimeError):
    """A video file could not be opened or decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What a video holds: frame count, frame rate and frame size in pixels."""

    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def _open_reader(path: str | Path, width: int = -1, height: int = -1, num_threads: int = 0):
    """Open ``path`` with decord (``num_threads`` 0: as many decoding threads as cores), turning every
    failure into a ``VideoReadError``."""
    import decord

    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "file is empty (0 bytes)")
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height, num_threads=num_threads)
    except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VideoReadError(path, f"not a decodable video ({first_line[:160]})") from error
    if len(reader) == 0:
        raise VideoReadError(path, "video has no frames")
    return reader


SEQUENTIAL = "sequential"
SPARSE = "sparse"


class OpenVideo:
    """A video opened once with decord: its frame count and rate, ``info`` and any frames, without
    reopening the file."""

    # Decoding every frame of a range beats seeking to sparse ones while the range holds
    # at most this many times the frames wanted (measured in benchmarks/decode.py).
    DENSE_RANGE_FACTOR = 3
    # What decord spends on a frame it decodes after a seek (its get_batch, seeks included), in frames
    # it decodes in the same time reading on sequentially. Measured by benchmarks/decode.py on the
    # 640x480 H.264 file (keyframe every 30 frames), `pipeline` pattern: the frames node with the sparse
    # pattern forced spends 0.91 ms per frame decord decodes, with the sequential pattern forced 0.38 ms
    # per frame up to the last one wanted (2.4x). `access_pattern` compares the two costs per file.
    SPARSE_FRAME_COST = 2.4
    # Frames decoded at once on the sparse path: bounds the full-size frames held in memory.
    SPARSE_BATCH = 8

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # Opened for its index (frame count, rate, keyframes) with one thread, which opens faster; the
        # sequential path decodes with it too, the sparse path with a reader of its own, a thread per core.
        self._index = _open_reader(self.path, num_threads=1)
        self._decoder = None
        self.num_frames = len(self._index)
        self.fps = float(self._index.get_avg_fps())
        self._info: VideoInfo | None = None
        self._frame_size: tuple[int, int] | None = None

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the frames: of the frames decoded so far, else from ``info``."""
        if self._frame_size is None:
            self._frame_size = (self.info.width, self.info.height)
        return self._frame_size

    @property
    def _reader(self):
        """decord's reader for decoding (multi-threaded), opened on first use."""
        if self._decoder is None:
            self._decoder = _open_reader(self.path)
        return self._decoder

    @property
    def info(self) -> VideoInfo:
        """Frame count, frame rate and size (the size comes from decoding frame 0, once)."""
        if self._info is None:
            try:
                height, width = self._index[0].shape[:2]
            except Exception as error:
                raise VideoReadError(self.path,
                                     f"first frame does not decode ({str(error).strip()[:160]})") from error
            self._info = VideoInfo(num_frames=self.num_frames, fps=self.fps, width=width, height=height)
        return self._info

    def decode_cost(self, indices: list[int]) -> dict[str, float]:
        """Estimated cost of decoding ``indices`` per access pattern, in frames decoded sequentially.

        ``sequential`` decodes every frame up to the last one wanted. ``sparse`` decodes, for each
        frame wanted, from the frame before it when that is in the same keyframe interval (no seek)
        or else from its keyframe, at ``SPARSE_FRAME_COST`` per frame.
        """
        wanted = sorted(set(indices))
        if not wanted:
            return {SEQUENTIAL: 0.0, SPARSE: 0.0}
        keys = sorted(int(k) for k in self._index.get_key_indices()) or [0]
        decoded, position, key_at = 0, -1, 0
        for index in wanted:
            while key_at + 1 < len(keys) and keys[key_at + 1] <= index:
                key_at += 1
            keyframe = keys[key_at]
            decoded += index - position if keyframe <= position < index else index - keyframe + 1
            position = index
        return {SEQUENTIAL: float(wanted[-1] + 1), SPARSE: self.SPARSE_FRAME_COST * decoded}

    def access_pattern(self, indices: list[int]) -> str:
        """The cheaper way to decode ``indices`` of this file (see ``decode_cost``)."""
        cost = self.decode_cost(indices)
        return SEQUENTIAL if cost[SEQUENTIAL] <= cost[SPARSE] else SPARSE

    def _checked_pattern(self, wanted: list[int], pattern: str | None) -> str:
        """Refuse indices outside the video; the forced pattern, else the cheaper one for ``wanted``."""
        bad = [i for i in wanted if not 0 <= i < self.num_frames]
        if bad:
            raise VideoReadError(self.path, f"frame indices {bad[:5]} outside 0..{self.num_frames - 1}")
        pattern = pattern or self.access_pattern(wanted)
        if pattern not in (SEQUENTIAL, SPARSE):
            raise ValueError(f"access pattern must be {SEQUENTIAL!r} or {SPARSE!r}, got {pattern!r}")
        return pattern

    def iter_frames(self, indices: list[int], pattern: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Decode the frames at ``indices`` one by one: ``(index, uint8 RGB (H, W, 3))`` in increasing
        index order, each index once, at full size.

        ``pattern`` forces an access pattern (``sequential`` or ``sparse``); by default the cheaper one
        for this file. Both return the same pixels.
        """
        wanted = sorted(set(indices))
        if not wanted:
            return
        pattern = self._checked_pattern(wanted, pattern)
        yield from self._decode(wanted, pattern)

    def iter_squares(self, sizes: dict[int, list[int]], pattern: str | None = None
                     ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Decode the frames ``sizes`` names and reduce each to square RGB frames of the sizes listed for
        it (see :func:`square_frame`): ``(index, size, square)`` in increasing index order.

        Each full-size frame is dropped once it is reduced, so only a few are held at a time.
        ``pattern`` as in ``iter_frames``.
        """
        wanted = sorted(index for index, wanted_sizes in sizes.items() if wanted_sizes)
        if not wanted:
            return
        pattern = self._checked_pattern(wanted, pattern)
        for index, frame in self._decode(wanted, pattern):
            for size in dict.fromkeys(sizes[index]):
                yield index, size, square_frame(frame, size)

    def _decode(self, wanted: list[int], pattern: str) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, full-size RGB frame)`` for the sorted indices ``wanted``."""
        done = 0
        if pattern == SEQUENTIAL:
            for index, frame in self._read_sequentially(wanted):
                done += 1
                self._frame_size = (frame.shape[1], frame.shape[0])
                yield index, frame
        for start in range(done, len(wanted), self.SPARSE_BATCH):
            batch = wanted[start : start + self.SPARSE_BATCH]
            try:
                frames = self._reader.get_batch(batch).asnumpy()
            except Exception as error:
                raise VideoReadError(self.path, f"decoding failed ({str(error).strip()[:160]})") from error
            self._frame_size = (frames.shape[2], frames.shape[1])
            yield from zip(batch, frames, strict=True)

    def _read_sequentially(self, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """decord from the first frame on, with the reader already open for the index: frames not
        wanted are skipped (decoded, not converted to RGB). Its one decoding thread leaves the other
        cores to the resizing and to other videos. Stops early (the caller goes on with the seeking
        reader, which reports the error) where decoding fails or the stream ends before the index says."""
        reader = self._index
        try:
            reader.seek(0)  # ``info`` may have moved it
        except Exception:  # decord raises its own DECORDError and plain RuntimeErrors
            return
        position = 0
        for index in wanted:
            try:
                if index > position:
                    reader.skip_frames(index - position)
                frame = reader.next().asnumpy()
            except Exception:  # StopIteration at the end of the stream, or a decoding error
                return
            position = index + 1
            yield index, frame

    def frames(self, indices: list[int], resolution: int | None = None) -> np.ndarray:
        """Decode the frames at ``indices`` as uint8 RGB (N, H, W, 3).

        With ``resolution`` each frame is resized so its shorter side equals it (area
        interpolation), then centre-cropped to a square, which is what SD-family models train on.
        """
        if not indices:
            return np.zeros((0, resolution or 0, resolution or 0, 3), np.uint8)
        bad = [i for i in indices if not 0 <= i < self.num_frames]
        if bad:
            raise VideoReadError(self.path, f"frame indices {bad[:5]} outside 0..{self.num_frames - 1}")
        first, last = min(indices), max(indices)
        dense = last - first + 1 <= self.DENSE_RANGE_FACTOR * len(set(indices))
        try:
            # Decoded at full size: decord's own resize-while-decoding fails on widths it cannot align.
            if dense:
                block = self._reader.get_batch(list(range(first, last + 1))).asnumpy()
                frames = block[[i - first for i in indices]]
            else:
                frames = self._reader.get_batch(list(indices)).asnumpy()
        except Exception as error:
            raise VideoReadError(self.path, f"decoding failed ({str(error).strip()[:160]})") from error
        if resolution is None:
            return frames
        return np.stack([square_frame(frame, resolution) for frame in frames])


def square_frame(frame: np.ndarray, resolution: int) -> np.ndarray:
    """One (H, W, 3) frame resized so its shorter side equals ``resolution`` (area interpolation), then
    centre-cropped to a square, which is what SD-family models train on."""
    height, width = frame.shape[:2]
    resized = cv2.resize(frame, resize_shape_for_crop(width, height, resolution), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(center_crop(resized, resolution))


def probe_video(path: str | Path) -> VideoInfo:
    """Return frame count, fps and size of ``path``, decoding only its first frame."""
    return OpenVideo(path).info


def resize_shape_for_crop(width: int, height: int, resolution: int) -> tuple[int, int]:
    """Size (w, h) to resize to so the shorter side equals ``resolution`` (aspect kept)."""
    scale = resolution / min(width, height)
    return max(resolution, round(width * scale)), max(resolution, round(height * scale))


def center_crop(frames: np.ndarray, resolution: int) -> np.ndarray:
    """Crop the central ``resolution`` x ``resolution`` square of (..., H, W, C) frames."""
    height, width = frames.shape[-3], frames.shape[-2]
    top = (height - resolution) // 2
    left = (width - resolution) // 2
    return frames[..., top : top + resolution, left : left + resolution, :]


def read_frames(path: str | Path, indices: list[int], resolution: int | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` of ``path`` (see ``OpenVideo.frames``)."""
    return OpenVideo(path).frames(indices, resolution)


def clip_start_indices(num_video_frames: int, num_frames: int, stride: int, max_clips: int) -> list[int]:
    """Start frames of up to ``max_clips`` clips of ``num_frames`` frames taken every ``stride`` frames.

    Clips are spread evenly over the video (first starts at 0, last ends at the last frame) and
    never overlap more than needed. A video shorter than one clip's span gives no clip.
    """
    if num_frames < 1 or stride < 1 or max_clips < 1:
        raise ValueError(f"num_frames, stride and max_clips must be >= 1, got {num_frames}, {stride}, {max_clips}")
    span = (num_frames - 1) * stride + 1
    if num_video_frames < span:
        return []
    last_start = num_video_frames - span
    # No more clips than fit without overlapping when the video is long enough for that.
    count = min(max_clips, last_start // span + 1) if last_start >= span else 1
    if count == 1:
        return [last_start // 2]
    return sorted({round(i * last_start / (count - 1)) for i in range(count)})


def clip_frame_indices(start: int, num_frames: int, stride: int) -> list[int]:
    """Frame indices of the clip that starts at ``start``."""
    return [start + i * stride for i in range(num_frames)]


def still_frame_indices(num_video_frames: int, count: int) -> list[int]:
    """Indices of ``count`` still frames spread evenly, each at the centre of an equal segment."""
    if num_video_frames < 1 or count < 1:
        return []
    count = min(count, num_video_frames)
    return [int((i + 0.5) * num_video_frames / count) for i in range(count)]


def stride_for_fps(video_fps: float, target_fps: float | None, frame_stride: int) -> int:
    """Frame stride that samples ``target_fps`` from a ``video_fps`` video (``frame_stride`` if unset)."""
    if not target_fps:
        return frame_stride
    if target_fps <= 0:
        raise ValueError(f"target_fps must be positive, got {target_fps}")
    return max(1, round(video_fps / target_fps))


def motion_score(frames: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames, on the 0-255 scale (0 = static)."""
    if len(frames) < 2:
        return 0.0
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0))
    return float(diffs.mean())


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 RGB frames (T, H, W, 3) with OpenCV; the codec follows the file extension.

    The file is written under a temporary name and renamed, so a crash never leaves a
    half-written video that a later run would try to read.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _OPENCV_FOURCC:
        raise ValueError(f"{path}: unsupported video extension {suffix!r}; use one of {sorted(_OPENCV_FOURCC)}")
    frames = _check_frames(path, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.tmp-{os.getpid()}{suffix}")
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter_fourcc(*_OPENCV_FOURCC[suffix]), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV could not open a {_OPENCV_FOURCC[suffix]} writer")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    os.replace(tmp_path, path)
    return path


def write_h264(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write a browser-playable H.264 .mp4 (yuv420p) through the ffmpeg binary of imageio-ffmpeg."""
    import imageio_ffmpeg

    path = Path(path)
    frames = _check_frames(path, frames)
    # yuv420p needs even sizes; pad by repeating the last row/column.
    height, width = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    height, width = frames.shape[1:3]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.tmp-{os.getpid()}.mp4")
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if result.returncode != 0:
        tmp_path.unlink(missing_ok=True)
        raise OSError(f"{path}: ffmpeg failed: {result.stderr.decode(errors='replace').strip()[:300]}")
    os.replace(tmp_path, path)
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write an animated GIF that loops forever (plays in every browser and in MLflow's UI)."""
    from PIL import Image

    path = Path(path)
    frames = _check_frames(path, frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return path


def _check_frames(path: Path, frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{path}: expected frames shaped (T, H, W, 3) with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 frames, got {frames.dtype}")
    return frames
