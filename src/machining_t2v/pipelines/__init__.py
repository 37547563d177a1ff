"""One folder per Kedro pipeline; each pipeline.py only wires nodes."""
