"""The files a LoRA folder (and the textual-inversion embedding folder) holds, by name.

No torch import: the Kedro datasets that write and clean LoRA folders, the model cards and the web
page's folder discovery use these names when pipelines are registered or a page is served.
"""

from __future__ import annotations

__all__ = ["ANIMATEDIFF_MOTION_LORA_FILENAME", "DIFFUSERS_LORA_FILENAME", "EMBEDDING_FILENAME", "EMBEDDING_INFO_FILENAME",
           "KOHYA_IMAGE_LORA_FILENAME", "LORA_FILES", "LORA_INFO_FILENAME"]

DIFFUSERS_LORA_FILENAME = "pytorch_lora_weights.safetensors"
"""Weights in diffusers/peft keys, what ``pipe.load_lora_weights(folder)`` reads."""
KOHYA_IMAGE_LORA_FILENAME = "image_lora_kohya.safetensors"
"""The image LoRA in kohya-ss keys (A1111, ComfyUI's ``LoraLoader``)."""
ANIMATEDIFF_MOTION_LORA_FILENAME = "motion_lora_animatediff.safetensors"
"""The motion LoRA in the original AnimateDiff MotionLoRA keys (AnimateDiff's scripts, ComfyUI)."""
LORA_INFO_FILENAME = "lora_info.json"
"""Kind, LoRA config and what produced the weights."""
LORA_FILES = (DIFFUSERS_LORA_FILENAME, KOHYA_IMAGE_LORA_FILENAME, ANIMATEDIFF_MOTION_LORA_FILENAME, LORA_INFO_FILENAME)
"""Everything the pipelines write into a LoRA folder; only these are ever removed from one."""

EMBEDDING_FILENAME = "learned_embeds.safetensors"
"""A textual-inversion embedding in diffusers' layout, ``{token: (D,) vector}`` (``pipe.load_textual_inversion``)."""
EMBEDDING_INFO_FILENAME = "embedding_info.json"
"""The embedding's token, the caption word it replaces and what produced it."""
