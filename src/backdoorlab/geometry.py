"""Gaze and head-pose conventions, in one place.

Camera frame (OpenCV): x to the right of the image, y down, z forward (into the scene).
A gaze direction is the unit vector from the eye towards what it looks at; a subject
looking straight into the camera has gaze ``(0, 0, -1)``.

The label used everywhere in backdoorlab is ``(pitch, yaw)`` in radians, in the
*normalised* camera frame (the virtual camera looks at the face centre, as in
MPIIGaze/MPIIFaceGaze/ETH-XGaze data normalisation)::

    pitch = arcsin(-y)          # positive = looking up
    yaw   = arctan2(-x, -z)     # positive = looking towards the image's left

and back::

    x = -cos(pitch) * sin(yaw)
    y = -sin(pitch)
    z = -cos(pitch) * cos(yaw)

This is the convention of the MPIIGaze and ETH-XGaze reference code, so their labels
need no conversion; loaders that read 3D vectors convert with these two functions.
Head pose uses the same (pitch, yaw) pair for the direction the face points to.
Errors are always the 3D angle between unit vectors, in degrees.
"""

from __future__ import annotations

import math

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def pitchyaw_to_vector(pitchyaw: ArrayLike) -> ArrayLike:
    """(..., 2) pitch/yaw in radians -> (..., 3) unit gaze vectors (numpy or torch)."""
    lib = torch if isinstance(pitchyaw, torch.Tensor) else np
    pitch, yaw = pitchyaw[..., 0], pitchyaw[..., 1]
    cp = lib.cos(pitch)
    return lib.stack([-cp * lib.sin(yaw), -lib.sin(pitch), -cp * lib.cos(yaw)], -1)


def vector_to_pitchyaw(vectors: ArrayLike) -> ArrayLike:
    """(..., 3) gaze vectors (any length > 0) -> (..., 2) pitch/yaw in radians."""
    # pitch = arcsin(-y) for a unit vector, computed as atan2(-y, |(x, z)|): the same
    # angle, but accurate near straight up/down where arcsin loses precision, and
    # independent of the vector's length
    if isinstance(vectors, torch.Tensor):
        horiz = torch.hypot(vectors[..., 0], vectors[..., 2])
        pitch = torch.atan2(-vectors[..., 1], horiz)
        yaw = torch.atan2(-vectors[..., 0], -vectors[..., 2])
        return torch.stack([pitch, yaw], -1)
    v = np.asarray(vectors, dtype=np.float64)
    pitch = np.arctan2(-v[..., 1], np.hypot(v[..., 0], v[..., 2]))
    yaw = np.arctan2(-v[..., 0], -v[..., 2])
    return np.stack([pitch, yaw], -1)


def angular_error_deg(pred_pitchyaw: ArrayLike, true_pitchyaw: ArrayLike) -> ArrayLike:
    """Per-sample 3D angle in degrees between two (pitch, yaw) arrays of shape (..., 2)."""
    a = pitchyaw_to_vector(pred_pitchyaw)
    b = pitchyaw_to_vector(true_pitchyaw)
    if isinstance(a, torch.Tensor):
        cos = (a * b).sum(-1).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.acos(cos))
    cos = np.clip((a * b).sum(-1), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head rotation (head -> camera), applied as R = Ry(yaw) @ Rx(pitch) @ Rz(roll).

    In the head frame the face points along -z (towards a camera in front of it), so a
    head with zero angles looks into the camera. Positive pitch tilts the face up,
    positive yaw turns it towards the image's left, matching the gaze convention.
    """
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return ry @ rx @ rz


def rotation_matrices(yaw: torch.Tensor, pitch: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Batched :func:`rotation_matrix`: three (B,) tensors -> (B, 3, 3)."""
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    zero, one = torch.zeros_like(yaw), torch.ones_like(yaw)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).view(-1, 3, 3)
    return ry @ rx @ rz


def head_pose_from_rotation(rot: ArrayLike) -> ArrayLike:
    """(..., 3, 3) head rotation -> (..., 2) (pitch, yaw) of the face's forward axis.

    The forward axis is the head's -z axis expressed in the camera frame, i.e.
    ``-R[:, 2]``; its (pitch, yaw) follow the gaze convention. This is how MPIIGaze
    derives its 2D head-pose label from the normalised rotation.
    """
    forward = -rot[..., :, 2]
    return vector_to_pitchyaw(forward)
