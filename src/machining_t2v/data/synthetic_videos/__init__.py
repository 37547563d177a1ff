"""Deterministic synthetic milling and turning clips for the embedded default.

A fresh machine has no process videos, so this package draws some with OpenCV:

* **milling** (:mod:`.milling`) -- an oblique top view of a block clamped on a machine
  table. An end mill (a disc with 2-4 flutes that rotate frame to frame) travels along X,
  Y or a diagonal over the block and leaves a darker groove that grows behind it.
* **turning** (:mod:`.turning`) -- a side view of a lathe. A bar held in a chuck spins
  (marks on its surface sweep across it like on a real rotating cylinder) while a fixed
  insert on a holder feeds along it (or, for facing, radially into its end); the turned
  part behind the tool has a smaller diameter.

:mod:`.vocabulary` holds the processes, operations, materials and directions the clips
show and the captions that name them; :mod:`.clips` samples the clip specs and renders
them; :mod:`.drawing` holds the drawing helpers both scenes share.

The package only returns arrays and metadata: it imports nothing from Kedro and writes
no files, so the sample-data pipeline, tests and notebooks can all use it. Everything is
a pure function of the :class:`~.clips.ClipSpec` (and of the seed given to
:func:`~.clips.sample_clip_specs`), so the same seed always yields byte-identical clips.
"""
