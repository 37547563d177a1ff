"""Pre-run checks on a base model's configs (machining_t2v.models.checks)."""

from __future__ import annotations

from machining_t2v.models.checks import native_resolution, warn_if_low_resolution


def test_training_under_half_the_native_resolution_warns_naming_both_numbers(caplog):
    # SD1.5's configs: a 64-latent UNet and a VAE with four blocks (three 2x downsamplings).
    unet_config = {"sample_size": 64}
    vae_config = {"block_out_channels": [128, 256, 512, 512]}
    assert native_resolution(unet_config, vae_config) == 512
    with caplog.at_level("WARNING", logger="machining_t2v.models.checks"):
        assert warn_if_low_resolution(unet_config, vae_config, 128, "motion LoRA training")
    message = caplog.records[-1].getMessage()
    assert "motion LoRA training runs at 128 px, under half the base model's native 512 px" in message
    caplog.clear()
    with caplog.at_level("WARNING", logger="machining_t2v.models.checks"):
        assert not warn_if_low_resolution(unet_config, vae_config, 256, "motion LoRA training")
        assert not warn_if_low_resolution(unet_config, vae_config, 512, "image LoRA training")
    assert not caplog.records
    # The starter and the tiny model are native at 64 px: their 64 px default never warns.
    assert not warn_if_low_resolution({"sample_size": 8}, {"block_out_channels": [16, 32, 32, 32]}, 64, "x")

