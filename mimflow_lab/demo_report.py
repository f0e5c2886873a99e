"""What the demo concludes, from its result files alone: Table 5a, the sample readout, the findings, report.md.

Every verdict on a paper finding is a rule applied to measured numbers, said
in the report beside the verdict. The noise a difference is read against is
the run-to-run spread: the same MIMFlow recipe trained with two seeds
(``mimflow`` and ``mimflow-seed1``), floored by the measurement's own spread
(probe seeds, kNN folds). A difference in the paper's direction larger than
twice that noise "agrees", one as large against it "disagrees", anything
smaller "cannot tell at this scale".
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from mimflow_core.atomic import write_json
from mimflow_core.config import get_recipe
from mimflow_lab.demo import FID_CFG, FULL_MODELS, MODELS, PRESET, Budget, Stage
from mimflow_lab.tables import read_result

RULE = __doc__.split("\n\n")[1].replace("\n", " ")  # the verdict rule, as the module docstring states it
TAB5A_METRICS = ("rfid", "gfid", "precision", "recall", "probe_accuracy")
# samples a pixel classifier trained on real digits must read as their class to be called recognisable digits
RECOGNISABLE_READOUT = 80.0
# what a demo model must reach to be called one that works (each checked in the report's "Targets")
TARGETS = {"psnr_db": 22.0, "fid_ratio": 3.0, "precision": 0.3, "recall": 0.3, "knn_accuracy": 85.0}


def _run_name(path: str) -> str:
    return Path(path).parent.name


# ---------------------------------------------------------------------------------------------- Table 5a
def collect_tab5a(out: Path, budget: Budget) -> None:
    """Table 5a's rows (every model with a mask ratio), all at ``budget.fid_samples``, and the seed spread."""
    results = out / "results"
    probe = read_result(results / "probe" / "probe.json")
    rows = []
    for model in (m for m in budget.models if m.mask_ratio is not None):
        gfid = read_result(results / "fid" / f"{model.name}-gfid" / "metrics.json")
        rfid = read_result(results / "fid" / f"{model.name}-rfid" / "metrics.json")
        rows.append({"mask_ratio": model.mask_ratio, "run": model.name, "rfid": rfid["fid"], "gfid": gfid["fid"],
                     "inception_score": gfid.get("inception_score"), "precision": gfid["precision"],
                     "recall": gfid["recall"], "probe_accuracy": probe_accuracy(probe, model.name, "encoder"),
                     "train_steps": read_result(out / "runs" / model.name / "eval.json")["step"]})
    write_json(results / "tab5a" / "tab5a.json", {
        "rows": rows, "seed_spread": seed_spread(rows), "fid_samples": budget.fid_samples,
        "notes": (f"Ours: digits preset on scikit-learn digits (32 px), {budget.steps} phase-1 steps per model; "
                  f"gFID (cfg {FID_CFG:g}, no guidance) and rFID from {budget.fid_samples} samples / "
                  "reconstructions against all 300 held-out digits (fewer than the 2048 feature dimensions: "
                  "comparable between rows, not with the paper). Acc. = linear probe on encoder features before "
                  "the projection, inference mask ratio 0. Run-to-run spread = |seed 0 - seed 1| of the 0.4-0.6 "
                  "recipe: a difference between rows smaller than about twice it is not a difference."),
    })


def seed_spread(rows: list[dict]) -> dict | None:
    """|a - b| per metric between the two runs of the first mask ratio that has two (None when none has)."""
    by_ratio: dict[str, list[dict]] = {}
    for row in rows:
        by_ratio.setdefault(row["mask_ratio"], []).append(row)
    for ratio, pair in by_ratio.items():
        if len(pair) >= 2:
            a, b = pair[:2]
            return {"mask_ratio": ratio, "runs": [a["run"], b["run"]],
                    **{k: _absdiff(a.get(k), b.get(k)) for k in TAB5A_METRICS}}
    return None


def _absdiff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else abs(a - b)


def probe_accuracy(probe: dict, run: str, depth: str, mask_ratio: float = 0.0, key: str = "accuracy_mean"
                   ) -> float | None:
    """One probe number of run ``run`` (its checkpoint's directory name) at ``depth`` and inference ``mask_ratio``."""
    for row in probe.get("results", []):
        if (_run_name(row["checkpoint_path"]) == run and row["depth"] == depth
                and float(row["mask_ratio"]) == mask_ratio):
            return row[key]
    return None


