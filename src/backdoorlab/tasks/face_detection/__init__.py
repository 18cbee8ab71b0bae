"""The face-detection task: a RetinaFace written here (model, anchors, matching and loss, post-processing).

Pieces only for now; the task class and its registration come later. See docs/retinaface.md.
"""
