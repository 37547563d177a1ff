"""The noise-prediction loss's pieces: the timesteps it draws and MotionDirector's appearance debiasing."""

from __future__ import annotations

import pytest
import torch

from machining_t2v.diffusion.loss import LossConfig, appearance_debiased, draw_timesteps
from machining_t2v.training import LossRandomness


def test_top_timestep_share_draws_that_share_from_the_noisiest_timesteps():
    def draws(share: float) -> torch.Tensor:
        return draw_timesteps(LossRandomness(0, 1, 0, range(512)), 1000, LossConfig(top_timestep_share=share))

    # No share draws nothing more: a run without it draws exactly what it drew before the option.
    assert torch.equal(draws(0.0), LossRandomness(0, 1, 0, range(512)).randint(1000))
    everything_top = draws(1.0)
    assert int(everything_top.min()) >= 900 and int(everything_top.max()) <= 999
    assert len(set(everything_top.tolist())) > 90  # spread over the whole window, not one timestep
    # Half from the top 100, the other half uniform (a tenth of which lands there too): 55% expected.
    assert 0.48 < float((draws(0.5) >= 900).float().mean()) < 0.62
    assert 0.05 < float((draws(0.0) >= 900).float().mean()) < 0.15
    with pytest.raises(ValueError, match="top_timestep_share"):
        LossConfig(top_timestep_share=1.5)


def test_appearance_debiased_matches_hand_computation():
    noise = torch.arange(2 * 1 * 3 * 1 * 2, dtype=torch.float32).reshape(2, 1, 3, 1, 2)
    anchor = torch.tensor([0, 2])
    out = appearance_debiased(noise, beta=1.0, anchor=anchor)
    root2 = 2**0.5
    # Clip 0, channel 0, frame 1: sqrt(2) * e_1 - e_0 = sqrt(2) * [2, 3] - [0, 1]
    torch.testing.assert_close(out[0, 0, 1, 0], torch.tensor([2 * root2, 3 * root2 - 1]))
    # Clip 1 anchors on frame 2 ([10, 11]); frame 0 is [6, 7].
    torch.testing.assert_close(out[1, 0, 0, 0], torch.tensor([6 * root2 - 10, 7 * root2 - 11]))
    # beta = 0 leaves the noise unchanged.
    torch.testing.assert_close(appearance_debiased(noise, beta=0.0, anchor=anchor), noise)
