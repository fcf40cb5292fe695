"""BEV videos: colour frames scaled up by whole pixels so that a 64 px BEV can be watched, as mp4 (OpenCV)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

MIN_VIDEO_PIXELS = 384  # a frame's longer side is scaled up to at least this


def watchable(frame: np.ndarray) -> np.ndarray:
    """An (H, W, 3) RGB frame scaled up by the smallest whole factor that reaches MIN_VIDEO_PIXELS."""
    scale = -(-MIN_VIDEO_PIXELS // max(frame.shape[:2]))
    return (
        cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else frame
    )


class Mp4Writer:
    """RGB frames to an .mp4 at `fps`; the file (and its folder) is made at the first frame."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps = Path(path), fps
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        frame = watchable(frame)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = frame.shape[:2]
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():  # OpenCV says nothing of a file it cannot write
                self._writer = None
                raise OSError(f"cannot write a video to {self.path}")
        self._writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # OpenCV writes BGR
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
