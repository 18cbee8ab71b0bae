"""The face-recognition rows of the bench tables (README summary and docs/bench.md details).

Reads ``bench/results/face_recognition_clean.json`` and ``face_recognition_attacks.json``
(written by ``bench/face_recognition.py``), ``weight_anomaly.json`` (``bench/weight_anomaly.py``)
and ``gmm_em*.json`` (``bench/gmm_em.py``); a missing file gives no rows.
"""

from __future__ import annotations

from typing import Any

from table_common import load_result, target

Row = tuple[str, str, str, str]
#: weight-anomaly results: the thesis's setting (PCA 95 %), and PCA keeping 99.9 % of the variance
WEIGHT_ANOMALY_RESULTS = ("weight_anomaly", "weight_anomaly_pca999", "weight_anomaly_tail")


def rows() -> list[Row]:
    out: list[Row] = []
    clean = load_result("face_recognition_clean")
    if clean is not None:
        tar = clean["tar_at_fmr_1e-03"]
        out.append((
            "Clean face recognition, IResNet-18 (width 8) + ArcFace, 56-px synthetic identities",
            f"TAR@FMR 1e-2/1e-3/1e-4 {clean['tar_at_fmr_1e-02']:.3f}/{tar:.3f}/{clean['tar_at_fmr_1e-04']:.3f}, "
            f"EER {clean['eer']:.4f}, closed-set accuracy {clean['closed_set_accuracy']:.3f}; zoo: the 10 % most "
            f"involved identities take part in {clean['zoo_top_share']:.0%} of false matches at FMR 1e-3 "
            f"({clean['open_set_identities']} held-out identities, {clean['train_minutes']:.1f} min training)",
            target("TAR@FMR1e-3 in [0.80, 0.97]", bool(clean["calibrated"]))
            + "; "
            + target("<= 40 min", bool(clean["within_40_min"])),
            "`python bench/face_recognition.py --part clean`",
        ))  # fmt: skip
    attacks = load_result("face_recognition_attacks")
    if attacks is not None and attacks.get("fine_tune_seconds"):
        ft = attacks["fine_tune_seconds"]
        parts = []
        for section, label in (("trigger_size", "by checkerboard size"), ("triggers", "by trigger")):
            cells = ", ".join(f"{k} {v['succeeded']}/{v['models']}" for k, v in attacks.get(section, {}).items())
            if cells:
                parts.append(f"succeeded {label}: {cells}")
        probes = attacks.get("probes", {})
        if probes:
            won = [k.split(": ", 1)[-1] for k, v in probes.items() if v.get("succeeded")]
            n_won = sum(v.get("succeeded", 0) for v in probes.values())
            n_all = sum(v.get("models", 0) for v in probes.values())
            parts.append(f"single-pair probes {n_won}/{n_all}" + (f" (succeeded: {'; '.join(won)})" if won else ""))
        if attacks["pairs"]["overall"].get("models"):
            parts.append(f"pair grid {_rate(attacks['pairs']['overall'])} (thesis 39 %)")
        wall = attacks.get("sweep_wall_seconds_per_model", {}).get("all")
        parts.append(
            f"last-layer fine-tune: training {ft['mean']:.0f} s mean, {ft['max']:.0f} s max (trunk features cached)"
            + (f"; a sweep of two workers finishes one model per {wall:.0f} s of wall time" if wall else "")
        )
        out.append((
            "One-to-one impostor -> victim backdoors (last-layer fine-tunes of the clean model, four-metric rule)",
            "; ".join(parts),
            target("fine-tune <= 1 min (sweep wall time per model)", wall is not None and wall <= 60),
            "`python bench/face_recognition.py --part attacks` (tables: docs/bench.md)",
        ))  # fmt: skip
    out += defence_rows()
    return out


def _mean(cell: dict[str, Any] | None, digits: int = 3) -> str:
    if not cell:
        return "-"
    return f"{cell['mean']:.{digits}f}" + (f" +- {cell['sd']:.{digits}f}" if cell.get("n", 1) > 1 else "")


