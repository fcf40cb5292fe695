"""Torch layer that turns bit-packed BEV observations back into float masks, in front of an encoder."""

from __future__ import annotations

import torch


class UnpackBits(torch.nn.Module):
    """(B, ceil(C/8), H, W) uint8 -> (B, C, H, W) float32 in {0, 1}; channel 0 is each byte's top bit
    (numpy.packbits order). Runs on whatever device the input is on."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.register_buffer(
            "shifts", torch.arange(7, -1, -1, dtype=torch.uint8).view(1, 1, 8, 1, 1), persistent=False
        )

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        b, nbytes, h, w = packed.shape
        bits = (packed.to(torch.uint8).unsqueeze(2) >> self.shifts) & 1  # (B, bytes, 8, H, W)
        return bits.reshape(b, nbytes * 8, h, w)[:, : self.channels].float()
