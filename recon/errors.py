"""Errors the user can act on. The CLI prints them as one line and exits with code 2."""


class ReconError(Exception):
    """Bad input for the pose or reconstruction stages (unreadable video, bad orbit values...)."""