# ---------------------------------------------------------------------------------------------- readout
def write_readout(results: Path, runs: list[str]) -> None:
    """How many of each model's FID samples a pixel classifier trained on real digits reads as their class.

    The samples are class-conditional (``arr_1`` holds the class each was drawn for), so this says whether they
    are digits of the intended class, the question one asks of a sample grid, as a number. The classifier is
    logistic regression on 8x8 average-pooled pixels of the training digits (the digits' native resolution);
    its accuracy on the held-out digits is the ceiling.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    from mimflow_core.data import load_dataset
    from mimflow_lab.metrics import to_uint8

    train, test = (_npz(results.parent / "data" / f"{name}.npz") for name in ("real-train-digits", "heldout-digits"))
    full = load_dataset("digits", 32, "train")
    x = to_uint8(torch.stack([full[i][0] for i in range(len(full))]))[..., 0].numpy().astype(np.float64)
    classifier = LogisticRegression(max_iter=3000).fit(_pool8(x), np.asarray(full.labels))
    models = {}
    for run in runs:
        path = results / "fid" / f"{run}-gfid" / "samples.npz"
        images, labels = _npz(path)
        models[run] = {"accuracy": 100.0 * float(np.mean(classifier.predict(_pool8(images)) == labels)),
                       "samples": int(len(labels)), "file": str(path)}
    write_json(results / "readout" / "readout.json", {
        "classifier": "scikit-learn LogisticRegression on 8x8 average-pooled training digits (all 1497)",
        "real_heldout_accuracy": 100.0 * float(np.mean(classifier.predict(_pool8(test[0])) == test[1])),
        "real_train_subset_accuracy": 100.0 * float(np.mean(classifier.predict(_pool8(train[0])) == train[1])),
        "recognisable_threshold": RECOGNISABLE_READOUT, "models": models})


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images as float (N, H, W) grey levels 0..255, labels) of an ADM image npz."""
    with np.load(path) as f:
        images, labels = f["arr_0"], f["arr_1"]
    grey = images[..., 0] if images.ndim == 4 else images
    return grey.astype(np.float64), labels.astype(np.int64)


def _pool8(images: np.ndarray) -> np.ndarray:
    n, h, w = images.shape
    return images.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64) / 255.0


# ---------------------------------------------------------------------------------------------- findings
def verdict(effect: float | None, noise: float | None) -> str:
    """'agrees' / 'disagrees' / 'cannot tell at this scale' for an effect measured in the paper's direction."""
    if effect is None or noise is None or not math.isfinite(effect):
        return "cannot tell at this scale"
    if effect > 2 * noise:
        return "agrees"
    if effect < -2 * noise:
        return "disagrees"
    return "cannot tell at this scale"


