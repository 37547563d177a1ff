"""The synthetic world the starter model is pretrained in, and the labels the in-world evaluator knows.

The starter model (see :mod:`machining_t2v_starter.stages`) has to draw and move *generic* scenes
before any fine-tuning, so that the image and motion LoRAs have something to adapt and
their effect can be measured. This module renders that generic world as 64 px clips:

* **neutral machine scenes** -- the milling and turning scenes of
  :mod:`machining_t2v.data.synthetic_videos` in grey: no workpiece materials, no machine colours,
  and captions that name the process but neither the material nor the tool-path
  direction. The tool does move, in a random direction, so the motion adapter learns that
  tools travel, not which way a shop's job goes;
* **plain shapes** -- a circle, square or triangle in a named colour on a plain background
  that moves in one of eight directions, rotates, grows or shrinks, or bounces, with the
  motion in the caption (a moving-shapes data set): generic motion words the LoRAs can
  build on.

What is deliberately left out is the shop: its colours and materials (the image LoRA's job)
and its tool-path directions (the motion LoRA's). :func:`render_shop_clip` renders that look
from :mod:`machining_t2v.data.synthetic_videos` for the in-world evaluator, which must know both.

Every clip carries labels in the evaluator's vocabulary: ``scene`` (:data:`SCENES`),
``style`` (:data:`STYLES`) and ``motion`` (:data:`MOTIONS`); it is defined here, trained into
the evaluator and saved with it, and the product reads it from the evaluator's files. What a
prompt or caption asks for (:func:`expected_labels`) and the world's rule for the evaluator's
labels (:func:`apply_world_rules`) are the product's (:mod:`machining_t2v.evaluation.inworld_prompts`),
because the evaluation uses them; so are the caption phrases of a direction
(:data:`DIRECTION_WORDINGS`), which they read. Everything is a pure function of the seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from machining_t2v.data import video_io
from machining_t2v.data.synthetic_videos.clips import ClipSpec, render_clip, sample_clip_specs
from machining_t2v.evaluation.flow import DIRECTION_VECTORS
from machining_t2v.evaluation.inworld_prompts import (  # noqa: F401  (apply_world_rules, expected_labels: the world's, re-exported)
    DIRECTION_WORDINGS,
    apply_world_rules,
    expected_labels,
    longest_first,
)

SCENES = ("milling", "turning", "shapes")
STYLES = ("neutral", "shop")
MOTIONS = (
    "right", "left", "down", "up", "down-right", "up-left", "up-right", "down-left",
    "inward", "rotate", "scale", "bounce", "static",
)

#: Tool-path direction of the sample videos (see ``sample_videos``) -> motion label.
DIRECTION_MOTIONS = {
    "x": "right", "-x": "left", "y": "down", "-y": "up",
    "diagonal": "down-right", "-diagonal": "up-left",
    "left": "left", "right": "right", "inward": "inward",
}

#: Unit vectors (image x right, y down) of the eight translation labels, in :data:`MOTIONS` order
#: (a bouncing shape draws its direction by position in this table).
_TRANSLATIONS = {motion: DIRECTION_VECTORS[motion] for motion in MOTIONS if motion in DIRECTION_VECTORS}


_SHAPE_COLOURS = {
    "red": (210, 45, 40), "green": (50, 170, 70), "blue": (45, 85, 210), "yellow": (230, 205, 40),
    "orange": (235, 130, 30), "purple": (140, 60, 180), "white": (240, 240, 240), "black": (25, 25, 25),
}
_SHAPES = ("circle", "square", "triangle")

#: Words the starter tokenizer keeps whole, on top of the tiny model's domain words.
WORLD_WORDS: tuple[str, ...] = tuple(
    """
    circle triangle shape shapes grows growing shrinks shrinking bounces bouncing rotate
    top bottom diagonally back forth inwards centre center plain background
    purple pink titanium cast iron copper clockwise radial grey
    """.split()
)

SIZE = 64
NUM_FRAMES = 8
# The frames pipeline's defaults (conf/base/parameters_frames.yml): shop clips are cut like its clips.
FRAME_STRIDE = 2
CLIPS_PER_VIDEO = 3


@dataclass(frozen=True)
class WorldClip:
    """One rendered clip of the starter world with its caption and labels."""

    frames: np.ndarray  # uint8 (F, H, W, 3)
    caption: str
    scene: str
    style: str
    motion: str

    @property
    def labels(self) -> dict[str, str]:
        return {"scene": self.scene, "style": self.style, "motion": self.motion}


# --------------------------------------------------------------------------- machine scenes


def _machine_specs(count: int, seed: int, render_size: int) -> list[ClipSpec]:
    """Specs with every milling/turning job, 2 * NUM_FRAMES source frames each."""
    specs = sample_clip_specs(
        count, seed=seed, width=render_size, height=render_size,
        min_seconds=2 * NUM_FRAMES / 12, max_seconds=2 * NUM_FRAMES / 12,
    )
    return specs


def _area_downsample(frames: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Square frames resized to ``size`` with area interpolation, as the frames pipeline resizes."""
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def _to_world_frames(video: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The video's first clip, every ``FRAME_STRIDE``-th frame, area-downsampled."""
    return _area_downsample(video[::FRAME_STRIDE][:NUM_FRAMES], size)


def neutral_look(frames: np.ndarray) -> np.ndarray:
    """The neutral (pretraining) look of a shop render: its luminance in grey."""
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    return np.repeat(grey[..., None], 3, axis=-1)


def neutral_machine_caption(process: str) -> str:
    """Caption of a neutral machine scene: the process, never the material or direction."""
    if process == "milling":
        return "milling on a milling machine, grey workpiece, spinning end mill"
    return "turning on a lathe, grey bar spinning in the chuck, fixed turning tool"


def render_machine_clips(count: int, seed: int, *, shop: bool, render_size: int = 128) -> list[WorldClip]:
    """``count`` milling/turning clips, in the neutral grey look or the shop's own look.

    Shop clips keep the sample videos' captions (material and direction included).
    """
    clips = []
    for spec in _machine_specs(count, seed, render_size):
        frames = _to_world_frames(render_clip(spec))
        if shop:
            caption, style = spec.caption, "shop"
        else:
            frames, caption, style = neutral_look(frames), neutral_machine_caption(spec.process), "neutral"
        clips.append(WorldClip(frames, caption, spec.process, style, DIRECTION_MOTIONS[spec.direction]))
    return clips


def render_shop_clip(spec: ClipSpec) -> np.ndarray:
    """A sample-video spec rendered as a 64 px, 8-frame clip in the shop's look."""
    return _to_world_frames(render_clip(spec))


def render_sample_video_clips(count: int, seed: int) -> list[WorldClip]:
    """``count`` shop clips cut from videos rendered like the built-in sample videos.

    The videos have the sample data's defaults (256 px, 2 to 4 s at 12 fps); one clip of each is
    cut as the frames pipeline cuts them (8 frames, every second frame, area-downsampled to 64
    px, at one of up to 3 evenly spread starts). The tool covers its path over the whole video,
    so per frame it travels a third to two thirds as far as in the 16-frame renders of
    :func:`render_machine_clips`: this is the motion of the shop's clips, which the motion LoRA learns.
    """
    rng = np.random.default_rng(seed)
    clips = []
    for spec in sample_clip_specs(count, seed=seed):
        video = render_clip(spec)
        starts = video_io.clip_start_indices(len(video), NUM_FRAMES, stride=FRAME_STRIDE, max_clips=CLIPS_PER_VIDEO)
        picked = video[video_io.clip_frame_indices(int(rng.choice(starts)), NUM_FRAMES, stride=FRAME_STRIDE)]
        clips.append(WorldClip(_area_downsample(picked), spec.caption, spec.process, "shop", DIRECTION_MOTIONS[spec.direction]))
    return clips


# --------------------------------------------------------------------------- shapes


def _shape_points(shape: str, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    corners = {"square": 4, "triangle": 3}[shape]
    start = -math.pi / 2 + (math.pi / 4 if shape == "square" else 0.0)
    t = start + angle + np.arange(corners) * 2 * math.pi / corners
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def _draw_shape(img: np.ndarray, shape: str, centre: np.ndarray, radius: float, angle: float,
                colour: tuple[int, int, int]) -> None:
    scale = 16  # cv2 fixed-point fraction bits: sub-pixel motion stays smooth
    if shape == "circle":
        cv2.circle(img, (round(centre[0] * scale), round(centre[1] * scale)), round(radius * scale),
                   colour, -1, cv2.LINE_AA, shift=4)
        # A notch, so rotation of a circle is visible.
        tip = centre + 0.8 * radius * np.array([math.cos(angle), math.sin(angle)])
        cv2.line(img, (round(centre[0] * scale), round(centre[1] * scale)),
                 (round(tip[0] * scale), round(tip[1] * scale)), tuple(255 - c for c in colour), 2,
                 cv2.LINE_AA, shift=4)
    else:
        points = np.round(_shape_points(shape, centre, radius, angle) * scale).astype(np.int32)
        cv2.fillPoly(img, [points], colour, cv2.LINE_AA, shift=4)


def _direction_words(wording: str) -> dict[str, str]:
    if wording not in DIRECTION_WORDINGS:
        raise ValueError(f"unknown direction wording {wording!r}; use one of {sorted(DIRECTION_WORDINGS)}")
    return DIRECTION_WORDINGS[wording]


def shape_caption(colour: str, shape: str, motion: str, wording: str = "order") -> str:
    """Caption of a plain-shapes clip; the motion is always named (translations in ``wording``)."""
    if motion in _TRANSLATIONS:
        what = f"moving {_direction_words(wording)[motion]}"
    else:
        what = {"rotate": "rotating", "scale": "growing", "bounce": "bouncing back and forth",
                "static": "standing still"}[motion]
    return f"a {colour} {shape} {what} on a plain grey background"


def render_shape_clip(rng: np.random.Generator, motion: str, size: int = SIZE, *,
                      varied_look: bool = False, wording: str = "order") -> WorldClip:
    """One plain-shape clip with the given motion, everything else drawn from ``rng``.

    ``varied_look`` is for the in-world evaluator: the backdrop gets a random tint and
    brightness and half the clips are softened, because the shapes a model generates come
    on any backdrop (often the shop's blue-grey) and with soft edges. An evaluator that had
    seen shapes only on plain grey read such clips as machine scenes. The pretraining world
    keeps the plain grey backdrop its captions promise.
    """
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    colour_name = list(_SHAPE_COLOURS)[int(rng.integers(len(_SHAPE_COLOURS)))]
    colour = _SHAPE_COLOURS[colour_name]
    background = np.full((size, size, 3), int(rng.integers(90, 160)), np.float32)
    background += rng.normal(0, 2.0, (size, size, 1))
    # A child generator, so the plain look's clips stay what they were for the same seed.
    look = np.random.default_rng(rng.integers(2**32)) if varied_look else None
    if look is not None:
        background += look.uniform(-20, 10) + np.clip(look.normal(0, 7, 3), -15, 15)
    background = np.clip(background, 0, 255).astype(np.uint8)
    radius = float(rng.uniform(0.12, 0.2)) * size
    angle0 = float(rng.uniform(0, 2 * math.pi))
    t = np.linspace(0.0, 1.0, NUM_FRAMES)
    centre0 = rng.uniform(0.4, 0.6, 2) * size
    centres = np.repeat(centre0[None], NUM_FRAMES, 0)
    radii = np.full(NUM_FRAMES, radius)
    angles = np.full(NUM_FRAMES, angle0)
    travel = float(rng.uniform(0.3, 0.45)) * size
    if motion in _TRANSLATIONS:
        direction = np.array(_TRANSLATIONS[motion])
        centres = centre0[None] + (t[:, None] - 0.5) * travel * direction[None]
    elif motion == "rotate":
        angles = angle0 + np.sign(rng.uniform(-1, 1)) * t * float(rng.uniform(0.6, 1.2)) * math.pi
    elif motion == "scale":
        radii = radius * (0.55 + 0.9 * t)
    elif motion == "bounce":
        direction = np.array(_TRANSLATIONS[list(_TRANSLATIONS)[int(rng.integers(8))]])
        there_and_back = 1.0 - np.abs(2.0 * t - 1.0)  # 0 -> 1 -> 0
        centres = centre0[None] + (there_and_back[:, None] - 0.5) * travel * direction[None]
    frames = np.empty((NUM_FRAMES, size, size, 3), np.uint8)
    for i in range(NUM_FRAMES):
        frames[i] = background
        _draw_shape(frames[i], shape, centres[i], radii[i], angles[i], colour)
    if look is not None and look.random() < 0.5:
        sigma = look.uniform(0.5, 1.5)
        frames = np.stack([cv2.GaussianBlur(frame, (0, 0), sigma) for frame in frames])
    return WorldClip(frames, shape_caption(colour_name, shape, motion, wording), "shapes", "neutral", motion)


#: The motions a plain shape makes in the pretraining world (a machine's ``inward`` feed and
#: ``static`` are left out).
SHAPE_MOTIONS = tuple(m for m in MOTIONS if m not in ("inward", "static"))


def render_shape_clips(count: int, seed: int, *, varied_look: bool = False, wording: str = "order",
                       motions: Sequence[str] = SHAPE_MOTIONS) -> list[WorldClip]:
    """``count`` plain-shape clips cycling through ``motions`` (by default every shape motion).

    ``varied_look``: tinted backdrops and soft edges (see :func:`render_shape_clip`);
    ``wording``: how captions name a translation (:data:`DIRECTION_WORDINGS`).
    """
    unknown = [m for m in motions if m not in SHAPE_MOTIONS]
    if unknown or not motions:
        problem = f"unknown shape motion {', '.join(map(repr, unknown))}" if unknown else "no shape motion given"
        raise ValueError(f"{problem}; choose from {', '.join(SHAPE_MOTIONS)}")
    return [render_shape_clip(np.random.default_rng([seed, i]), motions[i % len(motions)], varied_look=varied_look,
                              wording=wording)
            for i in range(count)]


# --------------------------------------------------------------------------- world and prompts


def render_pretraining_world(num_machine_clips: int, num_shape_clips: int, seed: int,
                             wording: str = "order", shape_motions: Sequence[str] = SHAPE_MOTIONS) -> list[WorldClip]:
    """The starter model's pretraining clips: neutral machine scenes then plain shapes.

    ``shape_motions`` narrows what the shapes do, e.g. ``("right", "left")`` for a motion
    adapter that first has to learn which way the caption says a shape goes.
    """
    return (render_machine_clips(num_machine_clips, seed, shop=False)
            + render_shape_clips(num_shape_clips, seed + 1, wording=wording, motions=shape_motions))


def reword_directions(prompt: str, wording: str) -> str:
    """``prompt`` with a translation phrased as captions in ``wording`` phrase it.

    The starter check's prompts are written in the ``order`` wording; a starter trained on
    the other is asked in the words it was trained on.
    """
    target = _direction_words(wording)
    for phrase, motion in longest_first((phrase, motion) for motion, phrase in DIRECTION_WORDINGS["order"].items()):
        if phrase in prompt:
            return prompt.replace(phrase, target[motion])
    return prompt


def stack_clips(clips: Sequence[WorldClip]) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """(N, F, H, W, 3) frames, captions and labels of ``clips``."""
    return (np.stack([c.frames for c in clips]), [c.caption for c in clips], [c.labels for c in clips])