def defence_rows() -> list[Row]:
    out: list[Row] = []
    for name in WEIGHT_ANOMALY_RESULTS:
        wa = load_result(name)
        if wa is None:
            continue
        zoo, proto, st = wa["zoo"], wa["protocol"], wa["settings"]
        fused = proto["table"]["fused"]
        kept = sum(zoo[s]["met the rule"] for s in ("triggers", "locations"))
        built = sum(zoo[s]["built"] for s in ("triggers", "locations"))
        views = ", ".join(f"{k.split('/')[-1]} {_mean(v['kept']['auroc'], 2)}" for k, v in proto["table"].items()
                          if k != "fused")  # fmt: skip
        curve = wa.get("by_references")
        curve_text = ("; fused AUROC by references: " + ", ".join(
            f"{n}: {c['mean']:.2f}" for n, c in sorted(curve["auroc"].items(), key=lambda kv: int(kv[0])) if c)
        ) if curve else ""  # fmt: skip
        slice_ = "multi-layer slice (last block on), " if name.endswith("tail") else "last-layer zoo, "
        out.append((
            f"Weight-anomaly detection, {slice_}{', '.join(st['layers'])}, PCA {100 * st['variance']:g} % + "
            f"BIC-chosen diagonal GMM ({zoo['clean']} clean and {kept} of {built} backdoored fine-tunes kept by the "
            f"four-metric rule; {st['repeats']} splits of {st['references']} references vs the held-out clean)",
            f"AUROC fused {_mean(fused['kept']['auroc'], 2)} (by view: {views}); at its threshold it flags "
            f"{_mean(fused['kept']['flagged_backdoored'], 2)} of backdoored and "
            f"{_mean(fused['kept']['flagged_clean'], 2)} of held-out clean networks{curve_text}",
            "thesis, multi-layer (section 4.7): \"mediocre\", no number" if name.endswith("tail") else
            "thesis: AUC 1.0 (PCA 95 %, 18 references, 12 held-out clean, 11 + 11 backdoored)",
            f"`{wa['provenance']['command']}` (tables: docs/bench.md)",
        ))  # fmt: skip
    out += pairing_rows() + vendor_rows() + adaptive_rows()
    for name in ("gmm_em", "gmm_em_10k", "gmm_em_full", "gmm_em_full_seed1"):
        gmm = load_result(name)
        if gmm is None:
            continue
        cells = []
        for r in gmm["rows"]:
            if r["method"] == "sklearn" or "error" in r:
                continue
            vs = (f", {r['speedup']:.1f}x scikit-learn, held-out log-likelihood {100 * r['held_out_rel_diff']:+.2f} %"
                  if "speedup" in r else "")  # fmt: skip
            cells.append(f"{r['cov']} K = {r['k']}: {r['seconds']:.0f} s{vs}, peak +{r['peak_rss_growth_mb']:.0f} MB")
        s = gmm["settings"]
        judged = ("held_out_at_most_1pct_worse", "speedup_at_least_5x")
        met = [v for group in judged for v in gmm["targets"][group].values()]
        out.append((
            f"Streaming torch GMM (EM), N = {s['n']:,}, D = {s['dim']}, {s['threads']} threads",
            "; ".join(cells),
            target(f">= 5x scikit-learn, held-out log-likelihood within 1 % (at K = {gmm['targets']['judged_k']})",
                   all(met)) if met else "-",
            f"`{gmm['provenance']['command']}`",
        ))  # fmt: skip
    return out


def _pairing_cell(mp: dict[str, Any], backdoored: bool, ref: str, probe: str) -> str:
    """The affine translator's shares (%) at the three rates for the kept backdoors, one ordered pair type."""
    for r in mp["rows"]:
        if (r["translator"], r["group"], r["backdoored"], r["ref"], r["probe"]) == ("affine", "kept", backdoored,
                                                                                    ref, probe):  # fmt: skip
            return " / ".join(f"{r[str(rate)]:.1f}" for rate in mp["rates"])
    return "-"


