"""Poses, Gaussian-splat fitting and asset export for orbit videos with known circular poses."""
