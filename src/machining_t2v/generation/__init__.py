"""Text-to-video generation with a base model and the trained LoRAs (the `generate` CLI and pipeline)."""