def write_findings(results: Path) -> None:
    """``findings.json``: the four paper findings the demo tests, each with the numbers, the noise, the rule's verdict."""
    probe = read_result(results / "probe" / "probe.json")
    umap = read_result(results / "umap" / "umap.json")
    jac = [read_result(results / sub / "jacobian.json") for sub in ("jacobian", "jacobian-seed1")]
    acc = lambda run, depth="encoder": probe_accuracy(probe, run, depth)  # noqa: E731
    std = lambda run, depth="encoder": probe_accuracy(probe, run, depth, key="accuracy_std") or 0.0  # noqa: E731
    out = []

    # Table 5a's Acc.: masking raises the linear-probe accuracy of the encoder (71.3 % vs 56.6 %)
    a, a1, none = acc("mimflow"), acc("mimflow-seed1"), acc("e2e-nomask")
    noise = _noise(_absdiff(a, a1), std("mimflow"), std("e2e-nomask"))
    out.append({"finding": "Table 5a Acc.: masked training (0.4-0.6) gives a higher encoder probe accuracy than "
                           "training without masking", "paper": "71.3 % vs 56.6 %",
                "ours": f"{_pct(a)} (seed 1: {_pct(a1)}) vs {_pct(none)}",
                "effect": _diff(a, none), "noise": noise, "verdict": verdict(_diff(a, none), noise)})

    # Figure 4: MIMFlow's latents cluster by class more clearly than a reference autoencoder's
    panel = {_run_name(p["checkpoint"]["path"]): p for p in umap["panels"] if "checkpoint" in p}
    k = {run: panel[run]["knn_accuracy"] for run in ("mimflow", "mimflow-seed1", "starflow") if run in panel}
    fold_se = panel["mimflow"]["knn_accuracy_std"] / math.sqrt(5) if "mimflow" in panel else None
    noise = _noise(_absdiff(k.get("mimflow"), k.get("mimflow-seed1")), fold_se)
    effect = _diff(k.get("mimflow"), k.get("starflow"))
    out.append({"finding": "Figure 4: z clusters by class more clearly for MIMFlow than for the reference "
                           "(paper: SD-VAE; ours: the STARFlow-like model's unmasked autoencoder)",
                "paper": "clearer clusters (visual)",
                "ours": f"kNN accuracy of z {_pct(k.get('mimflow'))} (seed 1: {_pct(k.get('mimflow-seed1'))}) vs "
                        f"{_pct(k.get('starflow'))}",
                "effect": effect, "noise": noise, "verdict": verdict(effect, noise)})

    # Figure 5: MIMFlow's flow is better conditioned: lower log10 kappa (and larger sigma_min) than STARFlow's
    med = {}
    for result, run in zip(jac, ("mimflow", "mimflow-seed1")):
        mine, base = result["models"][0], result["models"][1]
        med[run] = {key: base_summary(mine, key) for key in ("log10_kappa", "sigma_min")}
        med.setdefault("starflow", {key: base_summary(base, key) for key in ("log10_kappa", "sigma_min")})
    kappa_effect = _diff(med["starflow"]["log10_kappa"], med["mimflow"]["log10_kappa"])
    kappa_noise = _noise(_absdiff(med["mimflow"]["log10_kappa"], med["mimflow-seed1"]["log10_kappa"]))
    smin = {run: _log10(v["sigma_min"]) for run, v in med.items()}
    smin_effect = _diff(smin["mimflow"], smin["starflow"])
    smin_noise = _noise(_absdiff(smin["mimflow"], smin["mimflow-seed1"]))
    v_kappa, v_smin = verdict(kappa_effect, kappa_noise), verdict(smin_effect, smin_noise)
    out.append({"finding": "Figure 5: MIMFlow's flow Jacobian is better conditioned than the STARFlow-like "
                           "model's (lower log10 kappa, larger sigma_min)",
                "paper": "lower, more concentrated log10 kappa; larger sigma_min",
                "ours": (f"median log10 kappa {_num(med['mimflow']['log10_kappa'])} (seed 1: "
                         f"{_num(med['mimflow-seed1']['log10_kappa'])}) vs {_num(med['starflow']['log10_kappa'])}; "
                         f"median sigma_min {_num(med['mimflow']['sigma_min'])} (seed 1: "
                         f"{_num(med['mimflow-seed1']['sigma_min'])}) vs {_num(med['starflow']['sigma_min'])} "
                         f"(kappa: {v_kappa}; sigma_min: {v_smin})"),
                "effect": kappa_effect, "noise": kappa_noise,
                "verdict": v_kappa if v_kappa == v_smin else "cannot tell at this scale" if "disagrees" not in (
                    v_kappa, v_smin) else "disagrees"})

    # Figure 6: the probe accuracy does not rise through the flow (z -> last block)
    blocks = sorted({row["depth"] for row in probe["results"] if row["depth"].isdigit()}, key=int)
    last = blocks[-1] if blocks else None
    rise = {run: _diff(acc(run, last), acc(run, "latent")) for run in ("mimflow", "mimflow-seed1")}
    noise = _noise(_absdiff(rise["mimflow"], rise["mimflow-seed1"]), std("mimflow", "latent"),
                   std("mimflow", last) if last else None)
    # the paper's claim is an absence: a rise beyond the noise disagrees with it, anything else agrees
    significant_rise = verdict(rise["mimflow"], noise) == "agrees"
    out.append({"finding": "Figure 6: the linear-probe accuracy does not increase with flow depth",
                "paper": "plateaus or slightly declines after the encoder",
                "ours": (f"MIMFlow encoder {_pct(acc('mimflow'))}, z {_pct(acc('mimflow', 'latent'))}, "
                         f"block {last} {_pct(acc('mimflow', last))} (z -> block {last}: {_signed(rise['mimflow'])} "
                         f"points; seed 1: {_signed(rise['mimflow-seed1'])})"),
                "effect": rise["mimflow"], "noise": noise,
                "verdict": "cannot tell at this scale" if rise["mimflow"] is None
                else "disagrees" if significant_rise else "agrees"})
    write_json(results / "findings.json", {"rule": RULE, "findings": out})


