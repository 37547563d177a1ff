"""The page's work without a browser: instructions made into prompts, clips generated with the chosen
LoRAs, and each bad input answered with a clear message while the studio keeps working."""

from __future__ import annotations

import shutil

import pytest

from machining_t2v.data.video_io import probe_video, read_frames
from machining_t2v.webapp.studio import ClipRequest, Studio
from machining_t2v.webapp.subtitles import MIN_WIDTH
from tests.webapp.conftest import FAST_STEPS, KOREAN_SLOT, SLOT_PROMPT, copy_loras, settings_for


def clip(studio: Studio, instruction: str = KOREAN_SLOT, **fields):
    return studio.generate(ClipRequest(instruction, steps=FAST_STEPS, **fields))


@pytest.mark.parametrize("instruction, message", [
    ("   ", "**No prompt:** the instruction is empty: say what to machine"),
    ("hello 안녕하세요", "**No prompt:** no machining term of the glossary"),
    ("밀링 " * 700, "**No prompt:** the instruction is 2099 characters long; give one work step of at most 500"),
    ("드릴로 구멍을 뚫는다", "**No prompt:** drilling is a process no LoRA has learned (trained: milling, turning)"),
])
def test_bad_instructions_get_a_message_and_no_clip(studio, instruction, message):
    answer = studio.make_prompt(instruction)
    assert (answer.ok, answer.prompt) == (False, "") and answer.message.startswith(message), answer.message
    result = clip(studio, instruction)
    assert result.mp4 is None and result.message == answer.message
    assert not studio.settings.out_dir.exists() or not any(studio.settings.out_dir.iterdir())


def test_unknown_words_only_are_named_in_the_message(studio):
    assert studio.make_prompt("반짝반짝 hello").message.endswith("(not in the glossary: 반짝반짝, hello).")


def test_a_mixed_korean_and_english_instruction_becomes_the_captions_prompt(studio):
    answer = studio.make_prompt("엔드밀 slot milling 알루미늄 블록 X축")
    assert (answer.ok, answer.prompt, answer.message) == (True, SLOT_PROMPT, "")
    noted = studio.make_prompt("엔드밀로 반짝반짝 슬롯 가공")
    assert noted.ok and noted.message == "Not in the glossary, left out: 반짝반짝."


def test_without_trained_loras_the_page_says_so_and_generates_with_the_base_model(studio):
    status = studio.lora_status(studio.trained_loras())
    assert status.startswith("No LoRA is trained yet: the clips come from the base model alone. `make run`")
    steps = []
    result = studio.generate(ClipRequest(KOREAN_SLOT, steps=FAST_STEPS),
                             on_step=lambda done, total: steps.append((done, total)))
    assert result.prompt == SLOT_PROMPT and result.mp4 is not None and result.mp4.parent == studio.settings.out_dir
    assert steps == [(1, 2), (2, 2)]  # the page's progress bar follows the denoising
    assert result.message.startswith("**Done:** 4 frames, 64x64 px, 2 steps, seed 0, image LoRA none, motion LoRA none.")
    info = probe_video(result.mp4)
    assert (info.num_frames, info.width, info.height) == (4, 64, 64)
    assert result.record["instruction"] == KOREAN_SLOT and result.record["file"] == str(result.mp4)


def test_the_chosen_loras_change_the_clip_and_none_gives_the_base_models_clip_again(tiny_dir, tmp_path,
                                                                                    trained_loras):
    loras = copy_loras(trained_loras, tmp_path / "06_models")
    studio = Studio(settings_for(tiny_dir, tmp_path))
    assert studio.lora_status(studio.trained_loras()) == ""
    base = clip(studio)
    both = clip(studio, image_lora=str(loras["image"]), motion_lora=str(loras["motion"]), scale_image=0.5)
    again = clip(studio)
    assert "image LoRA image_lora x0.5, motion LoRA motion_lora x1" in both.message
    frames = [read_frames(result.mp4, [0, 3]) for result in (base, both, again)]
    assert (frames[0] != frames[1]).any()
    assert (frames[0] == frames[2]).all()  # the LoRAs were unloaded, not just left in


def test_a_lora_folder_deleted_while_the_page_is_open_gets_a_message_and_the_next_clip_works(tiny_dir, tmp_path,
                                                                                              trained_loras):
    loras = copy_loras(trained_loras, tmp_path / "06_models")
    studio = Studio(settings_for(tiny_dir, tmp_path))
    assert clip(studio, image_lora=str(loras["image"])).mp4 is not None
    shutil.rmtree(loras["image"])
    gone = clip(studio, image_lora=str(loras["image"]))
    assert gone.mp4 is None and gone.lora_gone
    assert gone.message.startswith(f"**No clip:** the image LoRA {loras['image']} is gone (deleted or moved")
    assert [choice.kind for choice in studio.trained_loras().choices] == ["motion"]  # what the refreshed list offers
    assert clip(studio, motion_lora=str(loras["motion"])).mp4 is not None


def test_an_edited_prompt_is_kept_and_an_untouched_one_follows_the_instruction(studio):
    edited = clip(studio, prompt="mtv face the bar on a lathe", auto_prompt=SLOT_PROMPT)
    assert edited.prompt == "mtv face the bar on a lathe"
    remade = clip(studio, "face the steel bar on the lathe", prompt=SLOT_PROMPT, auto_prompt=SLOT_PROMPT)
    assert remade.prompt.startswith("mtv face the bar on a lathe, steel bar")
    typed_only = clip(studio, "", prompt="mtv slot milling")
    assert typed_only.prompt == "mtv slot milling" and typed_only.mp4 is not None


def test_the_subtitle_is_burnt_in_under_an_enlarged_picture(studio):
    result = clip(studio, subtitle=True)
    info = probe_video(result.mp4)
    assert info.width == MIN_WIDTH and info.height > MIN_WIDTH
