"""Values the command line shares with the reconstruction stage, torch-free so `--help` needs no torch.

`runs.options` builds the flags' bounds from these; `recon.poses`, `recon.asset` and `recon.config` check
the same objects, so the two cannot drift apart.
"""

from __future__ import annotations

# The nearest camera distance an orbit may have, world units. The rasterisers clip everything nearer than
# 0.01 (gsplat's near plane); the object spans about 0.6 of the distance at the preset's framing, so a
# camera much closer than this puts the object's near side behind the clip plane and the fit has nothing
# to render (`--radius 1e-9` ended in a traceback inside the fit). 0.05 reconstructs.
MIN_RADIUS = 0.05
# Smallest face budget and texture that still make a recognisable asset; below that is a typo.
MIN_FACES = 100
MIN_TEXTURE_SIZE = 64
MAX_TEXTURE_SIZE = 8192  # 8192^2 texels x 3 bytes = 200 MB, and the bake holds a 3D point per texel
# The texture's side is capped at this many times the frames' longest side. Measured (bench_export, 21
# frames of 128 px, held-out glb PSNR at 256 px): textures of 512, 1024 and 2048 gave 23.76, 23.77 and
# 23.77 dB, and the export took 17, 20 and 29 s. Again at the 16k-face budget (bench_glb_gap.py
# --textures; training / odd / above / below): 1024 23.50 / 23.02 / 22.33 / 20.77 dB in 6.5 s, 512 the
# same in 5.0 s, 256 23.46 / 22.99 / 22.32 / 20.78. So 4; Droplet3D's 512 px frames keep 2048.
TEXELS_PER_FRAME_PIXEL = 4
# The face budget is capped at this many faces per pixel of one frame (a --faces or config value stays as
# given). Small frames show no more surface than that: 21 frames of 128 px (benchmarks/bench_glb_gap.py;
# held-out glb PSNR at the odd frames / above / below) gave 23.02 / 22.33 / 20.78 dB at 50k faces,
# 23.02 / 22.32 / 20.78 at 25k and 23.02 / 22.34 / 20.78 at 12k, and the export took 15.0, 8.2 and 7.0 s
# (xatlas is most of it). Frames of 224 px and more keep the 50k default.
FACES_PER_FRAME_PIXEL = 1.0
MAX_SEED = 2**32 - 1  # seeds: the range numpy's and torch's generators both accept
# The fit's bounds (a --config file's "fit" section and the flags are both checked against these).
MAX_ITERATIONS = 1_000_000
MIN_FIT_RESOLUTION = 16
MAX_FIT_RESOLUTION = 4096
MAX_SH_DEGREE = 3  # gsplat's spherical harmonics go to degree 3
# The viewer page written beside every asset (`recon.viewer`), which `droplet3d view` serves.
VIEWER_FILE = "viewer.html"
