"""Per-frame appearance compensation: each frame's exposure and white balance, learnt with the splats.

A generated orbit drifts in exposure and colour from frame to frame (the video model has no notion of a
fixed camera response). Fitting one set of colours to all frames then averages the drift into the asset
as view-dependent colour (higher SH bands spent on exposure) and blotches. Here each frame carries a
per-channel gain and offset, applied to the splats' premultiplied colour before it is composited over
the frame's own background (which already has the frame's exposure, being read from the frame):

    colour_i = exp(log_gain_i) * colour + offset_i * alpha

The asset keeps the splats' colours only: the corrections exist for the training views and are not
exported. Why per-channel gain and offset rather than nerfstudio's appearance embeddings or a bilateral
grid: an orbit's frames differ by a global camera response, not by local lighting, and six numbers a
frame cannot learn the object's shape or texture (an embedding with a decoder can, and then the asset
loses what the frames share).

The gauge: a gain common to every frame and a brighter asset are the same picture, so after every step
the mean log-gain and the mean offset over the frames are projected to zero. The asset's colours are
then the frames' average exposure.

Each frame is rendered only every N-th step, so, as in `recon.pose_refine`, every frame has its own
tensor: Adam then moves a frame's correction only on the steps that saw it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class AppearanceCorrection:
    """Per-frame, per-channel log-gain and offset [N, 3] each, with their own Adam."""

    def __init__(self, n: int, device: torch.device, lr: float, start_step: int) -> None:
        self.log_gains = [torch.zeros(3, device=device, requires_grad=True) for _ in range(n)]
        self.offsets = [torch.zeros(3, device=device, requires_grad=True) for _ in range(n)]
        self.optimizer = torch.optim.Adam([*self.log_gains, *self.offsets], lr=lr, eps=1e-15)
        self.start_step = start_step

    def apply(self, i: int, colors: Tensor, alphas: Tensor) -> Tensor:
        """Frame `i`'s premultiplied colours [B, H, W, 3] with its gain and offset (differentiable)."""
        return torch.exp(self.log_gains[i]) * colors + self.offsets[i] * alphas

    def step(self, step: int) -> None:
        """Apply this step's gradients (none before `start_step`), re-centre the gauge, clear them."""
        if step >= self.start_step:
            self.optimizer.step()
            with torch.no_grad():
                for group in (self.log_gains, self.offsets):
                    mean = torch.stack(group).mean(0)
                    for t in group:
                        t -= mean
        self.optimizer.zero_grad(set_to_none=True)

    def report(self) -> dict[str, list[list[float]]]:
        """Every frame's gain and offset (RGB), for report.json."""
        with torch.no_grad():
            gains = torch.exp(torch.stack(self.log_gains)).cpu().numpy()
            offsets = torch.stack(self.offsets).cpu().numpy()
        return {"gain": np.round(gains, 4).tolist(), "offset": np.round(offsets, 4).tolist()}
