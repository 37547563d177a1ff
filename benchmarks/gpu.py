"""GPU training benchmark at real size: image and motion LoRA steps on SD1.5 + AnimateDiff v1-5-3.

    make bench-gpu                                    # python -m benchmarks.gpu: one CUDA GPU, a few minutes
    python -m benchmarks.gpu --device cpu --quick     # the same logic on the tiny model at tiny sizes (seconds)
    python -m benchmarks.gpu --peak-tflops 989        # MFU against this dense bf16 peak instead of the detected one

No weights can be downloaded, so the models are random-weight, full-size SD1.5 and AnimateDiff
v1-5-3 stacks built in memory on the GPU (``machining_t2v.fixtures.sd15_random``); speed and
memory do not depend on the weights' values. Cases (full mode):

* image LoRA (spatial attention, 128 projections): 512 px, batch 4;
* motion LoRA (temporal attention, 160 projections): 16 frames at 256 px and at 512 px, batch 1,
  gradient checkpointing on.

Frozen weights are bf16, the LoRA weights fp32, forward under bf16 autocast (``mixed_precision:
bf16``). Each step goes through the product's training loop (``training.train``: accelerate,
AdamW, gradient clipping) with the product's loss (``diffusion.noise_prediction_loss``) on a cache
of random latents and text embeddings, as ``finetune.fit_lora`` feeds it; the LoRA sits where
``lora.add_lora`` with ``IMAGE_LORA_TARGETS``/``MOTION_LORA_TARGETS`` puts it, on the motion
UNet from ``models.build_motion_unet``. Per case: steps/s over the timed steps (warm-up steps
excluded), peak memory (``torch.cuda.max_memory_allocated``, warm-up included) and model FLOPs
utilisation: FLOPs of one step (forward + backward) counted by ``FlopCounterMode`` on a meta-device
replica of the same model and batch (nothing allocated; gradient checkpointing off, so the
recomputation is not credited), times steps/s, over the GPU's dense bf16 peak.

Writes data/08_reporting/benchmarks_gpu.json (and .md) and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/gpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, prepare_process  # noqa: E402

DEFAULT_OUTPUT = PROJECT_ROOT / "data" / "08_reporting"
REPORT_NAME = "benchmarks_gpu"
SEED = 0

# Published figures to compare with (README, performance section).
ANCHORS = {
    "MotionDirector": "about 0.5 it/s and 13.5 GB on one RTX 3090 at 384 px, 16 frames, batch 1 "
                      "(AnimateDiff-MotionDirector README)",
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # image | motion
    resolution: int  # px
    frames: int  # 1 for stills
    batch: int
    gradient_checkpointing: bool


FULL_CASES = (
    Case("image_lora_512px_batch4", "image", 512, 1, 4, False),
    Case("motion_lora_256px_16f_batch1", "motion", 256, 16, 1, True),
    Case("motion_lora_512px_16f_batch1", "motion", 512, 16, 1, True),
)
# Same structure on the tiny model (64 px native): seconds on a CPU.
QUICK_CASES = (
    Case("image_lora_64px_batch2", "image", 64, 1, 2, False),
    Case("motion_lora_32px_4f_batch1", "motion", 32, 4, 1, True),
    Case("motion_lora_64px_4f_batch1", "motion", 64, 4, 1, True),
)

CASE_FIELDS = ("steps_per_s", "seconds_per_step", "samples_per_s", "peak_memory_mb", "estimated_peak_memory_mb",
               "flops_per_step", "achieved_tflops", "mfu")


# --------------------------------------------------------------------------- models


def _lora_rank(kind: str) -> int:
    """The LoRA rank the project trains with: conf/sd15 (the real-model recipe) if it sets one, else conf/base."""
    import yaml

    name = "image_ft" if kind == "image" else "motion_ft"
    rank = None
    for env in ("base", "sd15"):
        path = PROJECT_ROOT / "conf" / env / f"parameters_{name}.yml"
        if path.is_file():
            section = (yaml.safe_load(path.read_text()) or {}).get(name) or {}
            rank = (section.get("lora") or {}).get("rank", rank)
    return int(rank or 8)


def build_model(kind: str, model: str, device: str, dtype, rank: int):
    """The UNet (image) or motion UNet (motion) with a LoRA added the product's way, on ``device``.

    ``model`` is ``sd15`` (full-size random weights) or ``tiny`` (the built-in tiny stack's shapes).
    """
    import torch

    from machining_t2v.lora.injection import IMAGE_LORA_TARGETS, MOTION_LORA_TARGETS, add_lora
    from machining_t2v.models.loading import build_motion_unet

    parts = ("unet",) if kind == "image" else ("unet", "motion_adapter")
    if model == "sd15":
        from machining_t2v.fixtures.sd15_random import build_sd15_random_components

        components = build_sd15_random_components(seed=SEED, device=device, dtype=dtype, parts=parts)
    elif model == "tiny":
        from machining_t2v.fixtures.tiny_model import _tiny_components

        with torch.device(device):
            components = {k: v.to(dtype=dtype).requires_grad_(False) for k, v in _tiny_components(SEED).items()
                          if k in parts}
    else:
        raise ValueError(f"model must be sd15 or tiny, got {model!r}")
    unet = components["unet"]
    if kind == "motion":
        with torch.device(device):  # from_unet2d builds a fresh model: build it on the device directly
            unet = build_motion_unet(unet, components["motion_adapter"])
        del components
    unet.requires_grad_(False)
    add_lora(unet, rank=rank, alpha=rank, target_modules=IMAGE_LORA_TARGETS if kind == "image" else MOTION_LORA_TARGETS,
             adapter_name="default" if kind == "image" else "motion")
    for parameter in unet.parameters():
        if parameter.requires_grad:  # LoRA weights train in fp32 while the frozen base runs in bf16
            parameter.data = parameter.data.float()
    return unet


def noise_scheduler(kind: str):
    """SD1.5's training schedule for stills; AnimateDiff's linear betas for clips (what its sampler uses)."""
    from machining_t2v.fixtures.tiny_model import sd15_noise_scheduler

    return sd15_noise_scheduler("scaled_linear" if kind == "image" else "linear")


def random_cache(unet, case: Case, count: int):
    """A training cache of random latents and text embeddings shaped like the case's samples."""
    import torch

    from machining_t2v.diffusion.caches import TrainingCache

    generator = torch.Generator().manual_seed(SEED)
    side = case.resolution // 8  # the VAE's factor: SD1.5 and the tiny model both downsample 8x
    channels = unet.config.in_channels
    shape = (count, channels, side, side) if case.kind == "image" else (count, channels, case.frames, side, side)
    width = unet.config.cross_attention_dim
    return TrainingCache(latents=torch.randn(*shape, generator=generator),
                         text_embeddings=torch.randn(count, 77, width, generator=generator),
                         empty_text_embedding=torch.randn(1, 77, width, generator=generator))


def _loss_fn(scheduler, cache, device: str):
    """The loss ``finetune.fit_lora`` trains with: noise prediction on cached latents."""
    from machining_t2v.diffusion.loss import LossConfig, noise_prediction_loss

    config = LossConfig()

    def compute_loss(model, indices, randomness):
        return noise_prediction_loss(model, scheduler, cache.latents[indices].to(device),
                                     cache.text_embeddings[indices].to(device), randomness, config,
                                     cache.empty_text_embedding)

    return compute_loss


def count_step_flops(case: Case, model: str, rank: int) -> int:
    """FLOPs of one training step (forward + backward, no recomputation), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from machining_t2v.training import LossRandomness

    unet = build_model(case.kind, model, "meta", torch.float32, rank)
    cache = random_cache(unet, case, case.batch)
    compute_loss = _loss_fn(noise_scheduler(case.kind), cache, "meta")
    unet.train()
    with FlopCounterMode(display=False) as counter:
        loss = compute_loss(unet, torch.arange(case.batch), LossRandomness(SEED, 1, 0, range(case.batch)))
        loss.backward()
    return int(counter.get_total_flops())


def _enable_gradient_checkpointing(unet) -> None:
    from machining_t2v.training.finetune import enable_gradient_checkpointing

    # The product's switch: diffusers' blocks plus the motion modules, which diffusers' own skips.
    enable_gradient_checkpointing(unet)


# --------------------------------------------------------------------------- measuring


def _peak_memory_mb(device: str) -> tuple[float, str]:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak / 2**20 if sys.platform == "darwin" else peak / 2**10), "process peak RSS (whole run so far)"


def run_case(case: Case, *, model: str, device: str, dtype, warmup: int, timed: int, rank: int,
             peak_flops: float | None, work_dir: Path) -> dict[str, Any]:
    """Build the case's model, train ``warmup + timed`` steps through ``training.train``, measure."""
    import torch

    from machining_t2v.training import TrainingConfig, train
    from machining_t2v.training.memory import estimate_training_memory

    result: dict[str, Any] = {**asdict(case), "model": model, "lora_rank": rank, "warmup_steps": warmup,
                              "timed_steps": timed}
    started = time.perf_counter()
    flops = count_step_flops(case, model, rank)
    unet = build_model(case.kind, model, device, dtype, rank)
    if case.gradient_checkpointing:
        _enable_gradient_checkpointing(unet)
    result["build_s"] = round(time.perf_counter() - started, 2)
    # What the training run would have logged before its first step, to compare with the measured peak.
    estimate = estimate_training_memory(unet, [], batch_size=case.batch, latent_size=case.resolution // 8,
                                        num_frames=case.frames if case.kind == "motion" else None, dtype=dtype,
                                        checkpointing=case.gradient_checkpointing)
    result["estimated_peak_memory_mb"] = estimate.total / 2**20
    result["trainable_parameters"] = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    cache = random_cache(unet, case, max(2 * case.batch, 2))
    config = TrainingConfig(max_steps=warmup + timed, batch_size=case.batch, learning_rate=1e-4,
                            lr_scheduler="constant", mixed_precision="bf16" if dtype == torch.bfloat16 else "no",
                            checkpoint_every=0, checkpoints_total_limit=1, log_every=1, seed=SEED)
    stamps: list[float] = []

    def on_log(step: int, metrics: dict[str, float]) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    training = train(unet, _loss_fn(noise_scheduler(case.kind), cache, device), len(cache.latents), config,
                     work_dir / case.name, on_log=on_log, progress=False, description=case.name)
    if len(stamps) != warmup + timed:
        raise RuntimeError(f"expected {warmup + timed} logged steps, got {len(stamps)}")
    seconds = (stamps[-1] - stamps[warmup - 1]) / timed
    peak_mb, memory_kind = _peak_memory_mb(device)
    achieved = flops / seconds
    result.update({
        "steps_per_s": 1 / seconds,
        "seconds_per_step": seconds,
        "samples_per_s": case.batch / seconds,
        "peak_memory_mb": peak_mb,
        "peak_memory_kind": memory_kind,
        "flops_per_step": flops,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / peak_flops if peak_flops else None,
        "final_loss": training.losses[-1],
        "seconds": round(time.perf_counter() - started, 2),
    })
    del unet, training
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def peak_bf16_flops(device: str, override_tflops: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak FLOP/s: ``--peak-tflops``, else detected from the GPU's name (None on a CPU)."""
    if override_tflops:
        return override_tflops * 1e12, f"--peak-tflops {override_tflops:g}"
    if device != "cuda":
        return None, "no GPU: pass --peak-tflops for an MFU figure"
    import torch

    from benchmarks.train import gpu_peak_bf16

    return gpu_peak_bf16(torch.cuda.get_device_name(0))


def run_benchmark(*, device: str, quick: bool, output_dir: Path, peak_tflops: float | None = None,
                  only: list[str] | None = None, log=print) -> dict[str, Any]:
    """Run the cases and write ``benchmarks_gpu.json``/``.md`` into ``output_dir``; returns the report."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA device found. `make bench-gpu` needs one NVIDIA GPU "
                         "(H100/H200 class for the full-size figures); run "
                         "`python -m benchmarks.gpu --device cpu --quick` to check the logic on a CPU.")
    prepare_process()
    from benchmarks.run import _quiet_libraries
    from benchmarks.timing import environment

    _quiet_libraries()
    model = "tiny" if quick else "sd15"
    if device == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise SystemExit(f"benchmarks.gpu: {torch.cuda.get_device_name(0)} has no native bf16; the benchmark "
                             "measures the bf16 recipe (Ampere or newer).")
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    cases = QUICK_CASES if quick else FULL_CASES
    if only:
        cases = tuple(c for c in cases if c.kind in only or c.name in only)
        if not cases:
            raise SystemExit(f"benchmarks.gpu: --only {','.join(only)} names no case; choose kinds (image, motion) "
                             f"or names ({', '.join(c.name for c in (QUICK_CASES if quick else FULL_CASES))})")
    warmup, timed = (1, 2) if quick else (3, 10)
    peak, peak_source = peak_bf16_flops(device, peak_tflops)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "meta": {
            "mode": "quick" if quick else "full",
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "model": ("random-weight full-size SD1.5 UNet + AnimateDiff v1-5-3 motion adapter" if model == "sd15"
                      else "the built-in tiny model's shapes (random weights)"),
            "dtype": "bf16 frozen weights, fp32 LoRA, bf16 autocast" if dtype == torch.bfloat16 else "fp32",
            "peak_flops": peak,
            "peak_flops_source": peak_source,
            "flops_counting": "FlopCounterMode, one step forward + backward on a meta-device replica; gradient "
                              "checkpointing's recomputation not credited",
            "timing": f"{warmup} warm-up step(s) excluded, then {timed} timed steps through training.train",
            "gradient_checkpointing": "diffusers' enable_gradient_checkpointing (motion modules not checkpointed)",
            "environment": environment(),
            "anchors": ANCHORS,
        },
        "cases": [],
    }
    with tempfile.TemporaryDirectory(prefix="machining_t2v_bench_gpu_") as work:
        for case in cases:
            log(f"[{case.name}] {case.kind} LoRA, {case.resolution} px, {case.frames} frame(s), batch {case.batch}, "
                f"gradient checkpointing {'on' if case.gradient_checkpointing else 'off'} ({model}, {device})")
            try:
                result = run_case(case, model=model, device=device, dtype=dtype, warmup=warmup, timed=timed,
                                  rank=_lora_rank(case.kind), peak_flops=peak, work_dir=Path(work))
            except Exception as error:  # e.g. out of memory: report it, keep the other cases
                result = {**asdict(case), "model": model, "error": f"{type(error).__name__}: {error}",
                          "traceback": traceback.format_exc()}
                log(f"[{case.name}] FAILED: {result['error']}")
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
            else:
                log(f"[{case.name}] {_summary(result)}")
            report["cases"].append(result)
    report["meta"]["duration_s"] = round(time.perf_counter() - started, 2)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (output_dir / f"{REPORT_NAME}.md").write_text(to_markdown(report))
    return report


# --------------------------------------------------------------------------- formatting


def _summary(result: dict[str, Any]) -> str:
    mfu = result.get("mfu")
    return (f"{result['steps_per_s']:.2f} steps/s, {result['peak_memory_mb'] / 1024:.1f} GiB peak, "
            f"{result['flops_per_step'] / 1e12:.2f} TFLOP/step, {result['achieved_tflops']:.1f} TFLOP/s"
            + (f", MFU {mfu:.1%}" if mfu is not None else ""))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def table_lines(report: dict[str, Any]) -> list[str]:
    header = ("case", "steps/s", "samples/s", "peak GiB", "expected GiB", "TFLOP/step", "TFLOP/s", "MFU")
    rows = []
    for r in report["cases"]:
        if r.get("error"):
            rows.append((r["name"], "FAILED", r["error"][:60], "", "", "", "", ""))
            continue
        rows.append((r["name"], _fmt(r["steps_per_s"]), _fmt(r["samples_per_s"]), _fmt(r["peak_memory_mb"] / 1024),
                     _fmt(r["estimated_peak_memory_mb"] / 1024), _fmt(r["flops_per_step"] / 1e12), _fmt(r["achieved_tflops"]),
                     _pct(r["mfu"])))
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*header), "  ".join("-" * w for w in widths), *(fmt.format(*r) for r in rows)]


def to_markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    out = ["# GPU training benchmark", "",
           f"Measured {meta['started']} in {meta['mode']} mode in {meta.get('duration_s', 0):.0f} s on {meta['device']}; "
           f"{meta['model']}; {meta['dtype']}. {meta['timing']}. FLOPs: {meta['flops_counting']}. "
           f"MFU against {meta['peak_flops_source']}.", ""]
    if meta["mode"] == "quick":
        out += ["**Quick mode: tiny model and sizes; these figures are not meaningful.**", ""]
    out += ["| case | steps/s | samples/s | peak memory (GiB) | expected before the run (GiB) | TFLOP per step | "
            "TFLOP/s | MFU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["cases"]:
        if r.get("error"):
            out.append(f"| {r['name']} | failed: `{r['error'][:120]}` | | | | | | |")
            continue
        out.append(f"| {r['name']} | {_fmt(r['steps_per_s'])} | {_fmt(r['samples_per_s'])} | "
                   f"{_fmt(r['peak_memory_mb'] / 1024)} | {_fmt(r['estimated_peak_memory_mb'] / 1024)} | "
                   f"{_fmt(r['flops_per_step'] / 1e12)} | "
                   f"{_fmt(r['achieved_tflops'])} | {_pct(r['mfu'])} |")
    out += ["", "Published figures to compare with:", *(f"- {k}: {v}" for k, v in meta["anchors"].items()), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default; fails clearly without a GPU) or cpu")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, tiny sizes, 1 warm-up + 2 timed steps: checks the logic, not the speed")
    parser.add_argument("--peak-tflops", type=float,
                        help="dense bf16 peak of the device in TFLOP/s for MFU (default: detected from the GPU name)")
    parser.add_argument("--only", help="comma-separated case kinds (image, motion) or case names")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT,
                        help="where benchmarks_gpu.json and .md go (default: data/08_reporting)")
    args = parser.parse_args(argv)
    if args.device == "cpu":  # before torch is imported: the training loop then stays on the CPU too
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    only = [part.strip() for part in args.only.split(",")] if args.only else None
    report = run_benchmark(device=args.device, quick=args.quick, output_dir=args.output_dir,
                           peak_tflops=args.peak_tflops, only=only)
    print()
    print("\n".join(table_lines(report)))
    print(f"\nwrote {args.output_dir / (REPORT_NAME + '.json')} and .md ({report['meta']['duration_s']:.0f} s)")
    return 1 if any(r.get("error") for r in report["cases"]) else 0


if __name__ == "__main__":
    sys.exit(main())
