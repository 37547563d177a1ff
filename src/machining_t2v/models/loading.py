"""Model loading in one place: a real SD1.5-family checkpoint or the built-in tiny model.

Everything downstream (training core, generation, evaluation) gets its models from
:func:`load_base_model` and :func:`load_motion_adapter`, so a real checkpoint and the
tiny model follow the same ``from_pretrained(subfolder=...)`` path. Nothing here is
tiny-specific except :func:`build_tiny_model`.

This module must not import Kedro: it also runs in notebooks and under ``accelerate launch``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    MotionAdapter,
    StableDiffusionPipeline,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from machining_t2v.models.published_folders import (
    publish_folder,
    read_marker,
    refuse_foreign_folder,
)

logger = logging.getLogger(__name__)

TINY_MODEL = "builtin:tiny"
"""Spec string meaning "the built-in tiny model" wherever a checkpoint id or folder is accepted."""

# Bump when the tiny architecture or tokenizer changes: an existing folder built by an
# older builder is then rebuilt instead of silently reused.
TINY_BUILDER_VERSION = 1
_TINY_MARKER = "tiny_model.json"

_DIFFUSERS_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_EXPECTED_LAYOUT = (
    "expected a diffusers folder with model_index.json and unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/"
)
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# Words that get whole-word tokens in the tiny tokenizer, so prompts from the synthetic
# data tokenise into meaningful ids rather than byte soup.
DOMAIN_WORDS: tuple[str, ...] = tuple(
    """
    mill milling milled lathe turning turn turned face facing
    slot slotting pocket drill drilling bore boring thread
    threading groove grooving rough roughing finish finishing cut
    cutting machine machining cnc spindle chuck jaw jaws vise
    table tailstock carriage tool tools cutter insert end shank
    carbide coolant chips chip feed feeding feeds
    bar rod block stock plate part workpiece surface steel
    aluminium aluminum brass plastic metal round flat square
    spins spinning rotating rotates travels travelling traveling
    moving moves along across over into through fixed still
    left right up down slow slowly fast from toward towards
    close view video shot camera small large red green blue
    yellow orange grey gray silver black white bright dark
    a an the on in of with and at to by is while mm
    """.split()
)


@dataclass
class BaseModel:
    """The SD1.5-family components a training or generation run needs."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    source: str
    """The folder or hub id actually loaded (the tiny model's folder, not ``builtin:tiny``)."""

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD1.5 and the starter)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


# --------------------------------------------------------------------------- tiny model


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map (the byte-level BPE alphabet)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to a symbol list, like CLIP does."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [
            (ranks.get((a, b)), i)
            for i, (a, b) in enumerate(zip(symbols, symbols[1:], strict=False))
        ]
        pairs = [(r, i) for r, i in pairs if r is not None]
        if not pairs:
            break
        _, i = min(pairs)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_tiny_tokenizer(words: tuple[str, ...] = DOMAIN_WORDS) -> CLIPTokenizer:
    """Build a CLIP-style byte-level BPE tokenizer offline.

    The vocabulary holds the 256 byte symbols, their ``</w>`` forms, one whole-word token
    per domain word (reached through merges), then ``<|startoftext|>``/``<|endoftext|>``
    at the end as in the real CLIP vocabulary. Any other text still tokenises (into
    byte-level pieces), so nothing is ever unknown.
    """
    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in alphabet + [s + "</w>" for s in alphabet]:
        vocab[sym] = len(vocab)
    byte_map = _bytes_to_unicode()
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        chars = [byte_map[b] for b in word.encode("utf-8")]
        chars[-1] += "</w>"
        # Merges are added only after the existing ones have run to a fixpoint on this
        # word, so new (higher-rank) merges can never pre-empt an earlier word's chain.
        symbols = _bpe(chars, ranks)
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
                vocab.setdefault(pair[0] + pair[1], len(vocab))
            symbols = [symbols[0] + symbols[1]] + symbols[2:]
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def small_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int) -> CLIPTextModel:
    """A randomly initialised 2-layer CLIP text encoder for ``tokenizer`` (seed the global RNG first).

    Its embeddings differ per token, which is all a UNet's cross-attention needs to read a
    caption; the built-in models keep it frozen.
    """
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=hidden_size,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )


