"""``sample_data`` pipeline: renders the built-in milling/turning videos into an empty raw folder."""

from kedro.pipeline import Node, Pipeline

from .nodes import render_sample_videos


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [Node(render_sample_videos, inputs="params:sample_data", outputs="raw_videos", name="render_sample_videos")]
    )
