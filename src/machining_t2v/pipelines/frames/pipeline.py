"""``frames`` pipeline: raw videos -> still frames, clips, manifest and skipped-video report."""

from kedro.pipeline import Node, Pipeline

from .nodes import extract_frames_and_clips


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                extract_frames_and_clips,
                inputs=["raw_videos", "params:frames"],
                outputs=["stills", "clips", "frame_manifest", "skipped_videos"],
                name="extract_frames_and_clips",
            )
        ]
    )
