"""A subtitle burnt into a clip for the shop-floor screen: the instruction in a band under the picture.

Hangul needs a font that has it; the fonts fontconfig lists for Korean are used (Debian's
``fonts-nanum``, which ``make browser`` installs, or ``fonts-noto-cjk``). Without one a Korean
subtitle is refused with :class:`SubtitleFontError`, never drawn as empty boxes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Clips narrower than this are enlarged first, so the subtitle is readable from a few metres.
MIN_WIDTH = 512
MAX_LINES = 3
_HANGUL_RE = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
# Where Debian puts Korean fonts, for machines without fontconfig's fc-list.
_KNOWN_FONTS = ("/usr/share/fonts/truetype/nanum/NanumGothic.ttf",
                "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")


class SubtitleFontError(RuntimeError):
    """No installed font can draw the subtitle's script."""


def has_hangul(text: str) -> bool:
    """Whether ``text`` holds Korean letters."""
    return bool(_HANGUL_RE.search(text))


@lru_cache(maxsize=1)
def korean_font() -> Path | None:
    """A font file that draws Hangul: what ``fc-list :lang=ko`` lists (a regular gothic/sans face
    preferred), else a known Debian path; None when there is none."""
    found: list[str] = []
    if shutil.which("fc-list"):
        listed = subprocess.run(["fc-list", ":lang=ko", "file"], capture_output=True, text=True, timeout=30)
        found = sorted(line.strip().rstrip(":") for line in listed.stdout.splitlines() if line.strip())
    found += [path for path in _KNOWN_FONTS if Path(path).is_file()]
    if not found:
        return None
    plain = [path for path in found if re.search(r"gothic|sans", path, re.I) and not re.search(r"bold|coding|light",
                                                                                                  path, re.I)]
    return Path((plain or found)[0])


def _font(text: str, size: int):
    from PIL import ImageFont

    if not has_hangul(text):
        return ImageFont.load_default(size)
    path = korean_font()
    if path is None:
        raise SubtitleFontError("no installed font can draw Korean letters, so the subtitle is left out: install "
                                "one with `make browser` (Debian's fonts-nanum) or `apt-get install fonts-nanum`")
    return ImageFont.truetype(str(path), size)


def _wrap(text: str, font, width: int, draw) -> list[str]:
    """Lines of ``text`` that fit ``width`` pixels, at most :data:`MAX_LINES` (the last one cut with ...)."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    lines.append(line)
    if len(lines) > MAX_LINES:
        last = lines[MAX_LINES - 1]
        while last and draw.textlength(f"{last}...", font=font) > width:
            last = last[:-1]
        lines = [*lines[: MAX_LINES - 1], f"{last}..."]
    return lines


def burn_subtitle(frames: np.ndarray, text: str) -> np.ndarray:
    """The clip ``(F, H, W, 3)`` uint8, enlarged to at least :data:`MIN_WIDTH` pixels wide, with ``text``
    in white on a black band under the picture (the picture itself is not covered).

    Raises:
        SubtitleFontError: ``text`` is Korean and no installed font draws Hangul.
    """
    import cv2
    from PIL import Image, ImageDraw

    text = " ".join(text.split())
    height, width = frames.shape[1:3]
    scale = max(1, -(-MIN_WIDTH // width))
    if scale > 1:
        frames = np.stack([cv2.resize(frame, (width * scale, height * scale), interpolation=cv2.INTER_CUBIC)
                           for frame in frames])
    height, width = frames.shape[1:3]
    size = max(14, width // 24)
    font = _font(text, size)
    band = Image.new("RGB", (width, 1))
    lines = _wrap(text, font, width - 2 * size, ImageDraw.Draw(band))
    line_height = int(size * 1.4)
    band = Image.new("RGB", (width, line_height * len(lines) + size), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for number, line in enumerate(lines):
        draw.text((width // 2, size // 2 + number * line_height), line, font=font, fill=(255, 255, 255), anchor="ma")
    strip = np.asarray(band, dtype=np.uint8)
    return np.stack([np.concatenate([frame, strip], axis=0) for frame in frames])
