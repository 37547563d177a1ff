"""LoRA adapters: injecting them, saving them, and every key format they are written in or read from."""
