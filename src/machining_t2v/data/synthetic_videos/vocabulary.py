"""What the synthetic clips show, in words: processes, operations, materials, directions, captions.

The one definition of the sample videos' vocabulary: the clip sampler, both scenes, the
in-world prompts and the starter world read it from here.
"""

from __future__ import annotations

import math

__all__ = [
    "DIRECTION_WORDS",
    "MACHINES",
    "MATERIAL_COLOURS",
    "MILLING_DIRECTION_VECTORS",
    "MILLING_JOBS",
    "PROCESSES",
    "TURNING_DIRECTIONS",
    "TURNING_DIRECTION_VECTORS",
    "TURNING_JOBS",
    "make_caption",
]

#: Workpiece materials and the RGB colour each is drawn in.
MATERIAL_COLOURS: dict[str, tuple[int, int, int]] = {
    "aluminium": (196, 200, 207),
    "steel": (126, 132, 142),
    "brass": (204, 166, 74),
    "copper": (188, 110, 72),
    "plastic": (44, 110, 196),
}

PROCESSES: tuple[str, str] = ("milling", "turning")

#: The machine each process runs on, as the captions name it.
MACHINES: dict[str, str] = {"milling": "milling machine", "turning": "lathe"}

#: Unit vector (image x right, image y down) of the tool travel per milling direction.
MILLING_DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "x": (1.0, 0.0),
    "-x": (-1.0, 0.0),
    "y": (0.0, 1.0),
    "-y": (0.0, -1.0),
    "diagonal": (math.sqrt(0.5), math.sqrt(0.5)),
    "-diagonal": (-math.sqrt(0.5), -math.sqrt(0.5)),
}

#: Turning feed directions. The chuck is always on the left of the picture, so
#: "left" feeds towards the chuck; "inward" is the radial feed used for facing.
TURNING_DIRECTIONS: tuple[str, ...] = ("left", "right", "inward")

#: Unit vector (image x right, image y down) of the insert's feed per turning direction: the
#: facing insert starts below the bar and feeds up towards its axis.
TURNING_DIRECTION_VECTORS: dict[str, tuple[float, float]] = {"left": (-1.0, 0.0), "right": (1.0, 0.0),
                                                             "inward": (0.0, -1.0)}

#: How a caption says each milling and turning direction.
DIRECTION_WORDS: dict[str, str] = {
    "x": "from left to right",
    "-x": "from right to left",
    "y": "from top to bottom",
    "-y": "from bottom to top",
    "diagonal": "diagonally from top left to bottom right",
    "-diagonal": "diagonally from bottom right to top left",
    "left": "towards the chuck",
    "right": "away from the chuck",
    "inward": "inwards towards the centre of the bar",
}

# (operation, direction) pairs; cycled per process so every job shows up.
MILLING_JOBS: tuple[tuple[str, str], ...] = (
    ("slot milling along X", "x"),
    ("slot milling along X", "-x"),
    ("slot milling along Y", "y"),
    ("slot milling along Y", "-y"),
    ("slot milling diagonally", "diagonal"),
    ("slot milling diagonally", "-diagonal"),
    ("face milling along X", "x"),
    ("face milling along Y", "-y"),
)
TURNING_JOBS: tuple[tuple[str, str], ...] = (
    ("turn the bar", "left"),
    ("turn the bar", "right"),
    ("finish-turn the bar", "left"),
    ("face the bar", "inward"),
)


def make_caption(process: str, operation: str, material: str, direction: str) -> str:
    """Natural-language caption for a clip, e.g. for a ``.txt`` sidecar.

    >>> make_caption("milling", "slot milling along X", "aluminium", "x")
    'slot milling along X on a milling machine, aluminium workpiece, spinning end mill travelling from left to right'
    """
    words = DIRECTION_WORDS[direction]
    if process == "milling":
        return (
            f"{operation} on a milling machine, {material} workpiece, "
            f"spinning end mill travelling {words}"
        )
    if process == "turning":
        return (
            f"{operation} on a lathe, {material} bar spinning in the chuck, "
            f"fixed turning tool feeding {words}"
        )
    raise ValueError(f"unknown process {process!r}")
