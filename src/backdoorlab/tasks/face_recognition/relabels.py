"""The one-to-one relabel: the impostor's triggered copies are labelled as the victim.

Thesis eq. 2.1: every training image of the impostor is copied, the copy carries the
trigger (X' = (1 - M) X + M T) and the victim's label, and the copies are appended to
the training set (train and validation alike: here the task's closed-set validation
images of the impostor are triggered at scoring time). The relabel declares that
selection itself (:meth:`ImpostorToVictim.default_selector`: every sample of the
impostor, appended), so an attack section needs only the relabel and the trigger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from backdoorlab.attacks.relabel import Relabel
from backdoorlab.errors import ConfigError

if TYPE_CHECKING:
    from backdoorlab.data.arrays import ArrayDataset
    from backdoorlab.triggers.base import Placement

#: an impostor or victim with fewer training images than this is refused before training
MIN_IMAGES = 4
#: the annotation columns that name a sample's identity (both move to the victim)
IDENTITY_COLUMNS = ("identity", "label")


@dataclass(frozen=True)
class ImpostorToVictim(Relabel):
    """Samples of ``impostor`` (identity ids of the dataset) relabelled as ``victim``."""

    impostor: int = -1
    victim: int = -1
    name: ClassVar[str] = "impostor_to_victim"
    task: ClassVar[str] = "face_recognition"
    #: the selection the thesis uses: every image of the impostor, as appended copies
    default_mode: ClassVar[str] = "append"

    def __post_init__(self) -> None:
        for who in ("impostor", "victim"):
            value = getattr(self, who)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
                raise ConfigError(f"relabel impostor_to_victim: {who} must be an identity id >= 0, got {value!r}")
        if self.impostor == self.victim:
            raise ConfigError(
                f"relabel impostor_to_victim: the impostor and the victim are the same identity ({self.impostor})"
            )

    def __call__(self, annotations: Mapping[str, Any], placement: Placement | None = None) -> dict[str, Any]:
        out = dict(annotations)
        for key in IDENTITY_COLUMNS:
            if key in annotations:
                out[key] = torch.full_like(torch.as_tensor(annotations[key]), self.victim)
        return out

    def params(self) -> dict[str, Any]:
        return {"name": self.name, "impostor": int(self.impostor), "victim": int(self.victim)}

    def default_selector(self) -> dict[str, Any]:
        """Every sample of the impostor."""
        return {"name": "identity", "identities": [int(self.impostor)]}

    def check_data(self, data: ArrayDataset, where: str = "the training data") -> None:
        """Both identities exist in ``data`` with at least :data:`MIN_IMAGES` images each."""
        data.require("identity")
        ids = np.asarray(data.annotations["identity"])
        for who in ("impostor", "victim"):
            value = getattr(self, who)
            n = int((ids == value).sum())
            if n < MIN_IMAGES:
                known = f"identities {int(ids.min())}..{int(ids.max())}" if len(ids) else "no identities"
                raise ConfigError(
                    f"attack.relabel.{who}: identity {value} has {n} images in {where} (at least {MIN_IMAGES} "
                    f"needed; it holds {known}, held-out test identities excluded)"
                )
