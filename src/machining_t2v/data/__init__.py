"""Reading the shop's videos, captioning frames, and the synthetic sample videos."""
