"""Optional model captioner (BLIP-style image-to-text through transformers).

Used by the ``captions`` pipeline when ``captions.model`` names a local folder or hub id.
No Kedro import: the same function serves notebooks and scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

logger = logging.getLogger(__name__)


def caption_images(
    images: Sequence[Image.Image], model_name_or_path: str, *, max_new_tokens: int = 30, batch_size: int = 8
) -> list[str]:
    """Caption each image with an image-to-text model (e.g. ``Salesforce/blip-image-captioning-base``).

    The model is loaded with safetensors only and never with remote code.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    looks_like_path = model_name_or_path.startswith((".", "/", "~")) or Path(model_name_or_path).exists()
    if looks_like_path and not Path(model_name_or_path).expanduser().is_dir():
        raise FileNotFoundError(f"captions.model: {model_name_or_path} does not exist (expected a folder "
                                "with a transformers image-captioning model, e.g. BLIP)")
    try:
        processor = AutoProcessor.from_pretrained(model_name_or_path)
        model = AutoModelForImageTextToText.from_pretrained(model_name_or_path, use_safetensors=True)
    except OSError as error:
        raise OSError(f"captions.model: could not load {model_name_or_path!r} as an image-captioning model: "
                      f"{error}") from error
    model.eval()
    captions: list[str] = []
    for start in range(0, len(images), batch_size):
        batch = [image.convert("RGB") for image in images[start : start + batch_size]]
        inputs = processor(images=batch, return_tensors="pt")
        with torch.no_grad():
            output_ids = model.generate(**inputs, max_new_tokens=max_new_tokens)
        captions.extend(text.strip() for text in processor.batch_decode(output_ids, skip_special_tokens=True))
    logger.info("Captioned %d images with %s", len(captions), model_name_or_path)
    return captions
