"""Loading a base model (SD1.5 layout) and its motion adapter, and checking where they come from."""
