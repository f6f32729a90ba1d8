"""Mesh files in the asset frame: mesh.glb (glTF 2.0 binary), mesh.obj + mesh.mtl + texture, mesh.ply.

Colour spaces, as each format defines them:

* glTF ``baseColorTexture`` is sRGB-encoded: the baked texture (sRGB like the input frames) is written
  as is, in a PNG.
* glTF ``COLOR_0`` is **linear**: vertex colours are converted from sRGB before writing, or viewers
  (Blender, three.js) would show them washed out.
* OBJ/MTL and PLY have no colour-space rule; DCC tools read their 8-bit colours and ``map_Kd`` images
  as sRGB, so they get the sRGB values.

The material is glTF PBR metallic-roughness with metallic 0 and a high roughness: the baked colour
already contains the orbit's lighting, and a rough dielectric adds the least extra sheen on top. It is
double-sided: a fused TSDF surface can have inward-wound patches, which a viewer's back-face culling
would otherwise punch out as holes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MATERIAL_NAME = "droplet3d"
TEXTURE_NAME = "mesh_texture.png"
# sRGB transfer function constants (IEC 61966-2-1).
SRGB_LINEAR_KNEE = 0.04045
SRGB_SLOPE = 12.92
SRGB_OFFSET = 0.055
SRGB_GAMMA = 2.4


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in 0..1 to linear light in 0..1 (the exact piecewise curve)."""
    c = np.asarray(colors, dtype=np.float64)
    return np.where(
        c <= SRGB_LINEAR_KNEE, c / SRGB_SLOPE, ((c + SRGB_OFFSET) / (1 + SRGB_OFFSET)) ** SRGB_GAMMA
    )


def linear_to_srgb(colors: np.ndarray) -> np.ndarray:
    """Linear light in 0..1 to sRGB-encoded values in 0..1 (inverse of `srgb_to_linear`)."""
    c = np.clip(np.asarray(colors, dtype=np.float64), 0.0, 1.0)
    knee = SRGB_LINEAR_KNEE / SRGB_SLOPE
    return np.where(c <= knee, c * SRGB_SLOPE, (1 + SRGB_OFFSET) * c ** (1 / SRGB_GAMMA) - SRGB_OFFSET)


def textured_mesh(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, normals: np.ndarray, texture: np.ndarray,
    roughness: float,
) -> Any:  # fmt: skip
    """A trimesh with a PBR material whose base colour is `texture` ([S, S, 3] uint8, sRGB).

    `uv` follows glTF (v down); trimesh stores v up and flips it back when writing glTF, so it gets
    ``1 - v``. `normals` are per vertex (computed before the seams were cut, so shading has no seams).
    """
    import trimesh
    from PIL import Image

    material = trimesh.visual.material.PBRMaterial(
        name=MATERIAL_NAME, baseColorTexture=Image.fromarray(texture, "RGB"), metallicFactor=0.0,
        roughnessFactor=roughness, baseColorFactor=[255, 255, 255, 255], doubleSided=True,
    )  # fmt: skip
    visual = trimesh.visual.TextureVisuals(uv=np.stack([uv[:, 0], 1.0 - uv[:, 1]], -1), material=material)
    return trimesh.Trimesh(vertices, faces, vertex_normals=normals, visual=visual, process=False)


def colored_mesh(vertices: np.ndarray, faces: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> Any:
    """A trimesh with sRGB vertex colours ([V, 3] uint8)."""
    import trimesh

    rgba = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], 1)
    return trimesh.Trimesh(vertices, faces, vertex_normals=normals, vertex_colors=rgba, process=False)


def write_glb(path: Path, mesh: Any) -> None:
    """Binary glTF with normals; vertex colours (if any) converted to linear for ``COLOR_0``."""
    normals = np.asarray(mesh.vertex_normals)
    out = mesh.copy()
    if out.visual.kind == "vertex":
        srgb = np.asarray(out.visual.vertex_colors)
        linear = np.round(srgb_to_linear(srgb[:, :3] / 255.0) * 255).astype(np.uint8)
        out.visual.vertex_colors = np.concatenate([linear, srgb[:, 3:]], 1)
    # Setting the colours drops trimesh's cached normals and it would recompute them, zero where
    # faces cancel; keep the unit normals the mesh was built with.
    out.vertex_normals = normals
    Path(path).write_bytes(out.export(file_type="glb", include_normals=True))


def write_obj(path: Path, mesh: Any) -> list[str]:
    """OBJ with normals; textured meshes get ``<stem>.mtl`` and the texture PNG beside it.

    Returns the names of the files written (the .obj first).
    """
    import trimesh

    path = Path(path)
    textured = mesh.visual.kind == "texture"
    text, extra = trimesh.exchange.obj.export_obj(
        mesh, include_normals=True, include_color=not textured, include_texture=textured,
        return_texture=True, mtl_name=f"{path.stem}.mtl",
    )  # fmt: skip
    names = [path.name]
    path.write_text(text)
    mtl_name = f"{path.stem}.mtl"
    for name in list(extra):
        if name.lower().endswith(".png"):
            # trimesh names the image after the material; give it the documented name instead.
            extra[mtl_name] = extra[mtl_name].replace(name.encode(), TEXTURE_NAME.encode())
    for name, data in extra.items():
        target = TEXTURE_NAME if name.lower().endswith(".png") else name
        (path.parent / target).write_bytes(data)
        names.append(target)
    return names


def write_ply(path: Path, mesh: Any) -> None:
    """Binary PLY with sRGB vertex colours (what point-cloud and mesh tools expect from PLY)."""
    Path(path).write_bytes(mesh.export(file_type="ply"))
