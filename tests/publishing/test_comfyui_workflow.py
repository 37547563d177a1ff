"""The ComfyUI workflow: the node classes of ComfyUI, AnimateDiff-Evolved and VideoHelperSuite, wired
output to input with matching types, carrying the LoRA files, prompt and sampler settings."""

from __future__ import annotations

import json

import pytest

from machining_t2v.publishing.comfyui_workflow import WorkflowSettings, comfyui_workflow

from .comfyui_checks import referenced_files, workflow_problems

SETTINGS = WorkflowSettings(
    checkpoint="v1-5-pruned-emaonly.safetensors", motion_module="mm_sd15_v3.safetensors",
    motion_lora_file="motion_lora_animatediff.safetensors", motion_lora_scale=0.9,
    image_lora_file="image_lora_kohya.safetensors", image_lora_scale=0.8,
    prompt="mtv face the bar on a lathe", negative_prompt="blurry", num_frames=16, size=512, steps=25,
    guidance_scale=7.5, seed=3, sampler="ddim", beta_schedule="linear",
)  # fmt: skip


def by_class(workflow: dict) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node_id, node in workflow.items():
        found.setdefault(node["class_type"], []).append(node_id)
    return found


def upstream(workflow: dict, node_id: str, name: str) -> dict:
    return workflow[workflow[node_id]["inputs"][name][0]]


def test_the_pair_workflow_is_sound_and_uses_the_expected_classes():
    workflow = comfyui_workflow(SETTINGS)
    assert workflow_problems(workflow) == []
    assert set(by_class(workflow)) == {
        "CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "ADE_AnimateDiffLoRALoader", "ADE_LoadAnimateDiffModel",
        "ADE_ApplyAnimateDiffModelSimple", "ADE_UseEvolvedSampling", "EmptyLatentImage", "KSampler", "VAEDecode",
        "VHS_VideoCombine"}
    assert json.loads(json.dumps(workflow)) == workflow  # plain JSON, as ComfyUI reads it
    assert referenced_files(workflow) == {"image_lora_kohya.safetensors": "loras",
                                          "motion_lora_animatediff.safetensors": "animatediff_motion_lora"}


def test_the_sampler_runs_the_checkpoint_through_the_image_lora_and_the_motion_module():
    workflow = comfyui_workflow(SETTINGS)
    (sampler,) = by_class(workflow)["KSampler"]
    evolved = upstream(workflow, sampler, "model")
    assert evolved["class_type"] == "ADE_UseEvolvedSampling"
    assert evolved["inputs"]["beta_schedule"] == "sqrt_linear (AnimateDiff)"  # AnimateDiff's linear betas
    lora = workflow[evolved["inputs"]["model"][0]]
    assert lora["class_type"] == "LoraLoader" and lora["inputs"]["strength_model"] == 0.8
    assert workflow[lora["inputs"]["model"][0]]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    applied = workflow[evolved["inputs"]["m_models"][0]]
    motion_lora = workflow[applied["inputs"]["motion_lora"][0]]["inputs"]
    assert motion_lora == {"name": "motion_lora_animatediff.safetensors", "strength": 0.9}
    assert workflow[applied["inputs"]["motion_model"][0]]["inputs"]["model_name"] == "mm_sd15_v3.safetensors"
    positive, negative = upstream(workflow, sampler, "positive"), upstream(workflow, sampler, "negative")
    assert (positive["inputs"]["text"], negative["inputs"]["text"]) == ("mtv face the bar on a lathe", "blurry")
    assert positive["inputs"]["clip"] == [next(i for i, n in workflow.items() if n["class_type"] == "LoraLoader"), 1]
    latent = upstream(workflow, sampler, "latent_image")["inputs"]
    assert latent == {"width": 512, "height": 512, "batch_size": 16}  # one latent per frame
    inputs = workflow[sampler]["inputs"]
    assert (inputs["seed"], inputs["steps"], inputs["cfg"], inputs["sampler_name"]) == (3, 25, 7.5, "ddim")
    (video,) = by_class(workflow)["VHS_VideoCombine"]
    assert workflow[video]["inputs"]["format"] == "image/gif" and workflow[video]["inputs"]["frame_rate"] == 8.0


def test_without_an_image_lora_the_checkpoint_feeds_the_motion_module_directly():
    workflow = comfyui_workflow(WorkflowSettings(**{**SETTINGS.__dict__, "image_lora_file": None, "sampler": "euler"}))
    assert workflow_problems(workflow) == []
    assert "LoraLoader" not in by_class(workflow)
    (sampler,) = by_class(workflow)["KSampler"]
    model = upstream(workflow, sampler, "model")["inputs"]["model"]
    assert workflow[model[0]]["class_type"] == "CheckpointLoaderSimple" and model[1] == 0
    assert workflow[sampler]["inputs"]["sampler_name"] == "euler"
    assert referenced_files(workflow) == {"motion_lora_animatediff.safetensors": "animatediff_motion_lora"}


def test_the_check_finds_a_broken_link_and_a_wrong_type():
    workflow = comfyui_workflow(SETTINGS)
    (sampler,) = by_class(workflow)["KSampler"]
    (checkpoint,) = by_class(workflow)["CheckpointLoaderSimple"]
    workflow[sampler]["inputs"]["positive"] = ["99", 0]
    workflow[sampler]["inputs"]["negative"] = [checkpoint, 1]
    problems = workflow_problems(workflow)
    assert any("missing node 99" in p for p in problems) and any("wants CONDITIONING" in p for p in problems)


@pytest.mark.parametrize(("field", "value"), [("sampler", "unipc"), ("beta_schedule", "cosine")])
def test_settings_without_a_comfyui_counterpart_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"{field} '{value}'"):
        comfyui_workflow(WorkflowSettings(**{**SETTINGS.__dict__, field: value}))
