"""Scoring generated clips: optical flow, video metrics, CLIP scores, the starter's in-world evaluator, the report."""
