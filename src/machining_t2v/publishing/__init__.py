"""What goes beside the trained LoRAs for people who use them elsewhere: a model card per LoRA and a
ComfyUI workflow for the image + motion LoRA pair. No Kedro import, no file I/O."""
