"""Errors the user can act on. The CLI prints them as one line and exits with code 2."""


class Droplet3DError(Exception):
    """Bad input or environment for the generation stage (missing file, bad size, no CUDA...)."""
