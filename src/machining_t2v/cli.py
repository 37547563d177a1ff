"""Console script ``machining-t2v``: generate a process video from text with the trained LoRAs.

    machining-t2v generate "mtv pocket milling on a milling machine, steel workpiece, spinning end mill" \\
        --image-lora data/06_models/image_lora --motion-lora data/06_models/motion_lora \\
        --scale-image 0.8 --scale-motion 1.0 --steps 25 --seed 0 --out clip.mp4

writes ``clip.mp4`` (H.264, plays in browsers) and ``clip.gif`` beside it. Frames and guidance
default to the base model's: 8 and 4.0 for the starter model, 16 and 7.5 for SD1.5. LoRAs are
loaded by path from anywhere (a ``.safetensors`` file or a folder holding
``pytorch_lora_weights.safetensors``; diffusers, kohya and AnimateDiff MotionLoRA layouts).
Everything runs through :mod:`machining_t2v.generation.generator`, the code the ``generate`` and
``evaluation`` pipelines use.
No Kedro project is needed. ``machining-t2v prompt INSTRUCTION`` prints the prompt a work instruction
(Korean or English) becomes; ``machining-t2v serve`` starts the local web page
(:mod:`machining_t2v.webapp`) on http://127.0.0.1:7860/.

Kedro also imports this module: ``kedro`` loads ``<package>.cli`` of a project and requires a
click group named ``cli`` in it (its commands are added to ``kedro``'s). :data:`cli` is that group,
left empty on purpose: the console script is ``machining-t2v``, not a ``kedro`` sub-command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

PROG = "machining-t2v"
SCHEDULERS = ("ddim", "euler", "dpm++")  # = machining_t2v.generation.generator.SCHEDULERS, kept here so --help and
# command-line errors answer without importing torch and diffusers
DEFAULT_REAL_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-3"
PROJECT_TINY_DIR = Path("data/06_models/tiny-sd")
# The committed starter model and its marker file (= STARTER_MARKER of the starter tools, named
# here so that choosing the default base needs no torch import).
PROJECT_STARTER_DIR = Path("models/starter")
STARTER_MARKER = "starter_model.json"
# Frames and guidance when the command line does not say: SD1.5 with AnimateDiff's usual values,
# and the starter model's (trained on 8-frame clips; oversaturated at guidance 7.5), which are
# also what its evaluation and the generate pipeline use.
SD15_FRAMES, SD15_GUIDANCE = 16, 7.5
STARTER_FRAMES, STARTER_GUIDANCE = 8, 4.0


@click.group(name="machining-t2v-project")
def cli() -> None:
    """Project commands for ``kedro`` (none yet; see the ``machining-t2v`` console script)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from error
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def default_tiny_model_dir() -> Path:
    """``data/06_models/tiny-sd`` inside a project (where the pipelines build it), else a user cache."""
    if PROJECT_TINY_DIR.is_dir():
        return PROJECT_TINY_DIR
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "machining_t2v" / "tiny-sd"


def is_starter_folder(base: str | Path) -> bool:
    """Whether ``base`` is a starter model folder (it holds the starter's marker file)."""
    return (Path(base) / STARTER_MARKER).is_file()


def default_base() -> str:
    """The project's starter model (what the pipelines train on) when run inside the project, else builtin:tiny."""
    if is_starter_folder(PROJECT_STARTER_DIR):
        return str(PROJECT_STARTER_DIR)
    return "builtin:tiny"


def default_sampling(base: str) -> tuple[int, float]:
    """Frames and guidance scale for ``base``: the starter model's own when it is one, else SD1.5's."""
    if is_starter_folder(base):
        return STARTER_FRAMES, STARTER_GUIDANCE
    return SD15_FRAMES, SD15_GUIDANCE


