"""The page's layout (Gradio) and the server behind ``machining-t2v serve``.

The page wires its controls to :class:`machining_t2v.webapp.studio.Studio`; everything it does
can be called without it. It binds 127.0.0.1 unless told otherwise, makes no share link, sends no
analytics and loads nothing from the internet (Gradio's default theme serves its fonts itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from machining_t2v.webapp.discovery import TrainedLoras
from machining_t2v.webapp.studio import ClipRequest, Studio

TITLE = "Machining process video"
CLIP_COLUMNS = ["time", "instruction", "prompt", "loras", "seed", "steps", "file"]


def lora_options(trained: TrainedLoras, kind: str) -> list[tuple[str, str]]:
    """(label, folder) pairs of a chooser: none first, then the LoRAs of ``kind`` as found."""
    return [("none (base model alone)", ""), *((choice.label, str(choice.path)) for choice in trained.of_kind(kind))]


def first_lora(trained: TrainedLoras, kind: str) -> str:
    """The chooser's default: the first LoRA found of ``kind`` (``data/06_models``' before MLflow's), else none."""
    found = trained.of_kind(kind)
    return str(found[0].path) if found else ""


def build_app(studio: Studio) -> Any:
    """The page as a ``gradio.Blocks`` app (not started)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by Gradio at import: the page never calls home
    import gradio as gr

    def lora_lists() -> tuple[Any, Any, str]:
        trained = studio.trained_loras()
        image, motion = (gr.Dropdown(choices=lora_options(trained, kind), value=first_lora(trained, kind))
                         for kind in ("image", "motion"))
        return image, motion, studio.lora_status(trained)

    def to_prompt(instruction: str) -> tuple[str, str, str]:
        answer = studio.make_prompt(instruction)
        return answer.message, answer.prompt, answer.prompt

    def generate(instruction: str, prompt: str, auto_prompt: str, image_lora: str | None, motion_lora: str | None,
                 scale_image: float, scale_motion: float, seed: float | None, steps: float, subtitle: bool,
                 clips: list[dict], progress: gr.Progress = gr.Progress()) -> tuple:  # noqa: B008
        # (Gradio finds the progress bar to drive through that default value.)
        def on_step(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        progress(0, desc="loading the models and LoRAs")
        result = studio.generate(ClipRequest(
            instruction=instruction or "", prompt=prompt or "", auto_prompt=auto_prompt or "",
            image_lora=image_lora or "", motion_lora=motion_lora or "", scale_image=scale_image,
            scale_motion=scale_motion, seed=int(seed or 0), steps=int(steps), subtitle=bool(subtitle),
        ), on_step=on_step)  # fmt: skip
        # The prompt made from the instruction is remembered, so an unedited box follows the next instruction.
        made = auto_prompt if result.prompt == (prompt or "").strip() else result.prompt
        clips = [*clips, result.record] if result.mp4 else clips
        lists = lora_lists() if result.lora_gone else (gr.Dropdown(), gr.Dropdown(), gr.Markdown())
        mp4 = str(result.mp4) if result.mp4 else None
        table = [[clip[column] for column in CLIP_COLUMNS] for clip in reversed(clips)]
        files = [clip["file"] for clip in clips if Path(clip["file"]).is_file()] or None
        # No clip: the player is emptied, so an earlier clip is not taken for this request's (it stays listed).
        return result.message, result.prompt, made, mp4, mp4, clips, table, files, *lists

    trained = studio.trained_loras()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nWrite the work step in Korean or English: it becomes the prompt the LoRAs were "
                    "trained on. Edit the prompt if you like, then generate.")
        auto_prompt = gr.State("")
        clips = gr.State([])
        with gr.Row():
            with gr.Column():
                instruction = gr.Textbox(label="Work instruction (Korean or English)", lines=2, elem_id="instruction",
                                         placeholder="엔드밀로 알루미늄 블록에 X축 방향 슬롯 가공")
                make = gr.Button("Make the prompt", elem_id="make-prompt")
                prompt = gr.Textbox(label="Prompt (editable)", lines=2, elem_id="prompt")
                image_lora = gr.Dropdown(label="Image LoRA", choices=lora_options(trained, "image"),
                                         value=first_lora(trained, "image"), elem_id="image-lora")
                scale_image = gr.Slider(0, 2, value=1.0, step=0.05, label="Image LoRA scale")
                motion_lora = gr.Dropdown(label="Motion LoRA", choices=lora_options(trained, "motion"),
                                          value=first_lora(trained, "motion"), elem_id="motion-lora")
                scale_motion = gr.Slider(0, 2, value=1.0, step=0.05, label="Motion LoRA scale")
                lora_note = gr.Markdown(studio.lora_status(trained), elem_id="lora-status")
                reload = gr.Button("Look for newly trained LoRAs", size="sm")
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                    steps = gr.Slider(1, 100, value=studio.settings.steps, step=1, label="Steps", elem_id="steps")
                subtitle = gr.Checkbox(label="Burn the instruction in as a subtitle (shop-floor screen)")
                start = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                video = gr.Video(label="Clip", elem_id="clip", autoplay=True, loop=True, interactive=False,
                                 buttons=["download"])
                download = gr.File(label="Download the clip (H.264 .mp4)", elem_id="download", interactive=False)
        table = gr.Dataframe(headers=CLIP_COLUMNS, label="This session's clips (newest first)", interactive=False,
                             wrap=True, elem_id="clips")
        files = gr.Files(label="This session's clips", elem_id="clip-files", interactive=False)

        make.click(to_prompt, instruction, [status, prompt, auto_prompt], api_name="make_prompt")
        instruction.submit(to_prompt, instruction, [status, prompt, auto_prompt], api_name=False)
        reload.click(lora_lists, None, [image_lora, motion_lora, lora_note], api_name="refresh_loras")
        # Each page opened lists the LoRAs trained since the server started.
        app.load(lora_lists, None, [image_lora, motion_lora, lora_note], api_name=False)
        start.click(generate, [instruction, prompt, auto_prompt, image_lora, motion_lora, scale_image, scale_motion,
                               seed, steps, subtitle, clips],
                    [status, prompt, auto_prompt, video, download, clips, table, files, image_lora, motion_lora,
                     lora_note],
                    api_name="generate", concurrency_limit=1, show_progress_on=[video])  # fmt: skip
    return app


def check_address(host: str, port: int) -> None:
    """Fail early, in the user's words, when ``host:port`` cannot be listened on.

    Raises:
        OSError: the port is taken or the address is not this machine's.
    """
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)
        raise OSError(f"cannot listen on {host}:{port} ({reason}): another program may be using the port; "
                      "choose another with --port") from error


def launch(studio: Studio, host: str = "127.0.0.1", port: int = 7860) -> Any:
    """Start the page's server on ``host:port`` in the background and return the app (``app.block_thread()``
    waits for Ctrl+C, ``app.close()`` stops it). Clips are served from the studio's output folder only."""
    check_address(host, port)
    app = build_app(studio)
    studio.settings.out_dir.mkdir(parents=True, exist_ok=True)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True,
               allowed_paths=[str(studio.settings.out_dir.resolve())], ssr_mode=False, mcp_server=False,
               show_error=True, quiet=True, footer_links=["api"])
    return app