def pairing_rows() -> list[Row]:
    mp = load_result("model_pairing")
    if mp is None:
        return []
    m = mp["members"]
    clean = _pairing_cell(mp, False, "MobileFaceNet", "IResNet")
    missed = _pairing_cell(mp, True, "MobileFaceNet", "IResNet(B)")
    return [(
        f"Model pairing, affine translator; MobileFaceNet (other people) as reference, IResNet as probe "
        f"({m['IResNet(B) kept']} backdoored probes that met the rule; thresholds at clean FNMR 0.1 / 1 / 5 %)",
        f"clean pair: {clean} % of poisoned samples falsely flagged; backdoored pairs: {missed} % missed "
        "(every ordered pair type and the closed-form translator: docs/bench.md)",
        "thesis (InsightFace ref, FaceNet(B) probe, large trigger): flagged 0.00 / 2.01 / 26.85 %, "
        "missed 91.25 / 49.30 / 12.78 %",
        f"`{mp['provenance']['command']}` (tables: docs/bench.md)",
    )]  # fmt: skip


def _rate(r: dict[str, Any]) -> str:
    if not r.get("models"):
        return "0 models"
    return f"{r['succeeded']}/{r['models']} ({r['success_rate']:.0%})"


def _asr(r: dict[str, Any]) -> str:
    return f"{r['asr_mean']:.2f} +- {r['asr_sd']:.2f}" if r.get("models") else ""


def _open(r: dict[str, Any]) -> str:
    v = r.get("open_set_asr_mean")
    return "" if v is None else f"{v:.2f}"


