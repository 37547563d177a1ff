"""Training throughput: image and motion LoRA on the tiny model through the project's training core.

For each LoRA kind, these variants run interleaved (a, b, c, a, b, c, ...) on the same model and
batches of the same size:

* ``core, cached``: ``training.train`` with the cached latents and text embeddings (what
  ``fit_lora`` does);
* ``bare loop, cached``: a plain PyTorch loop doing the same math (same loss function, AdamW with
  the same settings and a cosine schedule, gradient clipping);
* ``core, uncached``: ``training.train`` encoding the batch through the VAE and the text encoder
  at every step;
* on a CPU with several cores, ``core`` and ``bare loop`` once more with one torch thread: the
  tiny model's operations are too small to gain from a second thread, and one thread is far less
  disturbed by other processes on the same cores (OpenMP threads stall when a core is taken).

Figures are per optimizer step of the loop only; the fixed cost of one ``train()`` call
(accelerate set-up, the final checkpoint) is reported on its own. On a CUDA machine the
SD1.5-sized UNet is also measured at 512 px (bf16, SDPA, gradient checkpointing off and on).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmarks.common import Context, load_params, median, row, target
from benchmarks.timing import PeakMemory, Timed, measure_interleaved, torch_threads

TARGET_OVERHEAD = 1.10
RUN_SECONDS = 1.5  # steps per timed run are chosen so that one run takes about this long (3 to 20 steps)

# Dense (no sparsity) BF16 tensor-core peak per GPU, FLOP/s, from NVIDIA's data sheets. First match wins;
# override with BENCH_GPU_PEAK_TFLOPS for a GPU that is not listed.
GPU_BF16_PEAK = (
    (r"H100.*PCIe", 756e12, "H100 PCIe"),
    (r"H100.*NVL", 835e12, "H100 NVL"),
    (r"H200.*NVL", 835e12, "H200 NVL"),
    (r"GH200|H200|H100|H800", 989e12, "H100/H200 SXM"),
    (r"B200", 2250e12, "B200"),
    (r"A100|A800", 312e12, "A100"),
    (r"L40S", 362e12, "L40S"),
    (r"L40\b", 181e12, "L40"),
    (r"\bL4\b", 121e12, "L4"),
    (r"\bA10\b", 125e12, "A10"),
    (r"RTX 4090", 165e12, "RTX 4090 (FP32 accumulate)"),
    (r"RTX 3090", 71e12, "RTX 3090 (FP32 accumulate)"),
)


@dataclass
class Setup:
    kind: str
    model: Any
    base: Any
    cache: Any
    samples: np.ndarray  # uint8 stills (N, S, S, 3) or clips (N, F, S, S, 3)
    captions: list[str]
    loss_config: Any
    config: Any  # TrainingConfig
    frames: int = 1


def _samples(kind: str, count: int, resolution: int, num_frames: int, stride: int) -> tuple[np.ndarray, list[str]]:
    """Stills (middle frames) or clips of the built-in sample videos, rendered at ``resolution``."""
    from machining_t2v.data.synthetic_videos.clips import render_clip, sample_clip_specs

    span = (num_frames - 1) * stride + 1
    specs = sample_clip_specs(num_clips=count, seed=3, width=resolution, height=resolution, fps=12,
                              min_seconds=max(1.0, span / 12), max_seconds=max(1.0, span / 12))
    rendered = [render_clip(spec) for spec in specs]
    if kind == "image":
        samples = np.stack([frames[len(frames) // 2] for frames in rendered])
    else:
        samples = np.stack([frames[: span : stride] for frames in rendered])
    return samples, [f"mtv {spec.caption}" for spec in specs]


def _setup(ctx: Context, kind: str, device: str) -> Setup:
    import torch

    from machining_t2v.diffusion.caches import build_cache
    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.fixtures.tiny_model import tiny_model_source
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
    from machining_t2v.models.loading import build_motion_unet, load_base_model, load_motion_adapter
    from machining_t2v.models.sources import TINY_MODEL
    from machining_t2v.training.finetune import seeded_lora_init, training_config_from_params

    params = load_params("image_ft" if kind == "image" else "motion_ft")
    frames_params = load_params("frames")
    resolution, num_frames = int(frames_params["resolution"]), int(frames_params["num_frames"])
    base = load_base_model(tiny_model_source(TINY_MODEL, ctx.tiny_model_dir()))
    model = base.unet
    if kind == "motion":
        model = build_motion_unet(base.unet, load_motion_adapter(tiny_model_source(TINY_MODEL, ctx.tiny_model_dir(), motion_adapter=True)))
    for module in (base.vae, base.text_encoder, model):
        module.requires_grad_(False).to(device)
    lora = params["lora"]
    with seeded_lora_init(0):
        add_lora(model, rank=int(lora["rank"]), alpha=float(lora["alpha"]),
                 target_modules=IMAGE_LORA_TARGETS if kind == "image" else MOTION_LORA_TARGETS,
                 adapter_name="default" if kind == "image" else "motion")
    batch = int(params["training"]["batch_size"])
    samples, captions = _samples(kind, max(2 * batch, 8), resolution, num_frames, int(frames_params["frame_stride"]))
    with torch.no_grad():
        cache = build_cache(base.tokenizer, base.text_encoder, base.vae, samples, captions)
    overrides = {"max_steps": 2 if ctx.quick else 3, "checkpoint_every": 0, "checkpoints_total_limit": 1, "resume": None,
                 "num_train_epochs": None}
    config = training_config_from_params({**params["training"], **overrides}, num_samples=len(samples))
    return Setup(kind, model, base, cache, samples, captions, LossConfig(**params.get("loss", {})), config,
                 frames=num_frames if kind == "motion" else 1)


def _cached_loss(setup: Setup, device: str):
    from machining_t2v.diffusion.loss import noise_prediction_loss

    cache = setup.cache

    def compute_loss(model, indices, randomness):
        return noise_prediction_loss(model, setup.base.noise_scheduler, cache.latents[indices].to(device),
                                     cache.text_embeddings[indices].to(device), randomness, setup.loss_config,
                                     cache.empty_text_embedding)

    return compute_loss


def _uncached_loss(setup: Setup, device: str):
    """The same loss, but every step encodes its batch through the VAE and the text encoder."""
    import torch

    from machining_t2v.diffusion.caches import encode_frames, encode_text
    from machining_t2v.diffusion.loss import noise_prediction_loss

    base = setup.base

    def compute_loss(model, indices, randomness):
        chosen = setup.samples[indices.numpy()]
        with torch.no_grad():
            if chosen.ndim == 5:
                flat = encode_frames(base.vae, chosen.reshape(-1, *chosen.shape[2:]))
                latents = flat.reshape(chosen.shape[0], chosen.shape[1], *flat.shape[1:]).movedim(1, 2)
            else:
                latents = encode_frames(base.vae, chosen)
            states = encode_text(base.tokenizer, base.text_encoder,
                                 [setup.captions[i] for i in indices.tolist()] + [""]).float()
        return noise_prediction_loss(model, base.noise_scheduler, latents.to(device), states[:-1].to(device),
                                     randomness, setup.loss_config, states[-1:].cpu())

    return compute_loss


def _core(setup: Setup, compute_loss, checkpoint_dir) -> Timed:
    """One ``training.train`` call; the timed part is its loop (its own steps/s), the rest is fixed cost."""
    from machining_t2v.training import train

    start = time.perf_counter()
    result = train(setup.model, compute_loss, len(setup.samples), setup.config, checkpoint_dir, progress=False)
    total = time.perf_counter() - start
    loop = result.global_step / result.steps_per_second
    return Timed(loop, {"total_s": total, "fixed_s": total - loop, "final_loss": result.losses[-1]})


def _bare(setup: Setup, compute_loss, device: str) -> Timed:
    """A plain PyTorch loop with the same math: loss, AdamW settings, cosine schedule, gradient clipping.

    Like the core, it draws the loss's randomness from a ``LossRandomness`` built per step (one
    generator per sample), so both pay the same for it.
    """
    import torch

    from machining_t2v.training import LossRandomness

    config = setup.config
    model = setup.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.adam_weight_decay, eps=config.adam_epsilon)
    warmup, total = config.lr_warmup_steps, max(config.max_steps, 1)

    def lr_lambda(step):
        if step < warmup:
            return step / max(warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    order = torch.Generator().manual_seed(1)
    permutation, position = torch.randperm(len(setup.samples), generator=order), 0
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=config.mixed_precision == "bf16")
    model.train()
    start = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        if position + config.batch_size > len(permutation):
            permutation, position = torch.randperm(len(setup.samples), generator=order), 0
        indices = permutation[position : position + config.batch_size]
        position += config.batch_size
        randomness = LossRandomness(config.seed, step, 0, range(len(indices)))
        with autocast:
            loss = compute_loss(model, indices, randomness)
        loss_value = loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return Timed(time.perf_counter() - start, {"final_loss": loss_value})


def _bench_kind(ctx: Context, kind: str, device: str) -> tuple[list[dict], list[dict], list[str], dict]:
    import torch

    setup = _setup(ctx, kind, device)
    cached, uncached = _cached_loss(setup, device), _uncached_loss(setup, device)
    checkpoint_dir = ctx.scratch(f"train/{kind}_checkpoints")
    fns = {
        "core_cached": lambda: _core(setup, cached, checkpoint_dir),
        "bare_cached": lambda: _bare(setup, cached, device),
        "core_uncached": lambda: _core(setup, uncached, checkpoint_dir),
    }
    threads = torch.get_num_threads()
    if device == "cpu" and threads > 1:
        # The tiny model's ops are small: does a second thread help? And the core-vs-bare comparison once
        # more with one thread, which other processes on the same cores disturb far less.
        def one_thread(fn):
            def run():
                with torch_threads(1):
                    return fn()

            return run

        fns["core_cached_1_thread"] = one_thread(fns["core_cached"])
        fns["bare_cached_1_thread"] = one_thread(fns["bare_cached"])
        fns["core_uncached_1_thread"] = one_thread(fns["core_uncached"])
    # Warm-up round (always: first steps allocate the optimizer state); the memory peak is taken here,
    # and the warm-up's speed sets the steps per timed run.
    with PeakMemory(device) as memory:
        warm = fns["core_cached"]()
    if not ctx.quick:
        per_step = warm.seconds / setup.config.max_steps
        setup.config = replace(setup.config, max_steps=int(min(20, max(3, round(RUN_SECONDS / per_step)))))
    for name in list(fns)[1:]:
        fns[name]()
    timings = measure_interleaved(fns, **{**ctx.timing_options(45.0), "warmup": 0})
    fixed_runs = [run["fixed_s"] for run in timings["core_cached"].results]
    fixed = median(fixed_runs)

    config, steps = setup.config, setup.config.max_steps
    per_step = {name: t.median / steps for name, t in timings.items()}
    # Ratios are taken round by round (the alternatives ran back to back), then the median.
    rounds = list(zip(*(timings[name].runs for name in fns), strict=True))
    names = list(fns)
    overhead = median([r[names.index("core_cached")] / r[names.index("bare_cached")] for r in rounds])
    overhead_1 = (median([r[names.index("core_cached_1_thread")] / r[names.index("bare_cached_1_thread")]
                          for r in rounds]) if "core_cached_1_thread" in names else None)
    speedup = median([r[names.index("core_uncached")] / r[names.index("core_cached")] for r in rounds])
    speedup_1 = (median([r[names.index("core_uncached_1_thread")] / r[names.index("core_cached_1_thread")]
                         for r in rounds]) if "core_uncached_1_thread" in names else None)
    steps_per_s = {name: 1 / seconds for name, seconds in per_step.items()}
    unit = "clips" if kind == "motion" else "images"
    label = f"{kind} LoRA"
    shape = (f"batch {config.batch_size} x {setup.frames} frames" if kind == "motion" else f"batch {config.batch_size}")
    shape += f", {setup.samples.shape[-2]} px"
    rows = [
        row(f"{kind}.core_cached.steps_per_s", f"{label}: steps/s (core, cached)", steps_per_s["core_cached"],
            "steps/s", measurement=timings["core_cached"], note=f"{shape}; {steps} steps per run"),
        row(f"{kind}.core_cached.samples_per_s", f"{label}: {unit}/s (core, cached)",
            steps_per_s["core_cached"] * config.batch_size, f"{unit}/s", runs=len(timings["core_cached"].runs)),
    ]
    if kind == "motion":
        rows.append(row(f"{kind}.core_cached.frames_per_s", f"{label}: frames/s (core, cached)",
                        steps_per_s["core_cached"] * config.batch_size * setup.frames, "frames/s",
                        runs=len(timings["core_cached"].runs)))
    rows += [
        row(f"{kind}.bare_cached.steps_per_s", f"{label}: steps/s (bare PyTorch loop, cached)",
            steps_per_s["bare_cached"], "steps/s", measurement=timings["bare_cached"]),
        row(f"{kind}.core_uncached.steps_per_s", f"{label}: steps/s (core, VAE + text encoder every step)",
            steps_per_s["core_uncached"], "steps/s", measurement=timings["core_uncached"]),
        row(f"{kind}.cache_speedup", f"{label}: speed-up from caching latents + text embeddings",
            speedup, "x", runs=len(rounds), note="uncached / cached time per step, median of per-round ratios"),
        row(f"{kind}.core_overhead", f"{label}: core time per step / bare loop time per step",
            overhead, "x", better="lower", runs=len(rounds), note="median of per-round ratios; target <= 1.10"),
        *([row(f"{kind}.core_cached_1_thread.steps_per_s", f"{label}: steps/s (core, cached, 1 torch thread)",
                1 / per_step["core_cached_1_thread"], "steps/s", measurement=timings["core_cached_1_thread"],
                note=f"vs {threads} threads above"),
           row(f"{kind}.bare_cached_1_thread.steps_per_s", f"{label}: steps/s (bare loop, cached, 1 torch thread)",
               1 / per_step["bare_cached_1_thread"], "steps/s", measurement=timings["bare_cached_1_thread"]),
           row(f"{kind}.core_overhead_1_thread", f"{label}: core / bare loop time per step, 1 torch thread",
               overhead_1, "x", better="lower", runs=len(rounds), note="median of per-round ratios"),
           row(f"{kind}.core_uncached_1_thread.steps_per_s",
               f"{label}: steps/s (core, VAE + text encoder every step, 1 torch thread)",
               1 / per_step["core_uncached_1_thread"], "steps/s", measurement=timings["core_uncached_1_thread"]),
           row(f"{kind}.cache_speedup_1_thread", f"{label}: speed-up from caching, 1 torch thread", speedup_1, "x",
               runs=len(rounds), note="median of per-round ratios")]
          if overhead_1 is not None else []),
        row(f"{kind}.core_fixed_s", f"{label}: fixed cost per train() call (set-up + final checkpoint)",
            fixed, "s", better="lower", runs=len(fixed_runs), note="outside the per-step figures"),
        row(f"{kind}.peak_memory_mb", f"{label}: peak memory while training", memory.peak_mb, "MB",
            better="lower", runs=1, note=f"{memory.kind}; +{memory.increase_mb:.0f} MB over the process before "
                                         "train()"),
    ]
    ratio = overhead
    targets = [target(f"{kind}.core_overhead", f"{label}: training core vs bare PyTorch loop (time per step, "
                                               f"{threads} torch threads)", ratio, TARGET_OVERHEAD, "<=")]
    if overhead_1 is not None:
        targets.append(target(f"{kind}.core_overhead_1_thread", f"{label}: training core vs bare PyTorch loop "
                              "(time per step, 1 torch thread)", overhead_1, TARGET_OVERHEAD, "<=",
                              note="less disturbed by other processes on the same cores"))
    findings = [f"{label} ({shape}): {steps_per_s['core_cached']:.2f} steps/s through the core, "
                f"{steps_per_s['bare_cached']:.2f} in a bare loop (ratio {ratio:.3f}); caching latents and text "
                f"embeddings is {speedup:.2f}x faster than encoding "
                f"every step; each train() call adds {fixed:.2f} s of set-up and final checkpoint."]
    if "core_cached_1_thread" in timings:
        many, one = timings["core_cached"], timings["core_cached_1_thread"]
        findings.append(f"{label} with 1 torch thread: {1 / per_step['core_cached_1_thread']:.2f} steps/s vs "
                        f"{steps_per_s['core_cached']:.2f} with {threads} (core/bare {overhead_1:.3f}, caching "
                        f"{speedup_1:.2f}x faster than encoding every step); slowest/fastest run "
                        f"{one.max / one.min:.1f}x with 1 thread vs {many.max / many.min:.1f}x with {threads} "
                        "(OpenMP threads stall when other processes share the cores).")
    details = {"per_step_s": per_step, "warmup_final_loss": warm.result["final_loss"],
               "config": config.to_dict(), "trainable_parameters":
               sum(p.numel() for p in setup.model.parameters() if p.requires_grad)}
    return rows, targets, findings, details


# --------------------------------------------------------------------------- SD1.5-sized UNet (CUDA only)


def gpu_peak_bf16(name: str) -> tuple[float | None, str]:
    """Dense BF16 peak FLOP/s of the GPU called ``name`` and where the figure comes from."""
    override = os.environ.get("BENCH_GPU_PEAK_TFLOPS")
    if override:
        return float(override) * 1e12, "BENCH_GPU_PEAK_TFLOPS"
    for pattern, peak, label in GPU_BF16_PEAK:
        if re.search(pattern, name):
            return peak, f"{label}: {peak / 1e12:.0f} TFLOPS dense BF16 (NVIDIA data sheet)"
    return None, f"unknown GPU {name!r}: set BENCH_GPU_PEAK_TFLOPS for MFU"


def sd15_unet_benchmark(quick: bool, *, device: str = "cuda", unet_config: dict | None = None,
                        resolution: int = 512, batch: int = 4) -> tuple[list[dict], list[str], dict]:
    """Image-LoRA steps on an SD1.5-shaped UNet (random weights, bf16, SDPA): steps/s, memory, MFU.

    Meant for CUDA (``run`` calls it only when ``torch.cuda.is_available()``). ``device``,
    ``unet_config`` and ``resolution`` exist so the code path can be dry-run on a CPU with a small UNet.
    FLOPs are counted with ``FlopCounterMode`` on one step without gradient checkpointing (model FLOPs:
    the recomputation under checkpointing is not credited), and MFU = FLOPs x steps/s / bf16 peak.
    """
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from torch.utils.flop_counter import FlopCounterMode

    from machining_t2v.diffusion.loss import LossConfig, noise_prediction_loss
    from machining_t2v.fixtures.sd15_random import SD15_UNET_CONFIG
    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, add_lora
    from machining_t2v.training import LossRandomness

    config = {**SD15_UNET_CONFIG, **(unet_config or {})}
    cuda = device == "cuda"
    lora = load_params("image_ft")["lora"]
    with torch.device(device):  # build the weights on the device directly (random init of 860M params)
        unet = UNet2DConditionModel(**config)
    unet.to(dtype=torch.bfloat16).requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())  # PyTorch scaled_dot_product_attention
    add_lora(unet, rank=int(lora["rank"]), alpha=float(lora["alpha"]), target_modules=IMAGE_LORA_TARGETS)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for parameter in trainable:  # LoRA weights train in fp32 while the frozen base runs in bf16
        parameter.data = parameter.data.float()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    latents = torch.randn(batch, config["in_channels"], resolution // 8, resolution // 8, device=device)
    text = torch.randn(batch, 77, config["cross_attention_dim"], device=device)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    steps = itertools.count(1)
    unet.train()

    def synchronize():
        if cuda:
            torch.cuda.synchronize()

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            # A LossRandomness per step, as in the training core (one CPU generator per sample).
            randomness = LossRandomness(0, next(steps), 0, range(batch))
            loss = noise_prediction_loss(unet, scheduler, latents, text, randomness, LossConfig())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # allocates the optimizer state, so the counted step is a steady one
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak, peak_source = gpu_peak_bf16(name) if cuda else (None, "no GPU")
    warmup, timed = (1, 3) if quick else (3, 10)
    rows, findings = [], []
    details = {"device": name, "flops_per_step": flops, "peak_flops": peak, "peak_source": peak_source,
               "batch": batch, "resolution": resolution, "lora_rank": int(lora["rank"]),
               "attention": "AttnProcessor2_0 (torch SDPA)", "dtype": "bf16 base, fp32 LoRA, autocast bf16"}
    for checkpointing in (False, True):
        if checkpointing:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        for _ in range(warmup):
            step()
        runs = []
        with PeakMemory(device) as memory:
            for _ in range(timed):
                synchronize()
                start = time.perf_counter()
                step()
                synchronize()
                runs.append(time.perf_counter() - start)
        seconds = median(runs)
        tag = "gc_on" if checkpointing else "gc_off"
        label = (f"SD1.5 UNet image LoRA, {resolution} px, batch {batch}, bf16, SDPA, gradient checkpointing "
                 f"{'on' if checkpointing else 'off'}")
        mfu = flops / seconds / peak if peak else None
        rows += [row(f"sd15.{tag}.steps_per_s", f"{label}: steps/s", 1 / seconds, "steps/s", runs=len(runs)),
                 row(f"sd15.{tag}.samples_per_s", f"{label}: images/s", batch / seconds, "images/s", runs=len(runs)),
                 row(f"sd15.{tag}.peak_memory_mb", f"{label}: peak memory", memory.peak_mb, "MB", better="lower",
                     runs=len(runs), note=memory.kind)]
        if mfu is not None:
            rows.append(row(f"sd15.{tag}.mfu", f"{label}: model FLOP utilisation", mfu, "fraction",
                            runs=len(runs), note=f"{flops / 1e12:.2f} TFLOP per step (recomputation not "
                                                 f"credited); {peak_source}"))
        findings.append(f"{label}: {1 / seconds:.2f} steps/s, {memory.peak_mb / 1024:.1f} GiB peak"
                        + (f", MFU {mfu:.1%}" if mfu is not None else ""))
    return rows, findings, details


def run(ctx: Context) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, targets, findings, details = [], [], [], {"device": device}
    for kind in ("image", "motion"):
        ctx.log(f"  {kind} LoRA on the tiny model ({device})")
        kind_rows, kind_targets, kind_findings, details[kind] = _bench_kind(ctx, kind, device)
        rows += kind_rows
        targets += kind_targets
        findings += kind_findings
    if device == "cuda":
        ctx.log("  SD1.5-sized UNet at 512 px (CUDA)")
        sd_rows, sd_findings, details["sd15"] = sd15_unet_benchmark(ctx.quick)
        torch.cuda.empty_cache()
        rows += sd_rows
        findings += sd_findings
    else:
        findings.append("SD1.5-sized UNet at 512 px: skipped, no CUDA device (that part runs only on a GPU).")
    return {"title": "Training (tiny model; SD1.5 UNet on CUDA)", "rows": rows, "targets": targets,
            "findings": findings, "details": details,
            "setup": {"note": "per-step figures time the optimizer-step loop only; the variants run interleaved "
                              "on the same model; peak memory is taken in the warm-up run"}}