def base_summary(model: dict, key: str) -> float | None:
    return (model.get("summary", {}).get(key) or {}).get("median")


def _noise(*values: float | None) -> float | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return max(known) if known else None


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _log10(v: float | None) -> float | None:
    return None if v is None or v <= 0 else math.log10(v)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} %"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


# ---------------------------------------------------------------------------------------------- report
def render_report(out: Path, budget: Budget, stages: list[Stage], drawn, timings: dict, seconds: float) -> str:
    """report.md: models with grids and held-out reconstruction, generation metrics, Table 5a, findings, figures."""
    results = out / "results"
    c = budget.costs
    batch = get_recipe(PRESET).batch_size
    lines = ["# MIMFlow Lab demo report", "",
             f"Small MIMFlow models (the `digits` preset) trained on scikit-learn's digits (32 px, CPU): {budget.steps} phase-1 steps of "
             f"{batch} images per model, {budget.fid_samples} samples per FID. Budget {budget.minutes:g} min, this run "
             f"{seconds / 60:.1f} min ({budget.jobs} jobs x {c.threads} threads; measured at start: {c.step_s:.2f} s "
             f"per training step, {c.inception_images_s:.1f} Inception images/s per job). Every number below is "
             f"read from the result files in `{results}`; rerunning `mimflow-lab demo --out {out}` resumes and "
             "redraws.", ""]
    lines += _targets_section(out, budget)
    lines += _models_section(out, budget)
    lines += _generation_section(out, budget)
    tab = out / "figures" / "tab5a_masking.md"
    if tab.exists():
        lines += ["", tab.read_text().replace("# Table 5a", "## Table 5a").rstrip()]
    lines += ["", "## The paper's findings at this scale", "",
              "Rule: " + RULE, "",
              "| finding | paper | ours | effect | noise | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {f['finding']} | {f['paper']} | {f['ours']} | {_num(f['effect'])} | {_num(f['noise'])} | "
              f"**{f['verdict']}** |" for f in read_result(results / "findings.json")["findings"]]
    lines += ["", "## Figures", ""]
    for item in drawn:
        if item.files is None:
            lines.append(f"- {item.recipe.title}: **missing** `{item.result_path}` (make it with "
                         f"`{item.recipe.command}`)")
            continue
        for kind, path in sorted(item.files.items()):
            rel = _rel(out, path)
            lines.append(f"- {item.recipe.title} ({kind}): [{rel}]({rel})")
            if kind == "png":
                lines.append(f"\n  ![{item.recipe.title}]({rel})\n")
    lines += ["", "## Commands and wall times", "", "| stage | command | wall s |", "| --- | --- | --- |"]
    lines += [f"| {s.name} | `{s.command}` | {'-' if timings.get(s.name) is None else timings[s.name]} |"
              for s in stages]
    lines += ["", "'-' = done by an earlier run (resumed)."]
    return "\n".join(lines) + "\n"


def _targets_section(out: Path, budget: Budget) -> list[str]:
    """Whether the models are good enough for their numbers to mean something, target by target."""
    fid, t = out / "results" / "fid", TARGETS
    main, untrained = (read_result(fid / f"{run}-gfid" / "metrics.json") for run in ("mimflow", "untrained"))
    panels = {_run_name(p["checkpoint"]["path"]): p for p in read_result(out / "results" / "umap" / "umap.json")["panels"]
              if "checkpoint" in p}
    knn = panels.get("mimflow", {}).get("knn_accuracy")
    psnr = {m.name: read_result(out / "runs" / m.name / "eval.json").get("recon_psnr_db") for m in budget.models}
    checks = [
        (f"held-out PSNR >= {t['psnr_db']:g} dB, every phase-1 model",
         ", ".join(f"{run} {_num(v)}" for run, v in psnr.items()), all((v or 0) >= t["psnr_db"] for v in psnr.values())),
        (f"MIMFlow's FID >= {t['fid_ratio']:g}x lower than the untrained model's",
         f"{untrained['fid'] / main['fid']:.2f}x", untrained["fid"] / main["fid"] >= t["fid_ratio"]),
        (f"MIMFlow's precision and recall >= {t['precision']:g}",
         f"{main['precision']:.2f} / {main['recall']:.2f}",
         main["precision"] >= t["precision"] and main["recall"] >= t["recall"]),
        (f"kNN accuracy of MIMFlow's z >= {t['knn_accuracy']:g} %", _pct(knn), (knn or 0) >= t["knn_accuracy"]),
    ]
    lines = ["## Targets", "", "What a model must reach for the analyses below to describe a model that works.", "",
             "| target | measured | |", "| --- | --- | --- |"]
    lines += [f"| {name} | {value} | {'met' if ok else '**missed**'} |" for name, value, ok in checks]
    return lines + [""]


