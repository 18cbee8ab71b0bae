"""The verdict record and the clean-set guard shared by every detector."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backdoorlab.defenses.base import Verdict, require_clean_samples
from backdoorlab.errors import BackdoorLabError


def test_verdict_json_round_trip_without_the_images(tmp_path) -> None:
    v = Verdict(
        method="securegaze",
        backdoored=True,
        score=3.5,
        threshold=2.0,
        seconds=1.25,
        estimates={"target_deg": (np.float32(1.5), -2.0)},
        details={"steps": 10},
        examples=np.zeros((2, 8, 8, 3), np.uint8),
    )
    out = v.write(tmp_path / "sub" / "verdict.json")
    data = json.loads(out.read_text())
    assert data["backdoored"] is True and data["estimates"] == {"target_deg": [1.5, -2.0]}
    assert data["estimated_target_deg"] == [1.5, -2.0]  # also under the key older readers (the bench) use
    assert "examples" not in data and data["details"] == {"steps": 10}
    assert [p.name for p in out.parent.iterdir()] == ["verdict.json"]  # no partial file left


def test_clean_set_too_small(tiny_face_ds) -> None:
    require_clean_samples(tiny_face_ds, 12, "x")
    with pytest.raises(BackdoorLabError, match="needs at least 13 clean samples; got 12"):
        require_clean_samples(tiny_face_ds, 13, "SecureGaze")


def test_calibrated_threshold_keeps_the_false_positive_budget() -> None:
    from backdoorlab.defenses.base import calibrated_threshold

    scores = [0.1, 0.5, 0.2, 0.9, 0.3]
    t0 = calibrated_threshold(scores, 0.0)
    assert t0 > 0.9 and t0 < 1.0  # every reference below
    t2 = calibrated_threshold(scores, 0.2)  # one of five may be flagged
    assert 0.5 < t2 < 0.9 and sum(s >= t2 for s in scores) == 1
    with pytest.raises(BackdoorLabError, match="cannot calibrate"):
        calibrated_threshold([0.1, float("nan")])
    with pytest.raises(ValueError, match="max_fpr"):
        calibrated_threshold(scores, 1.0)
