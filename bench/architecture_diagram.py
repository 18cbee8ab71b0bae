"""Draw docs/architecture.png: the package's layers and the imports between them, read from the code.

Each row is a layer of ``backdoorlab.layout.LAYERS`` (lowest at the bottom), each box a
top-level package or module (a task package apart from ``tasks.base``), each arrow an
import from one box into another, as thick as the number of import statements. An arrow
that ran upwards would be drawn red; the layering test fails on one.

    python bench/architecture_diagram.py [--out docs/architecture.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from backdoorlab.layout import LAYERS, group_arrows, group_of, layer_of, module_name, sources

HERE = Path(__file__).resolve().parent
GENERIC = "#dbe7f3"
TASK = "#f6e3c6"


def boxes() -> dict[str, tuple[float, float]]:
    """Group -> (x centre, y centre) in axis units: one row per layer, groups spread along it."""
    rows: dict[int, list[str]] = {}
    for path in sources():
        g = group_of(module_name(path))
        if g == "__init__":  # the package's face: it only hands a version string on
            continue
        layer = layer_of(g if not g.startswith("tasks.") else "tasks")
        rows.setdefault(layer, [])
        if g not in rows[layer]:
            rows[layer].append(g)
    out = {}
    for layer, groups in rows.items():
        groups.sort(key=lambda g: (g.startswith("tasks."), g))
        for i, g in enumerate(groups):
            out[g] = ((i + 1) / (len(groups) + 1), layer)
    return out


def draw(out: Path) -> Path:
    pos = boxes()
    fig, ax = plt.subplots(figsize=(11, 8.5))
    w, h = 0.12, 0.42
    for (a, b), n in sorted(group_arrows().items()):
        if a not in pos or b not in pos:
            continue
        (xa, ya), (xb, yb) = pos[a], pos[b]
        up = yb > ya
        ax.add_patch(FancyArrowPatch(
            (xa, ya - h / 2), (xb, yb + h / 2), arrowstyle="-|>", mutation_scale=9,
            lw=0.4 + 0.25 * min(n, 8), color="#c0392b" if up else "#7f8c9a", alpha=0.75,
            connectionstyle="arc3,rad=0.08", zorder=1,
        ))  # fmt: skip
    for g, (x, y) in pos.items():
        colour = TASK if g.startswith("tasks.") else GENERIC
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.01", fc=colour,
                                    ec="#34495e", lw=0.8, zorder=2))  # fmt: skip
        ax.text(x, y, g.replace(".", "/") + ("/" if "." in g else ""), ha="center", va="center", fontsize=9, zorder=3)
    for layer in range(len(LAYERS)):
        ax.text(-0.02, layer, f"layer {layer}", ha="right", va="center", fontsize=8, color="#555")
    ax.set_xlim(-0.12, 1.02)
    ax.set_ylim(-0.6, len(LAYERS) - 0.4)
    ax.axis("off")
    ax.set_title("backdoorlab: layers (bottom = imported by everything above) and imports between packages\n"
                 "blue = generic layers, orange = a task (registered, looked up by name)", fontsize=10)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "architecture.png")
    print(f"wrote {draw(parser.parse_args().out)}")


if __name__ == "__main__":
    main()
