"""LoRA adapters: injecting them, saving them and every export format, reading users' LoRA files."""
