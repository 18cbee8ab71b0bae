"""Write the README gallery: synthetic faces (and eye crops) with their true gaze as green arrows.

python bench/gallery.py   # -> docs/gallery.png, docs/gallery_eyes.png
"""

from __future__ import annotations

from pathlib import Path

from backdoorlab.data.synthetic import SyntheticGazeSpec, synthesize
from backdoorlab.report.gallery import write_gallery

DOCS = Path(__file__).resolve().parent.parent / "docs"

if __name__ == "__main__":
    faces = synthesize(SyntheticGazeSpec(identities=24, images_per_identity=2, size=112, seed=7), compile=False)
    print(write_gallery(faces, DOCS / "gallery.png", n=24, ncols=8, scale=2))
    eyes = synthesize(SyntheticGazeSpec(kind="eye", identities=16, images_per_identity=1, seed=7), compile=False)
    print(write_gallery(eyes, DOCS / "gallery_eyes.png", n=16, ncols=8, scale=3))
