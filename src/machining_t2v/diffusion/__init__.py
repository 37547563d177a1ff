"""The diffusion side of training: noise schedules, latent and text caches, the loss, validation sampling."""
