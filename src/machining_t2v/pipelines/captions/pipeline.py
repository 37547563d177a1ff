"""``captions`` pipeline: frame manifest + raw folder captions -> captions table (+ kohya sidecars)."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_captions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                build_captions,
                inputs=["raw_videos", "frame_manifest", "stills", "clips", "params:captions"],
                outputs=["captions", "still_caption_sidecars"],
                name="build_captions",
            )
        ]
    )
