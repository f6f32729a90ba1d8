"""Per-frame appearance compensation (`recon.appearance`): the learnt gains are the frames' exposure,
in the documented gauge, and a fit on drifting frames records them."""

from __future__ import annotations

import numpy as np
import torch

from recon.appearance import AppearanceCorrection


def test_learnt_gains_and_offsets_are_each_frames_exposure_up_to_the_gauge() -> None:
    torch.manual_seed(0)
    n, steps = 4, 600
    colors = torch.rand(1, 8, 8, 3) * 0.8  # premultiplied, fully opaque
    alphas = torch.ones(1, 8, 8, 1)
    # The truth in the gauge (mean log-gain and mean offset zero): with the colours fixed, it is the optimum.
    log_gains = torch.log(torch.tensor([[0.8, 0.9, 1.0], [1.0, 1.0, 1.0], [1.2, 1.1, 0.9], [1.0, 1.05, 1.1]]))
    gains = torch.exp(log_gains - log_gains.mean(0))
    offsets = torch.tensor([[0.02, 0.0, -0.02], [0.0, 0.0, 0.0], [-0.03, 0.01, 0.0], [0.01, -0.01, 0.02]])
    offsets = offsets - offsets.mean(0)
    targets = gains[:, None, None, :] * colors + offsets[:, None, None, :]
    correction = AppearanceCorrection(n, torch.device("cpu"), lr=1e-2, start_step=0)
    for step in range(steps):
        i = step % n
        loss = ((correction.apply(i, colors, alphas) - targets[i : i + 1]) ** 2).mean()
        loss.backward()
        correction.step(step)
    learnt = correction.report()
    # The gauge holds exactly (re-centred every step), not merely near the truth.
    assert torch.stack(correction.log_gains).mean(0).abs().max() < 1e-6
    assert torch.stack(correction.offsets).mean(0).abs().max() < 1e-6
    assert np.allclose(learnt["gain"], gains.numpy(), atol=0.01), learnt["gain"]
    assert np.allclose(learnt["offset"], offsets.numpy(), atol=0.01), learnt["offset"]


def test_a_fit_on_drifting_frames_learns_their_exposure() -> None:
    """Every second frame 25% darker: with `appearance` on, the fit's gains separate the two halves (a
    short fit learns part of the gap: a ratio of about 0.89 for the true 0.75 in 160 steps; with no
    correction learnt, every gain would stay 1)."""
    from recon import synthetic
    from recon.fit import FitConfig, fit
    from recon.poses import OrbitConfig, orbit_cameras

    n, size = 8, 48
    orbit = OrbitConfig(elevation=20.0, fov=40.0)
    c2w = synthetic.orbit_c2w(np.arange(n) * 360.0 / n, orbit.elevation, orbit.radius)
    frames, _ = synthetic.render(c2w, orbit.fov, size, synthetic.tall_textured_scene(), 1, (0.0, 0.0, 0.0))
    dark = np.arange(n) % 2 == 1
    frames[dark] = np.round(frames[dark] * 0.75).astype(np.uint8)
    cfg = FitConfig(iterations=160, resolution=size, device="cpu", init_points=1500, hull_resolution=32,
                    appearance=True)  # fmt: skip
    result = fit(frames, orbit_cameras(n, orbit, size, size), cfg, progress=False)
    gain = np.array(result.appearance["gain"]).mean(1)
    assert gain[dark].max() < gain[~dark].min(), gain
    assert gain[dark].mean() / gain[~dark].mean() < 0.93, gain
