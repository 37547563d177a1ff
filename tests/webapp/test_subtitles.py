"""The burnt-in subtitle: a band under the picture, Hangul drawn with an installed Korean font, or a clear refusal."""

from __future__ import annotations

import numpy as np
import pytest

from machining_t2v.webapp import subtitles
from machining_t2v.webapp.subtitles import (
    MIN_WIDTH,
    SubtitleFontError,
    burn_subtitle,
    has_hangul,
    korean_font,
)

CLIP = np.full((3, 64, 64, 3), 90, dtype=np.uint8)


def test_a_small_clip_is_enlarged_and_the_text_sits_in_a_band_under_it():
    out = burn_subtitle(CLIP, "face the steel bar on the lathe")
    assert out.shape[0] == 3 and out.shape[2] == MIN_WIDTH and out.shape[1] > MIN_WIDTH
    picture, band = out[:, :MIN_WIDTH], out[:, MIN_WIDTH:]
    assert (picture == 90).all()  # the picture itself is not written on
    assert band.max() == 255 and (band == 0).mean() > 0.5  # white letters on black
    assert (out[0] == out[2]).all()


def test_a_long_text_is_wrapped_into_at_most_three_lines():
    one_line = burn_subtitle(CLIP, "slot milling").shape[1]
    long = burn_subtitle(CLIP, " ".join(["rough-mill the pocket with a ten millimetre end mill"] * 20)).shape[1]
    two_lines = burn_subtitle(CLIP, "rough-mill the pocket with a ten millimetre end mill").shape[1]
    line = two_lines - one_line
    assert line > 0 and long == one_line + 2 * line  # three lines, the rest cut


@pytest.mark.skipif(korean_font() is None, reason="no Korean font installed: `make browser` installs fonts-nanum")
def test_korean_is_drawn_with_a_font_that_has_hangul():
    assert has_hangul("엔드밀로 슬롯 가공") and not has_hangul("slot milling")
    band = burn_subtitle(CLIP, "엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공")[0, MIN_WIDTH:]
    assert (band > 200).sum() > 500  # letters, not the few strokes of missing-glyph boxes


def test_without_a_korean_font_a_korean_subtitle_is_refused_clearly(monkeypatch, tmp_path):
    korean_font.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no fc-list
    monkeypatch.setattr(subtitles, "_KNOWN_FONTS", ())
    try:
        assert korean_font() is None
        with pytest.raises(SubtitleFontError, match="no installed font can draw Korean letters.*fonts-nanum"):
            burn_subtitle(CLIP, "슬롯 가공")
        assert burn_subtitle(CLIP, "slot milling").shape[2] == MIN_WIDTH  # Latin text needs no extra font
    finally:
        korean_font.cache_clear()
