"""The optional model captioner, with a tiny random BLIP built and saved in the test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from machining_t2v.data.captioning import caption_images
from machining_t2v.kedro_glue.datasets import VideoFolderDataset
from machining_t2v.pipelines.captions.nodes import build_captions

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "bar", "on", "lathe", "end", "mill",
         "spinning", "chips", "the", "milling", "turning"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A BLIP captioning model with random weights, saved like any transformers checkpoint."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny-blip")
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    torch.manual_seed(0)
    config = BlipConfig(
        text_config={"vocab_size": len(WORDS), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "pad_token_id": 0,
                     "bos_token_id": WORDS.index("[DEC]"), "sep_token_id": 3, "eos_token_id": 3},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_caption_images_uses_the_model_and_is_deterministic(tiny_blip):
    images = [Image.fromarray(np.full((64, 64, 3), value, np.uint8)) for value in (0, 128, 255)]
    first = caption_images(images, str(tiny_blip), max_new_tokens=5)
    assert len(first) == 3 and all(first)
    assert set(" ".join(first).split()) <= set(WORDS[5:])
    assert caption_images(images, str(tiny_blip), max_new_tokens=5) == first


def test_missing_captioning_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-blip"):
        caption_images([Image.new("RGB", (8, 8))], str(tmp_path / "no-blip"))


def test_captions_node_appends_model_captions_to_the_template(tiny_blip, tmp_path):
    root = tmp_path / "videos"
    (root / "turning").mkdir(parents=True)
    (root / "turning" / "a.mp4").write_bytes(b"captions never decode videos")
    folder = VideoFolderDataset(path=str(root)).load()
    manifest = pd.DataFrame([{"sample_id": "turning__a_still000", "kind": "still", "video": "turning/a.mp4"},
                             {"sample_id": "turning__a_clip000", "kind": "clip", "video": "turning/a.mp4"}])
    still = Image.fromarray(np.full((64, 64, 3), 90, np.uint8))
    clip = np.zeros((4, 64, 64, 3), np.uint8)
    params = {"trigger": "mtv", "template": "{trigger} {process} on a {machine}", "model": str(tiny_blip),
              "max_new_tokens": 4, "defaults": {"machine": "lathe"}}
    captions, _ = build_captions(folder, manifest, {"turning__a_still000": lambda: still},
                                 {"turning__a_clip000": lambda: clip}, params)
    model_text = caption_images([still], str(tiny_blip), max_new_tokens=4)[0]
    assert captions.loc[0, "caption"] == f"mtv turning on a lathe, {model_text}"
    assert set(captions["caption_source"]) == {"folder_template+model"}
