"""Generation with LoRAs through diffusers' loaders, on the real tiny model: layouts, scales, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from machining_t2v.generation.loras import load_lora, set_lora_scales

from .conftest import render, tiny_generator


def test_same_seed_same_clip_and_scales_switch_loras(generator, loras):
    base = render(generator)
    assert base.shape == (4, 64, 64, 3) and base.dtype == np.uint8
    assert np.array_equal(render(generator), base)
    assert not np.array_equal(render(generator, seed=1), base)

    image = load_lora(generator, loras["image"], "image")
    motion = load_lora(generator, loras["motion"], "motion")
    assert (image.layout, image.targets, motion.targets) == ("diffusers", "spatial", "motion")
    outputs = {}
    for name, scales in {"image": {"image": 1.0}, "motion": {"motion": 1.0},
                         "both": {"image": 1.0, "motion": 1.0}, "half": {"image": 0.5}}.items():
        set_lora_scales(generator, scales)
        outputs[name] = render(generator)
    clips = [base, *outputs.values()]
    assert all(not np.array_equal(a, b) for i, a in enumerate(clips) for b in clips[i + 1 :])
    set_lora_scales(generator, {})  # every LoRA off again: the base clip, bit for bit
    assert np.array_equal(render(generator), base)
    with pytest.raises(ValueError, match="no LoRA loaded as 'nope'"):
        set_lora_scales(generator, {"nope": 1.0})


def test_generation_report_and_cli_modules_do_not_import_kedro():
    import subprocess
    import sys

    code = ("import sys, machining_t2v.generation.generator, machining_t2v.evaluation.report, machining_t2v.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kedro', 'kedro_datasets')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_generation_follows_the_clip_skip(tiny_dir):
    last, before_last = tiny_generator(tiny_dir), tiny_generator(tiny_dir, clip_skip=2)
    assert before_last.describe()["clip_skip"] == 2
    frames = render(last)
    assert np.array_equal(frames, render(tiny_generator(tiny_dir, clip_skip=1)))
    assert not np.array_equal(frames, render(before_last))
