"""Caption precedence: sidecar .txt > metadata caption > metadata template > folder-name template."""

from __future__ import annotations

import pandas as pd
import pytest

from machining_t2v.kedro_glue.datasets import VideoFolderDataset
from machining_t2v.pipelines.captions.nodes import build_captions
from tests.conftest import run_pipeline, write_test_video

PARAMS = {
    "trigger": "mtv",
    "template": "{trigger} {operation} {process} on a {machine}, {material} workpiece",
    "defaults": {"process": "machining", "operation": "", "machine": "machine tool", "material": "metal"},
    "model": None,
    "write_sidecars": True,
}


@pytest.fixture
def captioned_folder(tmp_path):
    root = tmp_path / "videos"
    for name in ["a_sidecar.mp4", "b_meta_caption.mp4", "c_meta_fields.mp4", "turning/d_folder.mp4",
                 "e_nothing.mp4"]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"placeholder: captions never decode videos")
    (root / "a_sidecar.txt").write_text("face the steel bar on the lathe\n")
    (root / "metadata.csv").write_text(
        "file,caption,process,operation,machine,material\n"
        "a_sidecar.mp4,metadata loses to the sidecar,,,,\n"
        "b_meta_caption.mp4,mtv rough-mill the pocket,,,,\n"
        "c_meta_fields.mp4,,milling,slot,vertical mill,aluminium\n"
    )
    return VideoFolderDataset(path=str(root)).load()


def manifest_for(folder):
    rows = []
    for video in folder.videos:
        stem = video.name.rsplit(".", 1)[0].replace("/", "__")
        rows += [{"sample_id": f"{stem}_still000", "kind": "still", "video": video.name},
                 {"sample_id": f"{stem}_clip000", "kind": "clip", "video": video.name}]
    return pd.DataFrame(rows)


def test_caption_precedence_and_trigger(captioned_folder):
    captions, sidecars = build_captions(captioned_folder, manifest_for(captioned_folder), {}, {}, PARAMS)
    by_video = captions.drop_duplicates("video").set_index("video")
    assert by_video.loc["a_sidecar.mp4", "caption"] == "mtv face the steel bar on the lathe"
    assert by_video.loc["a_sidecar.mp4", "caption_source"] == "sidecar"
    # The trigger is not doubled when the caption already has it.
    assert by_video.loc["b_meta_caption.mp4", "caption"] == "mtv rough-mill the pocket"
    assert by_video.loc["c_meta_fields.mp4", "caption"] == "mtv slot milling on a vertical mill, aluminium workpiece"
    assert by_video.loc["c_meta_fields.mp4", "caption_source"] == "metadata_template"
    assert by_video.loc["turning/d_folder.mp4", "caption"] == "mtv turning on a machine tool, metal workpiece"
    assert by_video.loc["turning/d_folder.mp4", "caption_source"] == "folder_template"
    assert by_video.loc["e_nothing.mp4", "caption"] == "mtv machining on a machine tool, metal workpiece"
    # Every still and clip gets its video's caption; sidecars only for stills.
    assert len(captions) == 10
    assert set(sidecars) == {s for s in captions["sample_id"] if "_still" in s}
    assert sidecars["a_sidecar_still000"] == "mtv face the steel bar on the lathe"


def test_no_trigger_and_no_sidecars(captioned_folder):
    params = {**PARAMS, "trigger": "", "template": "{process} on a {machine}", "write_sidecars": False}
    captions, sidecars = build_captions(captioned_folder, manifest_for(captioned_folder), {}, {}, params)
    assert sidecars == {}
    assert captions.set_index("video").loc["e_nothing.mp4", "caption"].iloc[0] == "machining on a machine tool"


def test_unknown_template_field_is_a_clear_error(captioned_folder):
    with pytest.raises(ValueError, match="uses 'spindle'"):
        build_captions(captioned_folder, manifest_for(captioned_folder), {}, {},
                       {**PARAMS, "template": "{trigger} {spindle}"})


def test_empty_manifest_names_the_upstream_dataset(captioned_folder):
    with pytest.raises(ValueError, match="frame_manifest is empty"):
        build_captions(captioned_folder, pd.DataFrame(columns=["sample_id", "kind", "video"]), {}, {}, PARAMS)


def test_captions_pipeline_writes_table_and_sidecars(project):
    videos = project / "data/01_raw/videos"
    write_test_video(videos / "milling" / "a.mp4", num_frames=30)
    (videos / "milling" / "a.txt").write_text("mill the pocket")
    run_pipeline(project, "frames")
    run_pipeline(project, "captions", params={"captions": {"write_sidecars": True}})
    captions = pd.read_csv(project / "data/05_model_input/captions.csv")
    assert set(captions["caption"]) == {"mtv mill the pocket"}
    sidecars = sorted((project / "data/05_model_input/stills").glob("*.txt"))
    assert len(sidecars) == 4 and sidecars[0].read_text() == "mtv mill the pocket"
