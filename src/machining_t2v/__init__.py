"""Fine-tune Stable Diffusion 1.5 + AnimateDiff on machine-tool process videos."""
__version__ = "0.1.0"