def sd15_noise_scheduler(beta_schedule: str) -> DDPMScheduler:
    """SD1.5's DDPM training schedule (1000 steps, betas 0.00085 -> 0.012, epsilon) with ``beta_schedule``."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule=beta_schedule,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def _tiny_components(seed: int) -> dict[str, Any]:
    """Create the tiny pipeline components deterministically from ``seed``."""
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,  # 8x8 latents = 64 px images
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,  # diffusers' name for the number of heads (as in SD1.5's 8)
            norm_num_groups=8,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            # Four blocks = three 2x downsamplings: 64 px -> 8x8 latents, as SD's factor 8.
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(16, 32, 32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.18215,
        )
        torch.manual_seed(seed + 2)
        text_encoder = small_text_encoder(tokenizer, hidden_size=32)
        torch.manual_seed(seed + 3)
        adapter = MotionAdapter(
            block_out_channels=(32, 64),  # must equal the UNet's
            motion_layers_per_block=1,  # must equal the UNet's layers_per_block
            motion_num_attention_heads=2,
            motion_norm_num_groups=8,
            motion_max_seq_length=32,
            use_motion_mid_block=True,
        )
    scheduler = sd15_noise_scheduler("scaled_linear")
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
        "motion_adapter": adapter,
    }


def tiny_model_exists(out_dir: str | Path, seed: int | None = None) -> bool:
    """True if ``out_dir`` holds a complete tiny model from this builder version (and seed)."""
    folder = Path(out_dir)
    marker = read_marker(folder, _TINY_MARKER)
    if not marker or marker.get("builder_version") != TINY_BUILDER_VERSION:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    return _is_diffusers_folder(folder) and (folder / "motion_adapter" / "config.json").is_file()


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny SD1.5-shaped stack plus a motion adapter and save it in diffusers format.

    The folder is a complete ``StableDiffusionPipeline`` folder (safetensors, no safety
    checker) with an extra ``motion_adapter/`` subfolder. It is built in a temporary
    sibling folder and renamed into place, so a crash never leaves a half-written model
    and concurrent builders (e.g. several ``accelerate`` processes) do not clash.

    Idempotent: if ``out_dir`` already holds a complete tiny model of this builder version
    and seed, it is returned untouched. An out-of-date tiny model is replaced; a non-empty
    folder that is not a tiny model raises ``ValueError`` rather than being overwritten.

    Returns:
        The folder, to pass to :func:`load_base_model` or ``from_pretrained``.
    """
    out = Path(out_dir).expanduser()
    if tiny_model_exists(out, seed):
        return out
    refuse_foreign_folder(out, _TINY_MARKER, "tiny model", "tiny_model_dir")
    t0 = time.perf_counter()

    def write(folder: Path) -> None:
        parts = _tiny_components(seed)
        adapter = parts.pop("motion_adapter")
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        adapter.save_pretrained(folder / "motion_adapter", safe_serialization=True)

    marker = {"builder_version": TINY_BUILDER_VERSION, "seed": seed, "kind": "random-init tiny model (untrained)"}
    publish_folder(out, write, _TINY_MARKER, marker, lambda folder: tiny_model_exists(folder, seed))
    logger.info("Built tiny model in %s (%.1f s)", out, time.perf_counter() - t0)
    return out


def _ensure_tiny(tiny_model_dir: str | Path) -> Path:
    # Whatever seed built it, an existing tiny model is used as is; only a missing or
    # out-of-date one is (re)built, with the default seed.
    folder = Path(tiny_model_dir).expanduser()
    return folder if tiny_model_exists(folder) else build_tiny_model(folder)


# --------------------------------------------------------------------------- loading


_REQUIRED_FILES = (
    "model_index.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer",
    "scheduler/scheduler_config.json",
)


def _missing_diffusers_parts(folder: Path) -> list[str]:
    return [part for part in _REQUIRED_FILES if not (folder / part).exists()]


def _is_diffusers_folder(folder: Path) -> bool:
    return not _missing_diffusers_parts(folder)


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(("/", ".", "~")):
        return True
    return os.sep in spec and not _HUB_ID_RE.match(spec)


def _resolve(spec: str, *, what: str) -> tuple[str, bool]:
    """Return (spec to pass to from_pretrained, is_local) or raise for a missing path."""
    path = Path(spec).expanduser()
    if path.exists():
        return str(path), True
    if _looks_like_path(spec):
        raise FileNotFoundError(f"{what} folder not found: {spec}")
    return spec, False


def _check_hub(repo_id: str, filename: str, revision: str | None, what: str) -> None:
    """Fetch one small file first so a wrong id or a missing network fails once, naming the
    id, instead of after minutes of per-file retries (and before transformers silently
    falls back to an empty tokenizer)."""
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(repo_id, filename, revision=revision)
    except Exception as exc:
        raise OSError(
            f"could not load {what} '{repo_id}' from the Hugging Face Hub "
            f"(fetching {filename}): {exc}"
        ) from exc


