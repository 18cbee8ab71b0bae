"""Cameras, crops and exact annotations on top of the ray-caster.

Three ways to look at a synthetic face, all with exact labels:

* :func:`render_face_crops`: normalised face crops like MPIIFaceGaze/ETH-XGaze (the
  virtual camera looks at the face centre from ``distance`` mm);
* :func:`render_eye_crops`: 36x60 eye crops like MPIIGaze (the camera looks at one
  eye centre, its x-axis kept parallel to the head's, as in MPIIGaze normalisation;
  the gaze label is expressed in that eye camera's frame);
* :func:`render_scene`: any number of faces at chosen positions and sizes on a larger
  canvas (:mod:`backdoorlab.data.synthetic.scenes` builds face-detection datasets
  from it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from backdoorlab.data.synthetic.params import Accessories, IdentityParams, ImageParams
from backdoorlab.data.synthetic.render import (
    Camera,
    _surface_z,
    _t,
    blur_and_noise,
    finish_images,
    head_geometry,
    quantize,
    render_background,
    render_faces,
)
from backdoorlab.geometry import (
    head_pose_from_rotation,
    pitchyaw_to_vector,
    rotation_matrices,
    vector_to_pitchyaw,
)

Tensor = torch.Tensor

FACE_DISTANCE_MM = 600.0
FACE_CROP_SPAN_MM = 200.0  # width of the world a face crop shows at the face centre
EYE_CROP_SPAN_MM = 40.0  # width of the world an eye crop shows at the eye centre
FACE_WIDTH_MM = 150.0  # nominal face width used to place faces on a canvas


@dataclass
class Rendered:
    """Images (uint8 B,H,W,3) and annotations (numpy, keyed as in ``ArrayDataset``)."""

    images: np.ndarray
    annotations: dict[str, np.ndarray]


def head_rotations(view: ImageParams) -> Tensor:
    return rotation_matrices(*(_t(view.head_ypr[:, i]) for i in range(3)))


def landmark_points(ident: IdentityParams, view: ImageParams) -> dict[str, Tensor]:
    """Head-frame 3D points: eye corners (B,4,3), 5 landmarks (B,5,3), face outline (B,K,3).

    Eye corners are the ends of the lid opening; eye centres are their midpoints (the
    MPIIGaze definition); mouth corners follow the smile.
    """
    geo = head_geometry(ident)
    axes, centre = geo["axes"], geo["centre"]
    b = axes.shape[0]
    w2 = _t(ident.eye_width) / 2
    corners = []
    for k in range(2):  # image-left eye first, outer corner first
        ecx, ecy = geo["eyeball"][:, k, 0], geo["eyeball"][:, k, 1]
        side = torch.sign(ecx)
        for s in (-1.0, 1.0):
            x = ecx + s * w2
            inner = -side
            y = ecy + 0.8 * s * inner
            corners.append(torch.stack([x, y, _surface_z(x, y, axes, centre)], -1))
    eye_corners = torch.stack(corners, 1)  # (B,4,3)
    eye_centres = torch.stack([eye_corners[:, 0:2].mean(1), eye_corners[:, 2:4].mean(1)], 1)
    nose_tip = geo["nose_centre"] - torch.stack([torch.zeros(b), torch.zeros(b), geo["nose_axes"][:, 2]], -1)
    mw = _t(ident.mouth_width)
    mouth_y = _t(ident.mouth_height) - 3.5 * _t(view.smile)
    mouth = [torch.stack([s * mw, mouth_y, _surface_z(s * mw, mouth_y, axes, centre)], -1) for s in (-1.0, 1.0)]
    landmarks = torch.stack([eye_centres[:, 0], eye_centres[:, 1], nose_tip, mouth[0], mouth[1]], 1)
    # face outline: the front half of the head from the hairline to the chin
    th = torch.linspace(-np.pi / 2, np.pi / 2, 13)
    ys = torch.linspace(0, 1, 9)
    top = _t(ident.hairline)[:, None] - 5
    bottom = (centre[:, 1] + axes[:, 1])[:, None]
    yy = top + (bottom - top) * ys[None]  # (B,9)
    rel = ((yy - centre[:, 1:2]) / axes[:, 1:2]).clamp(-1, 1)
    ring = (1 - rel**2).clamp_min(0).sqrt()  # (B,9)
    x = axes[:, 0, None, None] * ring[:, :, None] * torch.sin(th)[None, None]
    z = centre[:, 2, None, None] - axes[:, 2, None, None] * ring[:, :, None] * torch.cos(th)[None, None]
    y = yy[:, :, None].expand_as(x)
    outline = torch.stack([x, y, z], -1).reshape(b, -1, 3)
    return {"eye_corners": eye_corners, "landmarks": landmarks, "outline": outline}


def annotate(ident: IdentityParams, view: ImageParams, camera: Camera, translation: Tensor) -> dict[str, np.ndarray]:
    """Exact labels of each rendered face, in the pixels and frame of ``camera``."""
    rot = head_rotations(view)
    pts = landmark_points(ident, view)

    def to_px(p: Tensor) -> Tensor:
        world = p @ rot.transpose(1, 2) + translation[:, None]
        return camera.project(world)

    outline = to_px(pts["outline"])
    box = torch.cat([outline.amin(1), outline.amax(1)], -1)
    gaze_world = pitchyaw_to_vector(_t(view.gaze))
    gaze_cam = (camera.rotation.transpose(1, 2) @ gaze_world[:, :, None])[:, :, 0]
    head_cam = camera.rotation.transpose(1, 2) @ rot
    return {
        "gaze": vector_to_pitchyaw(gaze_cam).numpy().astype(np.float32),
        "head_pose": head_pose_from_rotation(head_cam).numpy().astype(np.float32),
        "head_roll": view.head_ypr[:, 2].astype(np.float32),
        "landmarks": to_px(pts["landmarks"]).numpy().astype(np.float32),
        "eye_corners": to_px(pts["eye_corners"]).numpy().astype(np.float32),
        "face_box": box.numpy().astype(np.float32),
    }


def _compose(
    ident: IdentityParams,
    view: ImageParams,
    camera: Camera,
    translation: Tensor,
    generator: torch.Generator,
    accessories: Accessories | None = None,
) -> np.ndarray:
    rgb, alpha = render_faces(ident, view, camera, translation, accessories=accessories)
    noise = torch.randn(rgb.shape, generator=generator)
    return finish_images(rgb, alpha, view, noise).numpy()


def face_camera(batch: int, size: int, distance: float = FACE_DISTANCE_MM) -> tuple[Camera, Tensor]:
    """The normalised face camera: looks at the face centre from ``distance`` mm."""
    focal = torch.full((batch,), size * distance / FACE_CROP_SPAN_MM)
    centre = torch.full((batch,), size / 2.0)
    cam = Camera(size, size, focal, centre, centre.clone(), torch.eye(3).expand(batch, 3, 3).clone())
    translation = torch.tensor([0.0, 0.0, distance]).expand(batch, 3).clone()
    return cam, translation


def render_face_crops(
    ident: IdentityParams,
    view: ImageParams,
    size: int = 64,
    generator: torch.Generator | None = None,
    accessories: Accessories | None = None,
) -> Rendered:
    """Normalised ``size`` x ``size`` face crops with exact labels (and the faces' ``accessories``, if any)."""
    b = len(view.gaze)
    cam, trans = face_camera(b, size)
    gen = generator or torch.Generator().manual_seed(0)
    images = _compose(ident, view, cam, trans, gen, accessories)
    ann = annotate(ident, view, cam, trans)
    return Rendered(images, ann)


def eye_camera(
    ident: IdentityParams,
    view: ImageParams,
    side: np.ndarray,
    height: int,
    width: int,
    distance: float = FACE_DISTANCE_MM,
) -> tuple[Camera, Tensor]:
    """A camera looking at eye ``side`` (0 = image-left, 1 = image-right) of each face."""
    b = len(side)
    rot = head_rotations(view)
    trans = torch.tensor([0.0, 0.0, distance]).expand(b, 3)
    corners = landmark_points(ident, view)["eye_corners"]  # head frame
    sel = torch.as_tensor(side, dtype=torch.long)
    centre_h = torch.stack([corners[:, 0:2].mean(1), corners[:, 2:4].mean(1)], 1)[torch.arange(b), sel]
    centre_w = (rot @ centre_h[:, :, None])[:, :, 0] + trans
    z = centre_w / centre_w.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, rot[:, :, 0], dim=-1)
    y = y / y.norm(dim=-1, keepdim=True)
    x = torch.linalg.cross(y, z, dim=-1)
    look = torch.stack([x, y, z], -1)  # columns: camera axes in the world frame
    dist = centre_w.norm(dim=-1)
    focal = width * dist / EYE_CROP_SPAN_MM
    cam = Camera(width, height, focal, torch.full((b,), width / 2.0), torch.full((b,), height / 2.0), look)
    return cam, trans.clone()