def default_motion_adapter(base: str) -> str:
    """The adapter that goes with ``base``: its own ``motion_adapter/`` folder if it has one (the starter
    does), the tiny one for builtin:tiny, else AnimateDiff's v1.5 adapter."""
    if base == "builtin:tiny":
        return "builtin:tiny"
    own = Path(base) / "motion_adapter"
    if (own / "config.json").is_file():
        return str(own)
    return DEFAULT_REAL_MOTION_ADAPTER


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``machining-t2v generate ...``)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Text-to-video for machine-tool processes "
                                     "(SD1.5 + AnimateDiff with image and motion LoRAs).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate a video from a prompt",
                              description="Generate a video from a prompt; writes an H.264 .mp4 and a .gif.")
    gen.add_argument("prompt", help="what to show, e.g. 'mtv face the steel bar on the lathe' (use the "
                     "trigger word the LoRAs were trained with)")
    gen.add_argument("--image-lora", metavar="PATH", help="image (spatial) LoRA: .safetensors file or folder")
    gen.add_argument("--motion-lora", metavar="PATH", help="motion (temporal) LoRA: .safetensors file or folder")
    gen.add_argument("--embedding", metavar="PATH", help="textual-inversion embedding: the folder image_ft wrote "
                     "(data/06_models/image_embedding; its token takes the trigger word's place in the prompt) or a "
                     "diffusers-layout .safetensors file (its token goes in front unless the prompt holds it)")
    gen.add_argument("--scale-image", type=_non_negative_float, default=1.0, metavar="S",
                     help="image LoRA strength (default 1.0)")
    gen.add_argument("--scale-motion", type=_non_negative_float, default=1.0, metavar="S",
                     help="motion LoRA strength (default 1.0)")
    gen.add_argument("--frames", type=_positive_int, default=None, help=f"frames per clip (default {SD15_FRAMES}, "
                     f"{STARTER_FRAMES} with the starter model; at most the motion adapter's motion_max_seq_length)")
    gen.add_argument("--steps", type=_positive_int, default=25, help="denoising steps (default 25)")
    gen.add_argument("--guidance", type=_non_negative_float, default=None, help="classifier-free guidance scale "
                     f"(default {SD15_GUIDANCE}, {STARTER_GUIDANCE} with the starter model)")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    gen.add_argument("--out", default=None, metavar="FILE.mp4", help="output .mp4 (a .gif is written beside "
                     "it); default: <prompt>.mp4 in the current folder")
    gen.add_argument("--base", default=None, help="base model: a diffusers folder, a hub id such as "
                     "stable-diffusion-v1-5/stable-diffusion-v1-5, or builtin:tiny (random weights). Default: "
                     f"the project's starter model ({PROJECT_STARTER_DIR}) when run in the project folder, "
                     "else builtin:tiny")
    gen.add_argument("--motion-adapter", default=None, help="motion adapter: folder or hub id (default: the "
                     "base folder's own motion_adapter/ if it has one, builtin:tiny with the tiny base, else "
                     f"{DEFAULT_REAL_MOTION_ADAPTER})")
    gen.add_argument("--scheduler", choices=SCHEDULERS, default="ddim", help="sampler (default ddim)")
    gen.add_argument("--negative-prompt", default=None, help="what not to show")
    gen.add_argument("--clip-skip", type=_positive_int, default=1, help="text-encoder layer the prompt is encoded "
                     "at, counted from the end: 1 the last (default), 2 the one before (as the LoRA was trained)")
    gen.add_argument("--size", type=_positive_int, default=None, help="frame side in pixels, a multiple of 8 "
                     "(default: the base model's native size: 64 tiny, 512 SD1.5)")
    gen.add_argument("--fps", type=_non_negative_float, default=8.0, help="frame rate of the files (default 8)")
    gen.add_argument("--tiny-model-dir", type=Path, default=None, help="where builtin:tiny is built and loaded "
                     "(default: data/06_models/tiny-sd in a project, else ~/.cache/machining_t2v/tiny-sd)")
    gen.add_argument("--revision", default=None, help="hub revision of the base model")
    gen.add_argument("--variant", default=None, help="weight variant of the base model, e.g. fp16")
    gen.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    gen.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                     help="weights dtype (default auto: float16 on CUDA, float32 on CPU)")
    gen.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: "
                     "torch's own choice; 1 is fastest for the tiny model on small CPUs)")
    gen.add_argument("-q", "--quiet", action="store_true", help="only errors and warnings")
    _add_prompt_parser(commands)
    _add_serve_parser(commands)
    return parser


