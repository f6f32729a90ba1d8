"""Values the command line shares with the generation stage, torch-free so `--help` needs no torch.

`runs.options` builds the flags' defaults and bounds from these; `droplet3d.pipeline` and
`droplet3d.prepare` use the same objects, so the two cannot drift apart.
"""

from __future__ import annotations

# The paper's negative prompt for classifier-free guidance.
DEFAULT_NEGATIVE_PROMPT = "The video is low quality, blurry, distortion. "
MAX_TEXT_TOKENS = 450  # T5's context in the release: 450 tokens (about 2-3 KB of English)

# The published example is on pure black; grey is the mid value of 8-bit colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
}
DEFAULT_BACKGROUND = "black"
# The published panda spans 85% of the frame's height (its longer side).
DEFAULT_FILL = 0.85
MIN_FILL = 0.1  # smaller leaves the model a speck to orbit
MAX_FILL = 1.0  # the object touches the frame's edges
