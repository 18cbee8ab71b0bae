"""Print the config hash of every shipped run config and sweep point, as JSON (``config_hashes.json``).

Stores written before a change resume only if these hashes stay the same; the test
beside this file compares the current code's hashes with the recorded ones. Usage::

    python tests/invariants/record_config_hashes.py > tests/invariants/config_hashes.json
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def current_hashes() -> dict[str, object]:
    from backdoorlab.experiments.config import load_config
    from backdoorlab.experiments.sweep import expand, load_sweep

    out: dict[str, object] = {}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        if "init:" in text or "finetune.yaml" in text:
            continue  # a fine-tune's hash holds its base weights' digest: it depends on what is trained here
        if ".png" in text:
            continue  # a pattern file's path is resolved to an absolute one: the hash depends on the checkout's place
        if "grid:" in text or "runs:" in text or "base:" in text:
            spec, base = load_sweep(path)
            out[rel] = sorted(r.config_hash for r in expand(spec, base, rel))
        else:
            out[rel] = load_config(path).config_hash()
    return out


if __name__ == "__main__":
    print(json.dumps(current_hashes(), indent=2, sort_keys=True))