def _add_prompt_parser(commands: argparse._SubParsersAction) -> None:
    """``machining-t2v prompt INSTRUCTION``: a work instruction made into the prompt the model gets."""
    cmd = commands.add_parser("prompt", help="turn a work instruction (Korean or English) into a prompt",
                              description="Print the prompt a work instruction becomes: the training captions' "
                              "words with the trigger in front, through the machining glossary.")
    cmd.add_argument("instruction", help="e.g. '엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공' or 'face the steel bar'")
    cmd.add_argument("--json", action="store_true", help="print one JSON object on the last line (prompt, process, "
                     "operation, material, direction, unknown, known_process, message, defaults)")
    cmd.add_argument("--glossary", type=Path, default=None, metavar="PATH",
                     help="glossary file (default: conf/base/glossary.yml of the project in the current folder)")
    cmd.add_argument("--trigger", default=None, metavar="T", help="trigger word in front of the prompt (default: "
                     "captions.trigger of the project's conf for --env, e.g. mtv, ohwx with --env sd15)")
    cmd.add_argument("--env", default=None, help="Kedro environment the trigger is read from (default local over base)")
    cmd.set_defaults(quiet=False)


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    """``machining-t2v serve``: the local web page (instruction in, clip out)."""
    cmd = commands.add_parser("serve", help="start the local web page (instruction -> prompt -> clip)",
                              description="Start the web page on http://127.0.0.1:PORT/: a work instruction becomes "
                              "the prompt, the trained LoRAs are offered, clips play and download there.")
    cmd.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                     "only; this machine's network address opens the page, which has no login, to the network)")
    cmd.add_argument("--base", default=None, help="base model, as for generate (default: the project's starter "
                     "model in the project folder, else builtin:tiny)")
    cmd.add_argument("--motion-adapter", default=None, help="motion adapter, as for generate")
    cmd.add_argument("--tiny-model-dir", type=Path, default=None, help="where builtin:tiny is built and loaded")
    cmd.add_argument("--frames", type=_positive_int, default=None, help="frames per clip (default: the base "
                     f"model's, {STARTER_FRAMES} for the starter, {SD15_FRAMES} for SD1.5)")
    cmd.add_argument("--steps", type=_positive_int, default=25, help="denoising steps the page starts with "
                     "(default 25)")
    cmd.add_argument("--models-dir", type=Path, default=Path("data/06_models"), help="where the trained LoRA "
                     "folders are looked for (default data/06_models; the MLflow runs of ./mlflow.db too)")
    cmd.add_argument("--out-dir", type=Path, default=Path("data/07_model_output/web_clips"),
                     help="where the clips are written (default data/07_model_output/web_clips)")
    cmd.add_argument("--glossary", type=Path, default=None, metavar="PATH", help="glossary file (default: "
                     "conf/base/glossary.yml of the project in the current folder)")
    cmd.add_argument("--trigger", default=None, metavar="T", help="trigger word in front of the prompts "
                     "(default: captions.trigger of the project's conf for --env)")
    cmd.add_argument("--env", default=None, help="Kedro environment the trigger is read from")
    cmd.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    cmd.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                     help="weights dtype (default auto)")
    cmd.add_argument("--threads", type=_positive_int, default=None, help="CPU threads for torch")
    cmd.set_defaults(quiet=False)


def serve_command(args: argparse.Namespace) -> int:
    """Run ``machining-t2v serve`` until interrupted; returns the exit status (2: no glossary)."""
    from machining_t2v.instructions.glossary import DEFAULT_GLOSSARY, GlossaryError, load_glossary
    from machining_t2v.instructions.trigger import configured_trigger

    try:
        glossary = load_glossary(args.glossary or DEFAULT_GLOSSARY)
    except GlossaryError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    from machining_t2v.webapp.app import launch
    from machining_t2v.webapp.studio import Studio, StudioSettings

    base = args.base or default_base()
    settings = StudioSettings(
        base=base, motion_adapter=args.motion_adapter or default_motion_adapter(base),
        tiny_model_dir=args.tiny_model_dir or default_tiny_model_dir(), glossary=glossary,
        trigger=configured_trigger(args.env) if args.trigger is None else args.trigger, models_dir=args.models_dir,
        out_dir=args.out_dir, frames=args.frames, steps=args.steps, device=args.device, dtype=args.dtype,
        threads=args.threads,
    )  # fmt: skip
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: note: listening on {args.host}: other machines can open the page, which has no login",
              file=sys.stderr)
    try:
        app = launch(Studio(settings), host=args.host, port=args.port)
    except KeyboardInterrupt:  # Ctrl+C while the server was starting
        return 130
    print(f"The page is on http://{args.host}:{args.port}/ (base model {base}; Ctrl+C stops it)", flush=True)
    app.block_thread()  # until Ctrl+C, which closes the server
    return 0