def load_base_model(
    pretrained: str,
    tiny_model_dir: str | Path,
    *,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> BaseModel:
    """Load tokenizer, text encoder, VAE, UNet and noise scheduler of an SD1.5-family model.

    Args:
        pretrained: ``TINY_MODEL`` (``"builtin:tiny"``), a local diffusers folder, or a
            Hugging Face hub id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"``.
        tiny_model_dir: where the tiny model is (or gets) built; used only for ``TINY_MODEL``.
        revision, variant, torch_dtype: passed to every ``from_pretrained`` call. The dtype
            defaults to fp32 for training on any device: diffusers would otherwise keep the
            dtype of the files, and the starter model ships fp16 files.

    The tiny model is built if needed and then loaded through exactly the same
    ``from_pretrained(subfolder=...)`` calls as a real checkpoint. Only safetensors are
    loaded and remote code is never trusted. The noise scheduler is always a
    ``DDPMScheduler`` built from the checkpoint's scheduler config (as diffusers'
    training scripts do).

    Raises:
        FileNotFoundError: a path-like ``pretrained`` that does not exist.
        ValueError: an existing folder that is not a diffusers pipeline folder.
        OSError: a hub id that could not be loaded (e.g. offline), naming the id.
    """
    if pretrained == TINY_MODEL:
        spec, is_local = str(_ensure_tiny(tiny_model_dir)), True
    else:
        spec, is_local = _resolve(pretrained, what="base model")
    missing = _missing_diffusers_parts(Path(spec)) if is_local else []
    if missing:
        raise ValueError(f"{spec}: {_EXPECTED_LAYOUT} (missing: {', '.join(missing)})")
    if not is_local:
        _check_hub(spec, "model_index.json", revision, "base model")

    common: dict[str, Any] = {"revision": revision}
    weights: dict[str, Any] = {**common, "variant": variant, "use_safetensors": True}
    try:
        tokenizer = CLIPTokenizer.from_pretrained(spec, subfolder="tokenizer", **common)
        # transformers 5 spells the dtype argument `dtype`; diffusers keeps `torch_dtype`.
        text_encoder = CLIPTextModel.from_pretrained(
            spec, subfolder="text_encoder", dtype=torch_dtype, trust_remote_code=False, **weights
        )
        vae = AutoencoderKL.from_pretrained(
            spec, subfolder="vae", torch_dtype=torch_dtype, **weights
        )
        unet = UNet2DConditionModel.from_pretrained(
            spec, subfolder="unet", torch_dtype=torch_dtype, **weights
        )
        noise_scheduler = DDPMScheduler.from_pretrained(spec, subfolder="scheduler", **common)
    except Exception as exc:
        if is_local:
            raise
        raise OSError(
            f"could not load base model '{spec}' from the Hugging Face Hub: {exc}"
        ) from exc
    return BaseModel(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        unet=unet,
        noise_scheduler=noise_scheduler,
        source=spec,
    )


def load_motion_adapter(
    spec: str,
    tiny_model_dir: str | Path,
    *,
    revision: str | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype = torch.float32,
) -> MotionAdapter:
    """Load an AnimateDiff ``MotionAdapter``.

    Args:
        spec: ``TINY_MODEL`` (the tiny model's ``motion_adapter/``; the tiny model is built
            if needed), a local folder, or a hub id such as
            ``"guoyww/animatediff-motion-adapter-v1-5-3"``.
        tiny_model_dir: where the tiny model is (or gets) built.
        torch_dtype: the dtype to load in; fp32 unless asked (the files may be fp16).

    Raises:
        FileNotFoundError: a path-like spec that does not exist.
        ValueError: an existing folder without ``config.json``.
        OSError: a hub id that could not be loaded, naming the id.
    """
    if spec == TINY_MODEL:
        folder, is_local = str(_ensure_tiny(tiny_model_dir) / "motion_adapter"), True
    else:
        folder, is_local = _resolve(spec, what="motion adapter")
    if is_local and not (Path(folder) / "config.json").is_file():
        raise ValueError(f"{folder}: expected a diffusers MotionAdapter folder with config.json")
    if not is_local:
        _check_hub(folder, "config.json", revision, "motion adapter")
    try:
        return MotionAdapter.from_pretrained(
            folder,
            revision=revision,
            variant=variant,
            torch_dtype=torch_dtype,
            use_safetensors=True,
        )
    except Exception as exc:
        if is_local:
            raise
        raise OSError(
            f"could not load motion adapter '{spec}' from the Hugging Face Hub: {exc}"
        ) from exc


def build_motion_unet(unet: UNet2DConditionModel, adapter: MotionAdapter) -> UNetMotionModel:
    """Combine an image UNet and a motion adapter into a ``UNetMotionModel``.

    Add LoRA *after* this call: ``UNetMotionModel.from_unet2d`` fails on a UNet that
    already carries a peft adapter (unload it first).

    Raises:
        ValueError: the adapter was made for a different UNet (block channels or layers per
            block differ), naming both values; or the UNet carries a peft adapter.
    """
    unet_channels = tuple(unet.config.block_out_channels)
    adapter_channels = tuple(adapter.config.block_out_channels)
    if unet_channels != adapter_channels:
        raise ValueError(
            f"motion adapter block_out_channels {adapter_channels} do not match the UNet's "
            f"block_out_channels {unet_channels}"
        )
    n_blocks = len(unet_channels)
    unet_layers = unet.config.layers_per_block
    adapter_layers = adapter.config.motion_layers_per_block
    unet_layers = (unet_layers,) * n_blocks if isinstance(unet_layers, int) else tuple(unet_layers)
    adapter_layers = (
        (adapter_layers,) * n_blocks if isinstance(adapter_layers, int) else tuple(adapter_layers)
    )
    if unet_layers != adapter_layers:
        raise ValueError(
            f"motion adapter motion_layers_per_block {adapter_layers} do not match the UNet's "
            f"layers_per_block {unet_layers}"
        )
    if getattr(unet, "_hf_peft_config_loaded", False):
        raise ValueError(
            "the UNet carries a LoRA adapter; build the motion UNet first and add LoRA after "
            "(or call unet.unload_lora() / delete_adapters first)"
        )
    # from_unet2d already casts to the UNet's dtype but builds on the CPU.
    return UNetMotionModel.from_unet2d(unet, adapter).to(device=unet.device)


# --------------------------------------------------------------------------- checks before a run


_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


def _has_safetensors(folder: Path) -> bool:
    return any(next(folder.glob(pattern), None) is not None for pattern in _WEIGHT_PATTERNS)


def check_model_sources(base_model: dict[str, Any]) -> list[str]:
    """Check that the base model and the motion adapter of ``base_model`` parameters can be found.

    Cheap and without loading any weights, so a run can fail in seconds before it prepares any
    data: a local folder must have the diffusers layout (and safetensors weights in the parts
    that carry weights); a hub id must answer for one small file (``model_index.json`` /
    ``config.json``), fetched as :func:`load_base_model` and :func:`load_motion_adapter` do
    first. ``builtin:tiny`` is always fine (it is built when first loaded).

    Args:
        base_model: the ``base_model`` parameters (``pretrained``, ``motion_adapter``, and
            optionally ``revision``).

    Returns:
        One line per source saying what was found, for the log.

    Raises:
        FileNotFoundError: a path-like id that does not exist (as the loaders raise it).
        ValueError: a folder without the expected layout or weights, naming it.
        OSError: a hub id that could not be reached, naming it.
    """
    revision = base_model.get("revision")
    found: list[str] = []
    pretrained = str(base_model["pretrained"])
    if pretrained == TINY_MODEL:
        found.append(f"base model {TINY_MODEL} (built when first loaded)")
    else:
        spec, is_local = _resolve(pretrained, what="base model")
        if is_local:
            missing = _missing_diffusers_parts(Path(spec))
            if missing:
                raise ValueError(f"{spec}: {_EXPECTED_LAYOUT} (missing: {', '.join(missing)})")
            unweighted = [part for part in ("unet", "vae", "text_encoder") if not _has_safetensors(Path(spec, part))]
            if unweighted:
                raise ValueError(f"{spec}: no safetensors weights in {', '.join(p + '/' for p in unweighted)} "
                                 f"(only safetensors are loaded)")
            found.append(f"base model folder {spec}")
        else:
            _check_hub(spec, "model_index.json", revision, "base model")
            found.append(f"base model {spec} on the Hugging Face Hub (or its local cache)")

    adapter = str(base_model["motion_adapter"])
    if adapter == TINY_MODEL:
        found.append(f"motion adapter {TINY_MODEL} (built when first loaded)")
    else:
        folder, is_local = _resolve(adapter, what="motion adapter")
        if is_local:
            if not (Path(folder) / "config.json").is_file():
                raise ValueError(f"{folder}: expected a diffusers MotionAdapter folder with config.json")
            if not _has_safetensors(Path(folder)):
                raise ValueError(f"{folder}: no safetensors weights in the motion adapter folder "
                                 f"(only safetensors are loaded)")
            found.append(f"motion adapter folder {folder}")
        else:
            _check_hub(folder, "config.json", revision, "motion adapter")
            found.append(f"motion adapter {folder} on the Hugging Face Hub (or its local cache)")
    return found


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
