"""What the web page does, as plain calls a test makes without a browser: an instruction made into a
prompt, the trained LoRAs listed, a clip generated and saved.

Every bad input is answered with a message for the page's status line, never an exception, so
the server keeps serving. The generator (base model + motion adapter) is loaded on the first
clip and kept; the chosen LoRAs are read from disk again for every clip
(:func:`machining_t2v.generation.loras.use_loras`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from machining_t2v.instructions.glossary import Glossary
from machining_t2v.instructions.prompting import InstructionError, instruction_to_prompt
from machining_t2v.webapp.discovery import TrainedLoras, find_trained_loras

logger = logging.getLogger(__name__)

NO_LORA_YET = ("No LoRA is trained yet: the clips come from the base model alone. `make run` trains the image "
               "and motion LoRAs into {models_dir}.")


@dataclass(frozen=True)
class StudioSettings:
    """What the page generates with (``machining-t2v serve`` fills it from its command line)."""

    base: str
    motion_adapter: str
    tiny_model_dir: Path
    glossary: Glossary
    trigger: str
    models_dir: Path = Path("data/06_models")
    mlflow_db: Path | None = Path("mlflow.db")
    out_dir: Path = Path("data/07_model_output/web_clips")
    frames: int | None = None
    """Frames per clip; None: the base model's (8 for the starter model, 16 for SD1.5)."""
    guidance: float | None = None
    """Guidance scale; None: the base model's (4.0 for the starter model, 7.5 for SD1.5)."""
    steps: int = 25
    """The denoising steps the page starts with (each clip may ask for others)."""
    fps: float = 8.0
    device: str | None = None
    dtype: str = "auto"
    threads: int | None = None


@dataclass(frozen=True)
class PromptAnswer:
    """The prompt an instruction became ("" when none could be made) and what the page says about it."""

    prompt: str
    message: str
    ok: bool


@dataclass(frozen=True)
class ClipRequest:
    """What the page's form holds when *Generate* is pressed (LoRAs as folder paths, "" for none)."""

    instruction: str
    prompt: str = ""
    auto_prompt: str = ""
    """The prompt the page last made from the instruction: a prompt box still holding it is remade
    from the (maybe changed) instruction, an edited one is used as it is."""
    image_lora: str = ""
    motion_lora: str = ""
    scale_image: float = 1.0
    scale_motion: float = 1.0
    seed: int = 0
    steps: int = 25
    subtitle: bool = False


@dataclass(frozen=True)
class ClipResult:
    """A generated clip, or why there is none (``mp4`` None); ``lora_gone``: refresh the LoRA lists."""

    message: str
    prompt: str
    mp4: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    lora_gone: bool = False


def make_prompt(instruction: str | None, glossary: Glossary, trigger: str) -> PromptAnswer:
    """The prompt for a work instruction (:func:`instruction_to_prompt`), with the page's message: why there
    is none (empty, too long, no machining term, a process no LoRA learned), or the words left out."""
    try:
        result = instruction_to_prompt(instruction, glossary, trigger)
    except InstructionError as error:
        return PromptAnswer("", f"**No prompt:** {error}.", False)
    unknown = ", ".join(result.unknown)
    if result.prompt is None:
        words = f" (not in the glossary: {unknown})" if unknown else ""
        return PromptAnswer("", f"**No prompt:** {result.message}{words}.", False)
    note = f"Not in the glossary, left out: {unknown}." if unknown else ""
    return PromptAnswer(result.prompt, note, True)


def _lora_text(path: str, scale: float) -> str:
    return f"{Path(path).name} x{scale:g}" if path else "none"


