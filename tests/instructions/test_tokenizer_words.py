"""The warning about prompt words the base model's tokenizer does not know, on the real tiny tokenizer."""

from __future__ import annotations

import logging

from machining_t2v.instructions.tokenizer_words import (
    warn_unknown_words,
    words_unknown_to_tokenizer,
)


def test_hangul_is_unknown_to_the_clip_tokenizer_and_warned_about(caplog):
    from machining_t2v.fixtures.tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    prompt = "mtv 엔드밀로 slot milling along X, 알루미늄 workpiece"
    with caplog.at_level(logging.WARNING, logger="machining_t2v"):
        assert warn_unknown_words(tokenizer, prompt) == ["엔드밀로", "알루미늄"]
    assert "does not know these words of the prompt" in caplog.text and "엔드밀로, 알루미늄" in caplog.text


def test_english_words_split_into_pieces_are_still_known():
    """CLIP's BPE spells a rare English word ("mtv", "titanium") from sub-word pieces: not unknown."""
    from machining_t2v.fixtures.tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    prompt = "mtv pocket milling in a circle on a milling machine, titanium workpiece, spinning end mill"
    assert words_unknown_to_tokenizer(tokenizer, prompt) == []
    assert words_unknown_to_tokenizer(tokenizer, "café crème") == ["café", "crème"]


def test_a_clean_prompt_logs_nothing(caplog):
    from machining_t2v.fixtures.tiny_model import build_tiny_tokenizer

    with caplog.at_level(logging.WARNING, logger="machining_t2v"):
        assert warn_unknown_words(build_tiny_tokenizer(), "mtv face the bar on a lathe") == []
    assert caplog.text == ""


def test_the_generate_pipeline_node_warns_about_unknown_words(tiny_dir, caplog):
    """Every entry point warns, not only the console script: here the ``generate`` pipeline's node."""
    import yaml

    from machining_t2v.models.loading import load_base_model, load_motion_adapter
    from machining_t2v.pipelines.generate.nodes import generate_clip

    from ..conftest import PROJECT_ROOT

    params = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_generate.yml").read_text())["generate"]
    params = {**params, "prompt": "선반에서 황동 봉을 외경 선삭", "num_frames": 2, "num_inference_steps": 1,
              "use_image_lora": False, "use_motion_lora": False}
    base_model = {"pretrained": str(tiny_dir), "motion_adapter": str(tiny_dir / "motion_adapter")}
    with caplog.at_level(logging.WARNING, logger="machining_t2v"):
        videos, record = generate_clip(None, None, load_base_model(str(tiny_dir)),
                                       load_motion_adapter(str(tiny_dir / "motion_adapter")), base_model, "mtv", params)
    assert record["prompt"] == "mtv 선반에서 황동 봉을 외경 선삭"
    warnings = [r.getMessage() for r in caplog.records if "does not know these words" in r.getMessage()]
    assert len(warnings) == 1 and "선반에서, 황동, 봉을, 외경, 선삭" in warnings[0]