def prompt_command(args: argparse.Namespace) -> int:
    """Run ``machining-t2v prompt``; returns the exit status (2 when no prompt can be made)."""
    from machining_t2v.instructions.glossary import DEFAULT_GLOSSARY, GlossaryError, load_glossary
    from machining_t2v.instructions.prompting import InstructionError, instruction_to_prompt
    from machining_t2v.instructions.trigger import configured_trigger

    try:
        glossary = load_glossary(args.glossary or DEFAULT_GLOSSARY)
        trigger = configured_trigger(args.env) if args.trigger is None else args.trigger
        result = instruction_to_prompt(args.instruction, glossary, trigger)
    except (InstructionError, GlossaryError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if result.unknown and result.prompt is not None:
        print(f"{PROG}: note: not in the glossary, left out: {', '.join(result.unknown)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
    elif result.prompt is not None:
        print(result.prompt)
    if result.prompt is None:
        unknown = f" (unknown words: {', '.join(result.unknown)})" if result.unknown else ""
        print(f"{PROG}: error: {result.message}{unknown}", file=sys.stderr)
        return 2
    return 0


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("machining_t2v").setLevel(logging.WARNING if quiet else logging.INFO)
    for name in ("diffusers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def generate_command(args: argparse.Namespace) -> int:
    """Run ``machining-t2v generate``; returns the exit status."""
    # Checks that need no model come first, before torch and diffusers are even imported.
    if args.out and Path(args.out).suffix not in ("", ".mp4"):
        raise ValueError(f"--out {args.out} must end in .mp4 (the .gif is written beside it)")
    for flag, path in (("--image-lora", args.image_lora), ("--motion-lora", args.motion_lora)):
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"{flag}: LoRA not found: {path}")
    from machining_t2v.generation.generator import cpu_threads
    from machining_t2v.generation.loras import embedding_token
    from machining_t2v.generation.video import prompt_slug, require_text

    require_text(args.prompt)  # an empty prompt fails before any model loads
    # The embedding file is read (not loaded) here, so a wrong one fails before the model loads too.
    embedding = embedding_token(args.embedding) if args.embedding else None
    out = Path(args.out) if args.out else Path(prompt_slug(args.prompt))
    out = out.with_suffix(".mp4") if out.suffix == "" else out
    with cpu_threads(args.threads):
        return _generate(args, out, embedding)


def _generate(args: argparse.Namespace, out: Path, embedding: tuple[Path, str, str | None] | None) -> int:
    from machining_t2v.generation.generator import open_generator
    from machining_t2v.generation.loras import load_textual_inversion, use_loras
    from machining_t2v.generation.video import check_num_frames, generate_video, save_video
    from machining_t2v.instructions.tokenizer_words import warn_unknown_words

    log = logging.getLogger("machining_t2v.cli")
    base = args.base or default_base()
    # The console script, like the catalog's model datasets, is where builtin:tiny becomes a folder.
    generator = open_generator(base, args.motion_adapter or default_motion_adapter(base),
                               args.tiny_model_dir or default_tiny_model_dir(), scheduler=args.scheduler,
                               device=args.device, dtype=args.dtype, revision=args.revision, variant=args.variant,
                               clip_skip=args.clip_skip)
    warn_unknown_words(generator.tokenizer, args.prompt)
    default_frames, default_guidance = default_sampling(base)
    num_frames = args.frames or default_frames
    guidance = default_guidance if args.guidance is None else args.guidance
    check_num_frames(generator, num_frames)
    scales = use_loras(generator, {"image": (args.image_lora, args.scale_image),
                                   "motion": (args.motion_lora, args.scale_motion)})
    prompt = args.prompt
    if embedding is not None:
        from machining_t2v.training.textual_inversion import with_placeholder

        file, token, replaces = embedding
        load_textual_inversion(generator, file, token)
        prompt = with_placeholder(prompt, replaces, token)
        log.info("Prompt with the embedding's token: %s", prompt)
    generator.pipe.set_progress_bar_config(disable=args.quiet or not sys.stderr.isatty())
    log.info("Generating %d frames, %d steps, guidance %g, seed %d with base %s%s", num_frames, args.steps,
             guidance, args.seed, generator.base_source,
             "".join(f", {name} LoRA x{scale}" for name, scale in scales.items()))
    frames = generate_video(
        generator, prompt, negative_prompt=args.negative_prompt, num_frames=num_frames,
        num_inference_steps=args.steps, guidance_scale=guidance, seed=args.seed, size=args.size,
    )  # fmt: skip
    mp4, gif = save_video(frames, out, fps=args.fps)
    print(f"Wrote {mp4} and {gif} ({len(frames)} frames, {frames.shape[2]}x{frames.shape[1]} px, {args.fps:g} fps)")
    if generator.base_is_tiny:
        print("Note: the built-in tiny base model has random weights; set --base to a real SD1.5 checkpoint "
              "for meaningful videos.")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``machining-t2v`` console script; returns the exit status
    (0 done, 1 the run failed with a message, 2 bad command line)."""
    # Before diffusers/transformers are imported: their import-time notes and weight-loading bars
    # are noise on a console (a user's own settings win).
    for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                            ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
        os.environ.setdefault(variable, value)
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    with warnings.catch_warnings():
        # The libraries' dtype notes and deprecations are not the user's business here.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            if args.command == "generate":
                return generate_command(args)
            if args.command == "prompt":
                return prompt_command(args)
            if args.command == "serve":
                return serve_command(args)
        except (ValueError, FileNotFoundError, OSError) as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