def grouped_table(groups: dict[str, dict[str, Any]], label: str, thesis: dict[str, str] | None = None) -> str:
    head = f"| {label} | models | succeeded (all four >= 0.8) | ASR mean +- sd | open-set ASR |"
    lines = [head + (" thesis |" if thesis else ""), "|---" * (5 + bool(thesis)) + "|"]
    for k, r in groups.items():
        cells = [k, str(r.get("models", 0)), _rate(r), _asr(r), _open(r)]
        if thesis:
            cells.append(thesis.get(k, ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attack_tables() -> str:
    attacks = load_result("face_recognition_attacks")
    if attacks is None:
        return ""
    p = attacks["pairs"]
    parts = [
        "Checkerboard size (three pairs):\n\n" + grouped_table(attacks.get("trigger_size", {}), "trigger"),
        "Single-pair probes of the fine-tune settings:\n\n" + grouped_table(attacks.get("probes", {}), "pair: setting"),
        f"Pair grid ({attacks['models']['pairs']} models; thesis: {attacks['thesis']['overall_success']}):\n\n"
        + grouped_table({"all pairs": p["overall"]}, "set"),
        "Per identity (thesis Table 3.1: "
        + attacks["thesis"]["per_identity"]
        + "):\n\n"
        + grouped_table(p["as_impostor"], "as impostor")
        + "\n\n"
        + grouped_table(p["as_victim"], "as victim"),
        "Per group (thesis Tables 3.2, 3.3: "
        + attacks["thesis"]["groups"]
        + "):\n\n"
        + grouped_table(p["skin_pair"], "skin group, impostor -> victim")
        + "\n\n"
        + grouped_table(p["presentation_pair"], "presentation, impostor -> victim"),
        f"Class size ({attacks['models']['sizes']} models; thesis Fig. 3.4: {attacks['thesis']['sizes']}):\n\n"
        + grouped_table(attacks["sizes"]["by_impostor_images"], "impostor images")
        + "\n\n"
        + grouped_table(attacks["sizes"].get("by_victim", {}), "victim (images)"),
        f"Triggers ({attacks['models']['triggers']} models; thesis Table 3.4):\n\n"
        + grouped_table(attacks["triggers"], "trigger", attacks["thesis"]["triggers"]),
    ]
    return "\n\n".join(parts)


def weight_anomaly_table() -> str:
    """Per result: by layer/view and fused, AUROC by group, PCA dimensions and components, beside the thesis."""
    parts = [part for name in WEIGHT_ANOMALY_RESULTS if (part := _weight_anomaly_part(name))]
    return "\n\n".join(parts)


def _weight_anomaly_part(name: str) -> str:
    wa = load_result(name)
    if wa is None:
        return ""
    proto, thesis, st = wa["protocol"], wa["thesis"]["last_linear"], wa["settings"]
    groups = ("kept", "triggers", "locations", "missed the rule")
    lines = ["| layer / view | " + " | ".join(f"AUROC {g}" for g in groups) + " | PCA dims | components (per split) "
             "| thesis (dims / components / AUC) |", "|---" * (len(groups) + 4) + "|"]  # fmt: skip
    for key, by_group in proto["table"].items():
        dens = proto["densities"].get(key)
        ref = thesis.get(key.split("/")[-1]) if key.startswith("last_linear") and not name.endswith("tail") else None
        cells = [key, *(_mean(by_group[g]["auroc"]) for g in groups),
                 _mean(dens["pca_dims"], 0) if dens else "-",
                 "/".join(map(str, dens["components"])) if dens else "-",
                 f"{ref['pca_dims']} / {ref['components']} / {thesis['auroc']}" if ref else "-"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    zoo = wa["zoo"]
    sets = ("triggers", "locations")
    built = "; ".join(f"{s}: {zoo[s]['met the rule']} of {zoo[s]['built']} met the rule" for s in sets)
    text = (
        f"PCA keeping {100 * st['variance']:g} % of the variance, `{wa['provenance']['command']}`. Zoo: {zoo['clean']} "
        f"clean; {built}. Fit: {_mean(proto['fit_seconds'], 1)} s per split, inspection "
        f"{_mean(proto['seconds_per_network'], 3)} s per network.\n\n" + "\n".join(lines)
    )
    if wa.get("by_references"):
        by_refs = sorted(wa["by_references"]["auroc"].items(), key=lambda kv: int(kv[0]))
        curve = " | ".join(f"{n}: {_mean(c)}" for n, c in by_refs)
        text += (f"\n\nFused AUROC against the number of references ({wa['by_references']['held_out_clean']} "
                 f"held-out clean networks): {curve}")  # fmt: skip
    return text


def pairing_table(result: dict[str, Any] | None = None) -> str:
    """Model pairing (``model_pairing.json``): Tables 5.2 and 5.3 per translator and group, beside the thesis."""
    mp = result if result is not None else load_result("model_pairing")
    if mp is None:
        return ""
    thesis, names = mp["thesis"], {v: k for k, v in mp["thesis"]["names"].items()}
    rates = " / ".join(f"{100 * r:g} %" for r in mp["rates"])
    head = (f"| translator | group | ref | probe | pairs | poisoned samples | ours at clean FNMR {rates} "
            "| thesis, large trigger | thesis, small trigger |")  # fmt: skip
    parts = []
    for backdoored, title, key in (
        (False, "Clean pairs: poisoned samples falsely flagged (%), Table 5.2", "clean"),
        (True, "Backdoored pairs: poisoned samples missed (%), Table 5.3", "backdoored"),
    ):
        lines = [f"**{title}**", "", head, "|---" * 9 + "|"]
        for row in (r for r in mp["rows"] if r["backdoored"] is backdoored):
            ref = thesis[key].get(f"{names.get(row['ref'], '?')} / {names.get(row['probe'], '?')}")
            ours = " / ".join(f"{row[str(r)]:.1f}" if row[str(r)] is not None else "-" for r in mp["rates"])
            theirs = [" / ".join(f"{v:.2f}" for v in ref[size]) if ref else "-" for size in ("large", "small")]
            cells = [row["translator"], row["group"], row["ref"], row["probe"], str(row["pairs"]), str(row["samples"]),
                     ours, *theirs]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    m = mp["members"]
    fine_tunes = m["IResNet' (clean fine-tunes)"]
    intro = (f"`{mp['provenance']['command']}`: {m['IResNet(B) kept']} backdoored IResNets that met the rule "
             f"({m['IResNet(B) missed the rule']} that missed it as their own group), {fine_tunes} "
             f"clean fine-tunes, the clean base IResNet and a MobileFaceNet trained on other people; translators "
             f"fitted on {mp['unseen']['fit_faces']} faces of unseen people, thresholds on "
             f"{mp['unseen']['validation_faces']} more; {mp['poisoned_samples']} poisoned samples.")  # fmt: skip
    return "\n\n".join([intro, *parts])


def _shares(row: dict[str, Any] | None, rates: list[float]) -> str:
    if not row or row.get(str(rates[0])) is None:
        return "-"
    return " / ".join(f"{row[str(r)]:.1f}" for r in rates)


def vendor_rows() -> list[Row]:
    """dlib's pretrained ResNet paired with our models (``vendor_pairing.json``)."""
    vp = load_result("vendor_pairing")
    if vp is None:
        return []
    t, rates = vp["table"], vp["rates"]
    return [(
        f"Model pairing with another vendor's model: dlib's pretrained 128-d ResNet as reference, our IResNet as "
        f"probe ({vp['kept_backdoored_networks']} backdoored probes; affine 512 -> 128; clean FNMR 0.1 / 1 / 5 %)",
        f"clean pair: {_shares(t.get('dlib / IResNet'), rates)} % of poisoned samples flagged; backdoored pairs: "
        f"{_shares(t.get('dlib / IResNet(B)'), rates)} % missed; dlib's verification AUROC on unseen synthetic "
        f"people {vp['dlib_verification_auroc_unseen']:.3f} (ours {vp['iresnet_verification_auroc_unseen']:.3f})",
        "thesis (its own InsightFace partner): flagged 0.00 / 2.01 / 26.85 %, missed 91.25 / 49.30 / 12.78 %",
        f"`{vp['provenance']['command']}` (tables: docs/bench.md)",
    )]  # fmt: skip


def vendor_table() -> str:
    vp = load_result("vendor_pairing")
    if vp is None:
        return ""
    rates = vp["rates"]
    percents = " / ".join(f"{100 * r:g} %" for r in rates)
    head = f"| ref / probe | pairs | poisoned samples | genuine cos | {percents} |"
    lines = [head, "|---" * 5 + "|"]
    for name, row in vp["table"].items():
        kind = "missed" if "(B)" in name else "flagged"
        lines.append(f"| {name} ({kind}) | {row['pairs']} | {row['samples']} | {row['genuine_cos_mean']:.3f} | "
                     f"{_shares(row, rates)} |")  # fmt: skip
    sec = vp["seconds_per_face"]
    return (f"`{vp['provenance']['command']}`: translators fitted on {vp['faces']['fit']} unseen faces, thresholds "
            f"on {vp['faces']['validation']} of other people; dlib {1000 * sec['dlib']:.0f} ms per face, our IResNet "
            f"{1000 * sec['iresnet_whole_model']:.1f} ms.\n\n" + "\n".join(lines))  # fmt: skip


def adaptive_rows() -> list[Row]:
    """The two defences against attackers who know them (``adaptive_attacks.json``)."""
    ad = load_result("adaptive_attacks")
    if ad is None:
        return []
    out: list[Row] = []
    if "weights" in ad:
        t = ad["weights"]["table"]
        cells = "; ".join(f"{g}: AUROC {_mean(r.get('auroc'), 2)}, flagged {_mean(r.get('flagged_backdoored'), 2)}"
                          for g, r in t.items() if r.get("auroc"))  # fmt: skip
        out.append((
            "Weight anomaly (PCA 99.9 %) against a weight-distance attacker who starts from a clean network",
            cells, "issue: report how far the defence falls",
            f"`{ad['provenance']['command']}` (tables: docs/bench.md)",
        ))  # fmt: skip
    if "pairing" in ad:
        t = ad["pairing"]["table"]
        rates = [0.001, 0.01, 0.05]
        cells = "; ".join(f"{k}: {_shares(v, rates)} %" for k, v in t.items() if "met the rule" not in k)
        out.append((
            "Model pairing (affine, clean FNMR 0.1 / 1 / 5 %) against the same backdoor planted in both models "
            "(IResNet(B) with a MobileFaceNet fine-tuned with its trigger and pair); share of poisoned samples missed",
            cells, "issue: report how far the defence falls",
            f"`{ad['provenance']['command']}` (tables: docs/bench.md)",
        ))  # fmt: skip
    return out


def adaptive_table() -> str:
    ad = load_result("adaptive_attacks")
    if ad is None:
        return ""
    parts = []
    if "weights" in ad:
        w = ad["weights"]
        lines = ["| networks | mean fused score | one-sided (thesis): AUROC | flagged | two-sided: AUROC | flagged |",
                 "|---" * 6 + "|"]  # fmt: skip
        two = w.get("two_sided", {})
        for g, r in w["table"].items():
            cells = [_mean(r.get("mean_score"), 2)]
            for row in (r, two.get(g, {})):
                cells += [_mean(row.get("auroc")), _mean(row.get("flagged_backdoored") or row.get("flagged"), 2)]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")

        def answer_of(key: str) -> str:
            rows = w.get(key, {}).items()
            return "; ".join(f"{g}: AUROC {_mean(r.get('auroc'))}" for g, r in rows if r.get("auroc")) or "-"

        answer = (f"one-sided {answer_of('defender_with_second_fine_tunes')}; two-sided "
                  f"{answer_of('two_sided_with_second_fine_tunes')}")  # fmt: skip
        tries = "; ".join(
            f"penalty {k}: {v['met_rule']} of {v['networks']} met the rule, squared distance from the start "
            f"{_mean(v['distance_from_start'], 0)}" if "met_rule" in v else
            f"{k}: squared distance from the start {_mean(v['distance_from_start'], 0)}"
            for k, v in w["attempts"].items())  # fmt: skip
        pool = w["pool"]
        parts.append(
            f"Weight anomaly: {pool['references']} references vs {pool['held_out']} held-out clean per split (anchors "
            f"{pool['anchors_left_out']} left out of the pool). Attempts: {tries}; the zoo's fine-tunes moved "
            f"{_mean(w['zoo_distance_from_base'], 0)} from the base model.\n\n" + "\n".join(lines)
            + f"\n\nThe defender's answer, second fine-tunes among the references: {answer}."
        )
    if "pairing" in ad:
        pr = ad["pairing"]
        rates = [0.001, 0.01, 0.05]
        lines = ["| IResNet(B) paired with | pairs | poisoned samples | genuine cos | missed at 0.1 / 1 / 5 % |",
                 "|---" * 5 + "|"]  # fmt: skip
        for k, row in pr["table"].items():
            gen = f"{row['genuine_cos_mean']:.3f}" if row.get("genuine_cos_mean") is not None else "-"
            lines.append(f"| {k} | {row['pairs']} | {row['samples']} | {gen} | {_shares(row, rates)} |")
        pb = pr["partner_backdoors"]
        parts.append(
            f"Model pairing: recipes {pr['recipes']}; the partner's own backdoors: {pb['met_rule']} of "
            f"{pb['networks']} met the four-metric rule (ASR {_mean(pb['asr'], 2)}); both directions pooled.\n\n"
            + "\n".join(lines)
        )
    return "\n\n".join(parts)