class Studio:
    """The page's state that outlives a request: settings and the loaded generator."""

    def __init__(self, settings: StudioSettings):
        self.settings = settings
        self._generator = None
        self._lock = threading.Lock()  # one clip at a time: the generator's LoRAs are switched per clip

    def trained_loras(self) -> TrainedLoras:
        """The LoRAs to choose from, looked up again on every call (a run may have finished meanwhile)."""
        return find_trained_loras(self.settings.models_dir, self.settings.mlflow_db)

    def lora_status(self, trained: TrainedLoras) -> str:
        """The status line about the LoRAs found ("" when there are some and nothing went wrong)."""
        lines = list(trained.notes)
        if not trained.choices:
            lines.append(NO_LORA_YET.format(models_dir=self.settings.models_dir))
        return "\n\n".join(lines)

    def make_prompt(self, instruction: str | None) -> PromptAnswer:
        """:func:`make_prompt` with the page's glossary and trigger."""
        return make_prompt(instruction, self.settings.glossary, self.settings.trigger)

    def _resolve_prompt(self, request: ClipRequest) -> PromptAnswer:
        typed = request.prompt.strip()
        if typed and (not request.instruction.strip() or typed != request.auto_prompt.strip()):
            return PromptAnswer(typed, "", True)
        return self.make_prompt(request.instruction)

    def generator(self):
        """The generator, loaded on first use."""
        if self._generator is None:
            from machining_t2v.generation.generator import open_generator

            settings = self.settings
            logger.info("Loading base model %s and motion adapter %s", settings.base, settings.motion_adapter)
            self._generator = open_generator(settings.base, settings.motion_adapter, settings.tiny_model_dir,
                                             device=settings.device, dtype=settings.dtype)
        return self._generator

    def generate(self, request: ClipRequest, on_step: Callable[[int, int], None] | None = None) -> ClipResult:
        """Generate and save the clip ``request`` asks for; ``on_step(done, total)`` follows the denoising."""
        answer = self._resolve_prompt(request)
        if not answer.ok:
            return ClipResult(answer.message, request.prompt)
        for kind, path in (("image", request.image_lora), ("motion", request.motion_lora)):
            if path and not Path(path).exists():
                return ClipResult(f"**No clip:** the {kind} LoRA {path} is gone (deleted or moved after the page "
                                  "listed it). The lists are refreshed: choose another one, or none for the base "
                                  "model alone.", answer.prompt, lora_gone=True)
        from machining_t2v.generation.generator import cpu_threads

        try:
            with self._lock, cpu_threads(self.settings.threads):
                return self._generate(request, answer, on_step)
        # FileNotFoundError and LoraMismatchError included; RuntimeError: torch's, out of memory above all.
        except (ValueError, OSError, RuntimeError) as error:
            logger.warning("Clip failed: %s", error)
            return ClipResult(f"**No clip:** {error}", answer.prompt, lora_gone=isinstance(error, FileNotFoundError))

    def _generate(self, request: ClipRequest, answer: PromptAnswer,
                  on_step: Callable[[int, int], None] | None) -> ClipResult:
        from machining_t2v.cli import default_sampling
        from machining_t2v.generation.loras import use_loras
        from machining_t2v.generation.video import generate_video, prompt_slug, save_video
        from machining_t2v.instructions.tokenizer_words import words_unknown_to_tokenizer
        from machining_t2v.webapp.subtitles import SubtitleFontError, burn_subtitle

        settings, prompt = self.settings, answer.prompt
        generator = self.generator()
        default_frames, default_guidance = default_sampling(settings.base)
        use_loras(generator, {"image": (request.image_lora, request.scale_image),
                              "motion": (request.motion_lora, request.scale_motion)})
        frames = generate_video(
            generator, prompt, num_frames=settings.frames or default_frames, num_inference_steps=int(request.steps),
            guidance_scale=default_guidance if settings.guidance is None else settings.guidance,
            seed=int(request.seed), on_step=on_step,
        )  # fmt: skip
        notes = [answer.message] if answer.message else []
        unknown = words_unknown_to_tokenizer(generator.tokenizer, prompt)
        if unknown:
            notes.append(f"The base model does not know these words of the prompt, so it ignores them: "
                         f"{', '.join(unknown)}.")
        if request.subtitle:
            try:
                frames = burn_subtitle(frames, request.instruction.strip() or prompt)
            except SubtitleFontError as error:
                notes.append(f"Subtitle left out: {error}.")
        if generator.base_is_tiny:
            notes.append("The built-in tiny base model has random weights: start with `--base` set to a real "
                         "model for meaningful clips.")
        now = datetime.now()
        mp4, _ = save_video(frames, settings.out_dir / f"{now:%Y%m%d-%H%M%S-%f}-{prompt_slug(prompt, 40)}.mp4",
                            fps=settings.fps)
        loras = f"image LoRA {_lora_text(request.image_lora, request.scale_image)}, motion LoRA " \
                f"{_lora_text(request.motion_lora, request.scale_motion)}"
        done = (f"**Done:** {len(frames)} frames, {frames.shape[2]}x{frames.shape[1]} px, {int(request.steps)} "
                f"steps, seed {int(request.seed)}, {loras}.")
        record = {"time": f"{now:%H:%M:%S}", "instruction": request.instruction.strip(), "prompt": prompt,
                  "loras": loras, "seed": int(request.seed), "steps": int(request.steps), "file": str(mp4)}
        return ClipResult("\n\n".join([done, *notes]), prompt, mp4, record)
