"""Pre-run checks on a loaded base model: is the training resolution sensible for it?

Where a model comes from is checked before anything loads, in :mod:`.sources`. Configs may be
diffusers config objects or plain dicts, so this module imports neither torch nor diffusers.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def _config_value(config: Any, key: str) -> Any:
    return config[key] if isinstance(config, dict) else getattr(config, key)


def native_resolution(unet_config: Any, vae_config: Any) -> int:
    """The base model's native image side in px: ``unet.config.sample_size`` x the VAE's scale factor
    (512 for SD1.5, 64 for the starter and the tiny model). Configs may be objects or dicts."""
    sample_size = _config_value(unet_config, "sample_size")
    if isinstance(sample_size, (list, tuple)):
        sample_size = min(sample_size)
    scale_factor = 2 ** (len(_config_value(vae_config, "block_out_channels")) - 1)
    return int(sample_size) * scale_factor


def warn_if_low_resolution(unet_config: Any, vae_config: Any, resolution: int, what: str) -> bool:
    """Log a warning when ``resolution`` is under half the base model's native size.

    A model trained at 512 px draws poorly, and learns a LoRA that transfers poorly, at 128 px;
    the warning names both numbers so the user can raise ``frames.still_resolution`` /
    ``frames.clip_resolution`` (or knowingly keep a small size for a smoke test).

    Returns:
        True when it warned.
    """
    native = native_resolution(unet_config, vae_config)
    if int(resolution) * 2 >= native:
        return False
    logger.warning("%s runs at %d px, under half the base model's native %d px: a model pretrained at %d px "
                   "learns little that transfers at that size. Raise frames.still_resolution / "
                   "frames.clip_resolution towards %d unless this is only a smoke test.",
                   what, int(resolution), native, native, native)  # fmt: skip
    return True
