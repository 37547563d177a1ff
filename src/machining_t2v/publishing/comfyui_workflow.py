"""A ComfyUI workflow that renders a clip with the trained LoRAs, in ComfyUI's API format.

The API format is one JSON object ``{node_id: {"class_type", "inputs", "_meta"}}``; an input that
takes another node's output is the link ``[node_id, output_index]``. ComfyUI loads such a file
from its menu (Workflow > Open) or runs it through ``POST /prompt``.

The graph: ``CheckpointLoaderSimple`` -> ``LoraLoader`` (the kohya-format image LoRA) ->
ComfyUI-AnimateDiff-Evolved's Gen2 nodes (``ADE_LoadAnimateDiffModel``, ``ADE_AnimateDiffLoRALoader``
with the AnimateDiff-format MotionLoRA, ``ADE_ApplyAnimateDiffModelSimple``, ``ADE_UseEvolvedSampling``)
-> ``KSampler`` over an ``EmptyLatentImage`` batch of one latent per frame -> ``VAEDecode`` ->
ComfyUI-VideoHelperSuite's ``VHS_VideoCombine`` (a looping GIF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["COMFY_BETA_SCHEDULES", "COMFY_SAMPLERS", "WorkflowSettings", "comfyui_workflow"]

COMFY_BETA_SCHEDULES = {"linear": "sqrt_linear (AnimateDiff)", "scaled_linear": "linear (HotshotXL/default)"}
"""diffusers' ``beta_schedule`` -> AnimateDiff-Evolved's name for it. ComfyUI keeps the LDM names:
its ``linear`` is diffusers' ``scaled_linear`` and its ``sqrt_linear`` is diffusers' ``linear``
(AnimateDiff's betas)."""

COMFY_SAMPLERS = {"ddim": ("ddim", "ddim_uniform"), "euler": ("euler", "normal"), "dpm++": ("dpmpp_2m", "normal")}
"""This project's sampler names -> ComfyUI's ``KSampler`` ``(sampler_name, scheduler)``."""


@dataclass(frozen=True)
class WorkflowSettings:
    """Everything the workflow names: the models a ComfyUI user has, the LoRA files, the prompt and sampler."""

    checkpoint: str  # file name in ComfyUI/models/checkpoints
    motion_module: str  # file name in ComfyUI/models/animatediff_models
    motion_lora_file: str  # file name in ComfyUI/models/animatediff_motion_lora
    motion_lora_scale: float
    image_lora_file: str | None  # file name in ComfyUI/models/loras; None = no image LoRA
    image_lora_scale: float
    prompt: str
    negative_prompt: str = ""
    num_frames: int = 16
    size: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 0
    sampler: str = "ddim"  # a key of COMFY_SAMPLERS
    beta_schedule: str = "linear"  # diffusers' name, a key of COMFY_BETA_SCHEDULES
    frame_rate: float = 8.0
    filename_prefix: str = "machining_t2v"


class _Graph:
    """Nodes numbered in the order they are added; :meth:`add` returns the new node's id."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, title: str, **inputs: Any) -> str:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return node_id


def _link(node_id: str, output: int = 0) -> list[Any]:
    return [node_id, output]


def comfyui_workflow(settings: WorkflowSettings) -> dict[str, dict[str, Any]]:
    """The API-format workflow for ``settings`` (see the module docstring for its graph).

    Raises:
        ValueError: ``settings.sampler`` or ``settings.beta_schedule`` has no ComfyUI counterpart.
    """
    if settings.sampler not in COMFY_SAMPLERS:
        raise ValueError(f"sampler {settings.sampler!r} has no ComfyUI counterpart; choose from {list(COMFY_SAMPLERS)}")
    if settings.beta_schedule not in COMFY_BETA_SCHEDULES:
        raise ValueError(f"beta_schedule {settings.beta_schedule!r} has no AnimateDiff-Evolved counterpart; "
                         f"choose from {list(COMFY_BETA_SCHEDULES)}")
    graph = _Graph()
    checkpoint = graph.add("CheckpointLoaderSimple", "SD1.5 checkpoint", ckpt_name=settings.checkpoint)
    model, clip = _link(checkpoint, 0), _link(checkpoint, 1)
    if settings.image_lora_file is not None:
        # The image LoRA changes the UNet only; strength_clip has nothing to act on.
        lora = graph.add("LoraLoader", "image LoRA", model=model, clip=clip, lora_name=settings.image_lora_file,
                         strength_model=settings.image_lora_scale, strength_clip=settings.image_lora_scale)
        model, clip = _link(lora, 0), _link(lora, 1)
    positive = graph.add("CLIPTextEncode", "prompt", text=settings.prompt, clip=clip)
    negative = graph.add("CLIPTextEncode", "negative prompt", text=settings.negative_prompt, clip=clip)
    motion_lora = graph.add("ADE_AnimateDiffLoRALoader", "MotionLoRA", name=settings.motion_lora_file,
                            strength=settings.motion_lora_scale)
    motion_module = graph.add("ADE_LoadAnimateDiffModel", "AnimateDiff motion module",
                              model_name=settings.motion_module)
    applied = graph.add("ADE_ApplyAnimateDiffModelSimple", "apply motion module + MotionLoRA",
                        motion_model=_link(motion_module), motion_lora=_link(motion_lora))
    animated = graph.add("ADE_UseEvolvedSampling", "AnimateDiff sampling", model=model,
                         beta_schedule=COMFY_BETA_SCHEDULES[settings.beta_schedule], m_models=_link(applied))
    latent = graph.add("EmptyLatentImage", "one latent per frame", width=settings.size, height=settings.size,
                       batch_size=settings.num_frames)
    sampler_name, scheduler = COMFY_SAMPLERS[settings.sampler]
    sampled = graph.add("KSampler", "sampler", model=_link(animated), seed=settings.seed, steps=settings.steps,
                        cfg=settings.guidance_scale, sampler_name=sampler_name, scheduler=scheduler,
                        positive=_link(positive), negative=_link(negative), latent_image=_link(latent), denoise=1.0)
    decoded = graph.add("VAEDecode", "decode frames", samples=_link(sampled), vae=_link(checkpoint, 2))
    graph.add("VHS_VideoCombine", "video", images=_link(decoded), frame_rate=settings.frame_rate, loop_count=0,
              filename_prefix=settings.filename_prefix, format="image/gif", pingpong=False, save_output=True)
    return graph.nodes
