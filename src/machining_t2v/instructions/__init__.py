"""Work instructions (Korean or English) made into prompts in the training captions' words."""
