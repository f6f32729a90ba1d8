"""Droplet3D generation stage: image + dense text -> 360-degree orbit video."""
