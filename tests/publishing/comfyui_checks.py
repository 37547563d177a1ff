"""What ComfyUI and its two node packs declare for the nodes a workflow of ours uses, and a check of a
workflow against it (shared by the publishing tests and the end-to-end evaluation test).

The tables are written from the nodes' ``INPUT_TYPES`` / ``RETURN_TYPES`` in ComfyUI (``nodes.py``),
ComfyUI-AnimateDiff-Evolved (Gen2 nodes, ``nodes_gen2.py``, ``nodes_lora.py``) and
ComfyUI-VideoHelperSuite (``VHS_VideoCombine``).
"""

from __future__ import annotations

from pathlib import Path

OUTPUTS = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "LoraLoader": ("MODEL", "CLIP"),
    "CLIPTextEncode": ("CONDITIONING",),
    "ADE_AnimateDiffLoRALoader": ("MOTION_LORA",),
    "ADE_LoadAnimateDiffModel": ("MOTION_MODEL_ADE",),
    "ADE_ApplyAnimateDiffModelSimple": ("M_MODELS",),
    "ADE_UseEvolvedSampling": ("MODEL",),
    "EmptyLatentImage": ("LATENT",),
    "KSampler": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "VHS_VideoCombine": ("VHS_FILENAMES",),
}
# Inputs fed by a link: the type they take, and whether they are required.
LINKED = {
    "LoraLoader": {"model": ("MODEL", True), "clip": ("CLIP", True)},
    "CLIPTextEncode": {"clip": ("CLIP", True)},
    "ADE_AnimateDiffLoRALoader": {"prev_motion_lora": ("MOTION_LORA", False)},
    "ADE_ApplyAnimateDiffModelSimple": {"motion_model": ("MOTION_MODEL_ADE", True), "motion_lora": ("MOTION_LORA", False)},
    "ADE_UseEvolvedSampling": {"model": ("MODEL", True), "m_models": ("M_MODELS", False)},
    "KSampler": {"model": ("MODEL", True), "positive": ("CONDITIONING", True), "negative": ("CONDITIONING", True),
                 "latent_image": ("LATENT", True)},
    "VAEDecode": {"samples": ("LATENT", True), "vae": ("VAE", True)},
    "VHS_VideoCombine": {"images": ("IMAGE", True)},
}
# Inputs given as values (widgets); all required.
WIDGETS = {
    "CheckpointLoaderSimple": {"ckpt_name"},
    "LoraLoader": {"lora_name", "strength_model", "strength_clip"},
    "CLIPTextEncode": {"text"},
    "ADE_AnimateDiffLoRALoader": {"name", "strength"},
    "ADE_LoadAnimateDiffModel": {"model_name"},
    "ADE_UseEvolvedSampling": {"beta_schedule"},
    "EmptyLatentImage": {"width", "height", "batch_size"},
    "KSampler": {"seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"},
    "VHS_VideoCombine": {"frame_rate", "loop_count", "filename_prefix", "format", "pingpong", "save_output"},
}
# ComfyUI's model folders of the file-name widgets, as a LoRA folder of ours holds them.
FILE_WIDGETS = {("LoraLoader", "lora_name"): "loras", ("ADE_AnimateDiffLoRALoader", "name"): "animatediff_motion_lora"}


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def workflow_problems(workflow: dict) -> list[str]:
    """Every way ``workflow`` (API format) breaks the declarations above; [] when it is sound."""
    problems = []
    for node_id, node in workflow.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind not in OUTPUTS:
            problems.append(f"{node_id}: unknown class {kind}")
            continue
        linked, widgets = LINKED.get(kind, {}), WIDGETS.get(kind, set())
        for name in set(inputs) - set(linked) - widgets:
            problems.append(f"{node_id} {kind}: unknown input {name}")
        for name in widgets - set(inputs):
            problems.append(f"{node_id} {kind}: missing widget {name}")
        for name in widgets & set(inputs):
            if is_link(inputs[name]):
                problems.append(f"{node_id} {kind}: widget {name} given a link")
        for name, (wanted, required) in linked.items():
            if name not in inputs:
                if required:
                    problems.append(f"{node_id} {kind}: missing input {name}")
                continue
            if not is_link(inputs[name]):
                problems.append(f"{node_id} {kind}: {name} is not a link")
                continue
            source, index = inputs[name]
            if source not in workflow:
                problems.append(f"{node_id} {kind}: {name} links to missing node {source}")
                continue
            outputs = OUTPUTS.get(workflow[source]["class_type"], ())
            if index >= len(outputs) or outputs[index] != wanted:
                problems.append(f"{node_id} {kind}: {name} wants {wanted}, gets output {index} of "
                                f"{workflow[source]['class_type']}")
    return problems


def referenced_files(workflow: dict) -> dict[str, str]:
    """``{file name: ComfyUI model folder}`` of the LoRA files the workflow loads."""
    return {node["inputs"][widget]: folder for node in workflow.values()
            for (kind, widget), folder in FILE_WIDGETS.items() if node["class_type"] == kind}


def missing_files(workflow: dict, folders: dict[str, Path]) -> list[str]:
    """The LoRA files the workflow names that are not in ``folders`` (ComfyUI folder -> our LoRA folder)."""
    return [name for name, folder in referenced_files(workflow).items() if not (folders[folder] / name).is_file()]
