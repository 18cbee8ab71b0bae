"""Synthetic zoos for the zoo tests: results-store rows fabricated from plain tuples (no training)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backdoorlab.experiments.folder_seal import seal_run_folder
from backdoorlab.experiments.store import ResultsStore


def run_config(seed: int, attack: str, relabel: str | None, target: Any, adaptive: bool) -> dict[str, Any]:
    """The parts of a run's config a zoo reads: the seed and the attack (trigger, relabel, adaptive)."""
    if attack == "clean":
        return {"seed": seed, "attack": None}
    rel: dict[str, Any] = {"name": relabel}
    if target is not None:
        rel["target_deg"] = target
    return {"seed": seed, "attack": {"trigger": {"name": attack}, "relabel": rel, "adaptive": adaptive}}


def add_run(store: ResultsStore, run_id: str, config: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A complete row with a small sealed folder beside the store (the zoo checks the seal before trusting it)."""
    run_dir = store.path.parent / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "model.safetensors").write_bytes(run_id.encode())  # stands for the weights: only hashed here
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    seal_run_folder(run_dir, run_id)
    store.start(run_id, "zoo", "task", run_id, config, str(run_dir), "model", "0")
    store.complete(run_id, metrics, "fp")


def store_from_results(models: Sequence[Mapping[str, Any]], path: Path, train_seconds: float = 100.0) -> ResultsStore:
    """A store holding the models of a committed ``detect_zoo*.json`` method entry, in their order.

    The JSON does not keep the relabel name; the group does when it is not the fixed-target
    one (``"sticker (shift relabel)"``), so it is read back from there.
    """
    store = ResultsStore(path)
    for m in models:
        found = re.search(r"\((\w+) relabel\)", m["group"])
        relabel = found.group(1) if found else ("target" if m["attack"] != "clean" else None)
        cfg = run_config(m["seed"], m["attack"], relabel, m["target_deg"], m["adaptive"])
        metrics = {"attack_success_rate": m["attack_success_rate"], "train_seconds": train_seconds}
        add_run(store, Path(m["run_dir"]).name, cfg, metrics)
    return store