def render_eye_crops(
    ident: IdentityParams,
    view: ImageParams,
    side: np.ndarray,
    height: int = 36,
    width: int = 60,
    generator: torch.Generator | None = None,
) -> Rendered:
    """MPIIGaze-like eye crops (RGB; convert to grey for MPIIGaze-style models)."""
    cam, trans = eye_camera(ident, view, side, height, width)
    gen = generator or torch.Generator().manual_seed(0)
    images = _compose(ident, view, cam, trans, gen)
    ann = annotate(ident, view, cam, trans)
    ann["eye_side"] = np.asarray(side, dtype=np.int64)
    return Rendered(images, ann)


def scene_camera(
    centres_px: np.ndarray, widths_px: np.ndarray, height: int, width: int, focal: float | None = None
) -> tuple[Camera, Tensor]:
    """The canvas camera of :func:`render_scene` (one row per face) and each face's translation.

    Face ``i`` sits at the depth where :data:`FACE_WIDTH_MM` spans ``widths_px[i]``
    pixels, on the ray through ``centres_px[i]``; ``focal`` defaults to the larger
    canvas side (a field of view of about 53 degrees).
    """
    n = len(widths_px)
    f = float(focal or max(height, width))
    cam = Camera(
        width,
        height,
        torch.full((n,), f),
        torch.full((n,), width / 2.0),
        torch.full((n,), height / 2.0),
        torch.eye(3).expand(n, 3, 3).clone(),
    )
    depth = torch.as_tensor(f * FACE_WIDTH_MM / np.asarray(widths_px, dtype=np.float64), dtype=torch.float32)
    c = torch.as_tensor(np.asarray(centres_px, dtype=np.float64), dtype=torch.float32)
    trans = torch.stack([(c[:, 0] - width / 2) * depth / f, (c[:, 1] - height / 2) * depth / f, depth], -1)
    return cam, trans


def render_scene(
    ident: IdentityParams,
    view: ImageParams,
    centres_px: np.ndarray,
    widths_px: np.ndarray,
    height: int,
    width: int,
    focal: float | None = None,
    generator: torch.Generator | None = None,
) -> Rendered:
    """Draw all given faces on one ``height`` x ``width`` canvas.

    Face ``i`` is placed so that its centre projects to ``centres_px[i]`` and its face
    is about ``widths_px[i]`` pixels wide; nearer (larger) faces occlude farther ones.
    The background comes from the first face's view parameters. Annotations are per
    face, in canvas pixels.
    """
    cam, trans = scene_camera(centres_px, widths_px, height, width, focal)
    depth = trans[:, 2]
    rgb, alpha = render_faces(ident, view, cam, trans)
    img = render_background(view.take(np.array([0])), height, width)[0]
    for i in torch.argsort(depth, descending=True).tolist():
        img = img + (rgb[i] - img) * alpha[i].unsqueeze(-1)
    gen = generator or torch.Generator().manual_seed(0)
    out = quantize(blur_and_noise(img[None], view.take(np.array([0])), gen)).numpy()[0]
    ann = annotate(ident, view, cam, trans)
    return Rendered(out, ann)
