"""Generation: seconds per clip of AnimateDiffPipeline over the tiny model, and what applying LoRAs costs.

Variants (interleaved, same prompt and seed, 10 DDIM steps, the validation guidance scale):
  * no LoRA: a motion UNet without any adapter;
  * LoRA unfused: an image LoRA on the spatial attention and a motion LoRA on the temporal attention
    (peft layers, both active), as after training or ``load_lora_weights``;
  * LoRA fused: the same after ``pipe.fuse_lora()`` (weights merged; undone after each run).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.common import Context, load_params, row
from benchmarks.timing import Timed, measure_interleaved, torch_threads

PROMPT = "mtv slot milling along X on a milling machine, aluminium workpiece"


def _pipeline(ctx: Context, with_lora: bool):
    import torch

    from machining_t2v.diffusion.sampling import video_pipeline
    from machining_t2v.fixtures.tiny_model import tiny_model_source
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
    from machining_t2v.models.sources import TINY_MODEL

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_base_model(tiny_model_source(TINY_MODEL, ctx.tiny_model_dir()))
    adapter = load_motion_adapter(tiny_model_source(TINY_MODEL, ctx.tiny_model_dir(), motion_adapter=True))
    unet = build_motion_unet(base.unet, adapter)
    if with_lora:
        rank = int(load_params("image_ft")["lora"]["rank"])
        add_lora(unet, rank=rank, alpha=rank, target_modules=IMAGE_LORA_TARGETS, adapter_name="image")
        add_lora(unet, rank=rank, alpha=rank, target_modules=MOTION_LORA_TARGETS, adapter_name="motion")
        unet.set_adapters(["image", "motion"])
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():  # a trained LoRA is not zero: give the up matrices values too
            for name, parameter in unet.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator))
    unet.requires_grad_(False)
    pipe = video_pipeline(base, unet, adapter)
    pipe.to(device)
    return pipe


def run(ctx: Context) -> dict[str, Any]:
    from machining_t2v.diffusion.sampling import sample_videos

    steps = 2 if ctx.quick else 10
    guidance = float(load_params("motion_ft")["validation"]["guidance_scale"])
    resolution = int(load_params("frames")["resolution"])
    plain, lora = _pipeline(ctx, with_lora=False), _pipeline(ctx, with_lora=True)

    def generate(pipe, num_frames: int) -> np.ndarray:
        return sample_videos(pipe, [PROMPT], seed=0, num_inference_steps=steps, guidance_scale=guidance,
                             num_frames=num_frames, resolution=resolution)[0]

    fuse_seconds: list[float] = []

    def fused(num_frames: int) -> Timed:
        start = time.perf_counter()
        lora.fuse_lora(components=["unet"])
        fuse_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        video = generate(lora, num_frames)
        seconds = time.perf_counter() - start
        lora.unfuse_lora(components=["unet"])
        return Timed(seconds, video)

    import torch

    threads = torch.get_num_threads()
    # (suffix, thread count): the 8-frame LoRA comparison also runs with one torch thread on a CPU, which
    # other processes sharing the cores disturb far less than the default thread count.
    settings = [("", None)]
    if not torch.cuda.is_available() and threads > 1:
        settings.append(("_1_thread", 1))

    def with_threads(fn, count):
        if count is None:
            return fn

        def run():
            with torch_threads(count):
                return fn()

        return run

    fns = {}
    for suffix, count in settings:
        fns[f"plain_16{suffix}"] = with_threads(lambda: generate(plain, 16), count)
        fns[f"plain_8{suffix}"] = with_threads(lambda: generate(plain, 8), count)
        fns[f"lora_unfused_8{suffix}"] = with_threads(lambda: generate(lora, 8), count)
        fns[f"lora_fused_8{suffix}"] = with_threads(lambda: fused(8), count)
    timings = measure_interleaved(fns, **ctx.timing_options(90.0, slow=True))
    fuse_seconds = fuse_seconds[ctx.warmup * len(settings):]  # drop the warm-up's

    def per_round(name: str, reference: str) -> float:
        return float(np.median([a / b for a, b in zip(timings[name].runs, timings[reference].runs, strict=True)]))

    rows = []
    for suffix, count in settings:
        threads_note = f", {count} torch thread" if count else ""
        for frames in (8, 16):
            t = timings[f"plain_{frames}{suffix}"]
            rows.append(row(f"tiny.{frames}_frames{suffix}.s_per_clip", f"tiny AnimateDiff, {frames} frames, "
                            f"{resolution} px, {steps} steps: s per clip (no LoRA{threads_note})", t.median, "s",
                            better="lower", measurement=t, note=f"guidance {guidance}: two UNet passes per step"))
        for name, label in (("lora_unfused_8", "image + motion LoRA unfused"), ("lora_fused_8", "LoRAs fused")):
            t = timings[f"{name}{suffix}"]
            rows.append(row(f"tiny.8_frames.{name}{suffix}.s_per_clip",
                            f"tiny AnimateDiff, 8 frames: s per clip ({label}{threads_note})", t.median, "s",
                            better="lower", measurement=t))
            rows.append(row(f"tiny.8_frames.{name}{suffix}.vs_no_lora",
                            f"tiny AnimateDiff, 8 frames: {label} / no LoRA{threads_note}",
                            per_round(f"{name}{suffix}", f"plain_8{suffix}"), "x", better="lower",
                            runs=len(t.runs), note="median of per-round ratios"))
    rows.append(row("tiny.fuse_lora_s", "pipe.fuse_lora() itself (one-off)", float(np.median(fuse_seconds)), "s",
                    better="lower", runs=len(fuse_seconds)))
    difference = float(np.abs(timings["lora_fused_8"].result.astype(np.int16)
                              - timings["lora_unfused_8"].result.astype(np.int16)).max())
    findings = []
    for suffix, count in settings:
        base8 = timings[f"plain_8{suffix}"].median
        findings.append(
            f"{count or threads} torch thread(s): a tiny 8-frame clip takes {base8:.2f} s, 16 frames "
            f"{timings[f'plain_16{suffix}'].median:.2f} s ({per_round(f'plain_16{suffix}', f'plain_8{suffix}'):.2f}x "
            f"for 2x the frames); unfused LoRAs cost {per_round(f'lora_unfused_8{suffix}', f'plain_8{suffix}') - 1:+.0%} per clip, "
              f"fused {per_round(f'lora_fused_8{suffix}', f'plain_8{suffix}') - 1:+.0%}.")
    findings.append(f"Fused and unfused LoRA clips differ by at most {difference:.0f}/255 per pixel; "
                    f"pipe.fuse_lora() takes {float(np.median(fuse_seconds)):.2f} s once.")
    return {"title": "Generation (tiny AnimateDiff)", "rows": rows, "targets": [], "findings": findings,
            "details": {"fused_vs_unfused_max_pixel_difference": difference, "guidance_scale": guidance},
            "setup": {"prompt": PROMPT, "num_inference_steps": steps, "resolution": resolution}}