def _models_section(out: Path, budget: Budget) -> list[str]:
    readout = read_result(out / "results" / "readout" / "readout.json")
    roles = {m.name: m.role for m in MODELS + FULL_MODELS}
    roles["mimflow-gan"] = "phase 2: MIMFlow's decoder fine-tuned with the PatchGAN (alpha 0.05)"
    lines = ["## Models", "",
             "Held-out digits (300, EMA weights). Readout: the share of the model's class-conditional FID samples "
             f"(cfg {FID_CFG:g}) "
             f"that a pixel classifier trained on real digits reads as the class they were drawn for (real "
             f"held-out digits: {_pct(readout['real_heldout_accuracy'])}); at least "
             f"{RECOGNISABLE_READOUT:.0f} % is called recognisable digits of the row's class.", "",
             "| run | role | steps | PSNR dB | MSE | flow bits/dim | readout | samples |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    grids = []
    for run in [m.name for m in budget.models] + ["mimflow-gan"]:
        path = out / "runs" / run / "eval.json"
        if not path.exists():
            continue
        ev = read_result(path)
        read = readout["models"].get(run, {}).get("accuracy")
        judged = "-" if read is None else ("recognisable digits" if read >= RECOGNISABLE_READOUT
                                           else "not reliably recognisable")
        lines.append(f"| {run} | {roles.get(run, '')} | {ev.get('step')} | {_num(ev.get('recon_psnr_db'))} | "
                     f"{_num(ev.get('recon_mse'))} | {_num(ev.get('bpd_heldout'))} | {_pct(read)} | {judged} |")
        grids.append(f"**{run}** — samples (cfg {ev.get('sample_cfg')}, one class per row) and reconstructions "
                     "(originals / from clean input / from 50 %-masked input):\n\n"
                     f"![{run} samples](runs/{run}/samples.png) ![{run} reconstructions](runs/{run}/reconstructions.png)\n")
    untrained = readout["models"].get("untrained", {}).get("accuracy")
    lines += ["", f"Untrained model of the same architecture: readout {_pct(untrained)} (chance: 10 %).", "", *grids]
    return lines


def _generation_section(out: Path, budget: Budget) -> list[str]:
    fid = out / "results" / "fid"
    lines = ["## Generation (ADM protocol, k = 3 for precision and recall)", "",
             f"{budget.fid_samples} class-balanced samples (cfg {FID_CFG:g}, no guidance) per model against all 300 "
             "held-out digits; "
             f"the ceiling row is {budget.fid_samples} real training digits against the same reference.", "",
             "| samples | FID | sFID | precision | recall | FID / MIMFlow's |", "| --- | --- | --- | --- | --- | --- |"]
    base = read_result(fid / "mimflow-gfid" / "metrics.json")["fid"]
    rows = [(f"{m.name}", fid / f"{m.name}-gfid") for m in budget.models]
    rows += [("untrained (same architecture)", fid / "untrained-gfid"), ("real digits (ceiling)", fid / "real-digits")]
    for name, where in rows:
        m = read_result(where / "metrics.json")
        lines.append(f"| {name} | {_num(m['fid'])} | {_num(m.get('sfid'))} | {_num(m['precision'])} | "
                     f"{_num(m['recall'])} | {_num(m['fid'] / base)} |")
    untrained = read_result(fid / "untrained-gfid" / "metrics.json")["fid"]
    main = read_result(fid / "mimflow-gfid" / "metrics.json")
    lines += ["", f"MIMFlow's FID is {untrained / base:.1f}x lower than the untrained model's; its precision "
                  f"{main['precision']:.2f} and recall {main['recall']:.2f}."]
    return lines


def _rel(out: Path, path: str | Path) -> Path:
    path = Path(path)
    return path.relative_to(out) if path.is_relative_to(out) else path

