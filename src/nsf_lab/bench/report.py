"""``nsf report DIR``: tables (markdown) and plots (PNG, matplotlib Agg) from a bench run directory."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from nsf.registry import spec_to_str

from nsf_lab.experiment import stats as S
from nsf_lab.experiment.sweep import STARTS_LOG, Sweep
from nsf_lab.experiment.util import save_figure
from nsf_lab.experiment.tuner import Grid, default_max_points

from .protocol import Decided, Planner, failed
from .suites import suite_from_dict
from nsf_lab.experiment.tasks import get_task

BASELINE_LABELS = ("SGD-M", "Adam", "AdamW", "Padam")


# ----------------------------------------------------------------------------------------------------------
# Numbers

def time_to_target(steps, acc, total_steps, target):
    """First fraction ``step / total_steps`` at which ``acc`` (a mean curve on the eval grid) reaches ``target``.

    Returns None when the target is never reached.
    """
    for s, a in zip(steps, acc):
        if a is not None and not (isinstance(a, float) and math.isnan(a)) and a >= target - 1e-12:
            return s / total_steps
    return None


def budget_to_target(final_acc_by_budget: dict, target):
    """Smallest budget fraction whose final mean accuracy reaches ``target`` (None if none does)."""
    for b in sorted(final_acc_by_budget):
        if final_acc_by_budget[b] >= target - 1e-12:
            return b
    return None


def _pct(xs) -> str:
    return S.fmt_mean_sd(xs, 100.0)


def _mean_curve(dec, runs, key="acc"):
    """Mean and std over seeds on the shared eval grid (runs that diverged are left out of the curve)."""
    cs = []
    for r in runs:
        if r["final"].get("diverged"):
            continue
        c = dec.store.curves(r["run_id"])
        cs.append(c)
    if not cs:
        return None
    n = min(len(c["step"]) for c in cs)
    arr = np.array([[np.nan if v is None else v for v in c[key][:n]] for c in cs], dtype=float)
    return {"step": cs[0]["step"][:n], "epoch": cs[0]["epoch"][:n], "frac": cs[0]["frac"][:n],
            "mean": np.nanmean(arr, 0), "std": np.nanstd(arr, 0), "n": len(cs)}


# ----------------------------------------------------------------------------------------------------------
# Per-task analysis

def analyse(dec: Decided) -> dict:
    opts = dec.optimizers()
    out = {"tasks": {}, "opts": opts}
    for task in dec.suite.tasks:
        t = get_task(task)
        text = t.dataset == "shakespeare"
        rows = {}
        for label, spec in opts:
            tun = dec.tuning(task, label) or {"lr": None, "tried": [], "flags": []}
            rows[label] = {"spec": spec, "lr": tun["lr"], "tried": tun["tried"], "flags": tun["flags"],
                           "runs": dec.final_runs(task, label, spec)}
        present = {k: v for k, v in rows.items() if v["runs"]}
        base = [k for k in present if k in BASELINE_LABELS]
        best_base = min(base, key=lambda k: S.mean([r["final"]["error"] for r in present[k]["runs"]])) if base else None
        res = {"rows": rows, "best_baseline": best_base, "text": text}
        if best_base and "NSF default" in present:
            target = 1.0 - S.mean([r["final"]["error"] for r in present[best_base]["runs"]])
            nsf = present["NSF default"]
            curve = _mean_curve(dec, nsf["runs"])
            total = nsf["runs"][0]["final"]["steps"]
            res["target"] = target
            res["ttt_curve"] = time_to_target(curve["step"], curve["mean"], total, target) if curve else None
            finals = {1.0: 1.0 - S.mean([r["final"]["error"] for r in nsf["runs"]])}
            budget_runs = {1.0: nsf["runs"]}
            for b in dec.suite.budgets:
                rb = dec.final_runs(task, "NSF default", nsf["spec"], b)
                if rb:
                    finals[b] = 1.0 - S.mean([r["final"]["error"] for r in rb])
                    budget_runs[b] = rb
            res["budget_acc"] = finals
            res["budget_runs"] = budget_runs
            res["ttt_budget"] = budget_to_target(finals, target)
            # same measure for the best baseline against its own final accuracy (sanity / reference)
        out["tasks"][task] = res
    return out


# ----------------------------------------------------------------------------------------------------------
# Plots

def _plots(dec: Decided, an: dict, outdir: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for task, res in an["tasks"].items():
        labels = [k for k, v in res["rows"].items() if v["runs"]]
        if not labels:
            continue
        cmap = plt.get_cmap("tab10")
        colors = {k: cmap(i % 10) for i, k in enumerate(labels)}
        styles = {k: ("-" if i < 10 else "--") for i, k in enumerate(labels)}
        curves = {k: (_mean_curve(dec, res["rows"][k]["runs"], "acc"),
                      _mean_curve(dec, res["rows"][k]["runs"], "loss")) for k in labels}
        fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
        for k in labels:
            ca, cl = curves[k]
            if ca is None:
                continue
            lw = 2.4 if k in ("NSF default", res["best_baseline"]) else 1.0
            for ax, c in ((axes[0], ca), (axes[1], cl)):
                x = np.array(c["epoch"])
                ax.plot(x, c["mean"], styles[k], color=colors[k], lw=lw, label=k)
                ax.fill_between(x, c["mean"] - c["std"], c["mean"] + c["std"], color=colors[k], alpha=0.15)
            axes[2].plot(cl["mean"], ca["mean"], "-o", ms=2, color=colors[k], lw=lw, label=k)
        axes[0].set(xlabel="epoch", ylabel="test accuracy", title=f"{task}: accuracy (mean ± std over seeds)")
        axes[1].set(xlabel="epoch", ylabel="test loss", title=f"{task}: loss")
        axes[1].set_yscale("log")
        axes[2].set(xlabel="test loss", ylabel="test accuracy", title="accuracy against loss (alignment)")
        axes[2].set_xscale("log")
        if "target" in res:
            axes[0].axhline(res["target"], color="k", ls=":", lw=1)
        axes[0].legend(fontsize=6, loc="lower right")
        files[task, "curves"] = Path(save_figure(fig, outdir / f"{task}_curves.png", dpi=90)).name
        if "budget_runs" in res:
            fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
            full_steps = res["budget_runs"][1.0][0]["final"]["steps"]
            for b, runs in sorted(res["budget_runs"].items()):
                c = _mean_curve(dec, runs, "acc")
                if c is None:
                    continue
                x = np.array(c["step"]) / full_steps
                ax[0].plot(x, c["mean"], label=f"NSF default, budget {b:g}")
                ax[0].fill_between(x, c["mean"] - c["std"], c["mean"] + c["std"], alpha=0.15)
            cb = _mean_curve(dec, res["rows"][res["best_baseline"]]["runs"], "acc")
            if cb is not None:
                ax[0].plot(np.array(cb["step"]) / full_steps, cb["mean"], "k--", label=f"{res['best_baseline']} (full)")
            ax[0].axhline(res["target"], color="k", ls=":", lw=1)
            ax[0].set(xlabel="fraction of the baseline budget (optimizer steps)", ylabel="test accuracy",
                      title=f"{task}: budget curves")
            ax[0].legend(fontsize=7)
            bs = sorted(res["budget_acc"])
            ax[1].plot(bs, [res["budget_acc"][b] for b in bs], "o-", label="NSF default final acc")
            ax[1].axhline(res["target"], color="k", ls=":", label="best baseline final acc (target)")
            ax[1].set(xlabel="budget fraction", ylabel="final test accuracy (mean)", xticks=bs)
            ax[1].legend(fontsize=7)
            files[task, "budget"] = Path(save_figure(fig, outdir / f"{task}_budget.png", dpi=90)).name
    return files


# ----------------------------------------------------------------------------------------------------------
# Markdown

def _fmt_frac(x):
    return "not reached" if x is None else f"{x:.2f}"


def code_line(store) -> str | None:
    """Which code ran the runs, from the run directory's ``starts.log`` (``nsf bench`` appends a line per start:
    time, commit, arguments); None where there is none (an in-memory store, an older directory)."""
    root = getattr(store, "root", None)
    starts = Path(root) / STARTS_LOG if root else None
    if not (starts and starts.exists()):
        return None
    return ("- code: the runs finished after each start below ran that commit (`starts.log`, records' "
            "`finished_at`): " + "; ".join(f"`{line.strip()}`" for line in starts.read_text().splitlines()
                                           if line.strip()))


def render(dec: Decided, an: dict, files: dict, img_prefix: str = "", notes: str = "") -> str:
    recs = list(dec.store.records().values())
    L = []
    s = dec.suite
    L.append(f"# nsf bench report: suite `{s.name}`\n")
    wall = sum(r.get("wall_s") or 0.0 for r in recs)
    vers = recs[0].get("versions", {}) if recs else {}
    devs = sorted({f"{r.get('device')} x{r.get('threads')} thread(s)" for r in recs})
    n_div = sum(1 for r in recs if r["final"].get("diverged"))
    n_fail = sum(1 for r in recs if failed(r))
    L.append(f"- runs: {len(recs)} finished ({n_div} diverged, all kept{f'; {n_fail} failed' if n_fail else ''}); "
             f"summed run wall time "
             f"{wall / 60:.1f} min; device: {', '.join(devs) or 'n/a'}")
    times = sorted(r["finished_at"] for r in recs if r.get("finished_at"))
    if times:
        import datetime as _dt
        t0 = _dt.datetime.strptime(times[0], "%Y-%m-%dT%H:%M:%SZ")
        t1 = _dt.datetime.strptime(times[-1], "%Y-%m-%dT%H:%M:%SZ")
        first = min(recs, key=lambda r: r.get("finished_at", "~"))
        el = (t1 - t0).total_seconds() + (first.get("wall_s") or 0.0)
        L.append(f"- sweep elapsed (first run start to last run end, data loading included): {el / 60:.1f} min "
                 f"({times[0]} → {times[-1]})")
    L.append("- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    code = code_line(dec.store)
    if code:
        L.append(code)
    L.append(f"- protocol: LR of each optimizer tuned on the validation split ({_tuning_text(s)}); then seeds {s.seeds} at "
             f"the chosen LR on the test set; NSF default also at budgets {s.budgets} (schedule compressed). "
             f"Error = 1 − accuracy (next-character accuracy for text).\n")
    if notes:
        L.append(notes.rstrip() + "\n")
    if s.search is not None:
        L += _render_search(dec)
    # overall table
    L.append("## Overall: best baseline vs NSF default (test error %, mean ± std over seeds)\n")
    L.append("| task | best baseline | its error | NSF default error | Δ (NSF − base) | time to target (curve) "
             "| time to target (budget runs) |")
    L.append("|---|---|---|---|---|---|---|")
    for task, res in an["tasks"].items():
        bb = res["best_baseline"]
        nsf = res["rows"].get("NSF default", {}).get("runs", [])
        if not bb or not nsf:
            continue
        be = [r["final"]["error"] for r in res["rows"][bb]["runs"]]
        ne = [r["final"]["error"] for r in nsf]
        L.append(f"| {task} | {bb} | {_pct(be)} | {_pct(ne)} | {100 * (S.mean(ne) - S.mean(be)):+.2f} | "
                 f"{_fmt_frac(res.get('ttt_curve'))} | {_fmt_frac(res.get('ttt_budget'))} |")
    L += _render_matrix(an)
    L.append("\nTime to target: the fraction of the baseline budget (optimizer steps) at which NSF default's mean "
             "test accuracy first reaches the best baseline's final mean test accuracy — *curve*: on the eval grid "
             "of the full-budget NSF runs; *budget runs*: the smallest compressed budget (¼, ½, 1) whose final "
             "mean accuracy reaches it.\n")
    # per task
    for task, res in an["tasks"].items():
        t = get_task(task)
        L.append(f"## {task}\n")
        L.append(f"dataset `{t.dataset}`, model `{t.model}` {t.model_kw}, {t.epochs:g} epochs, batch {t.batch_size}, "
                 f"LR: linear warm-up {t.warmup:.0%} then cosine to 0; val split {t.val_frac:.0%} of train.\n")
        text = res["text"]
        hdr = "| optimizer | spec | lr | seeds (div.) | test error % | test loss | best acc % | ECE |"
        if text:
            hdr = "| optimizer | spec | lr | seeds (div.) | test error % | test loss (nats/char) | perplexity | best acc % |"
        L.append(hdr)
        L.append("|" + "---|" * (hdr.count("|") - 1))
        for label, row in res["rows"].items():
            runs = row["runs"]
            if not runs:
                L.append(f"| {label} | `{spec_to_str(row['spec'])}` | {row['lr']} | 0 | (not run) | | | |")
                continue
            f = [r["final"] for r in runs]
            nd = sum(1 for x in f if x.get("diverged"))
            cols = [label + (" **(best baseline)**" if label == res["best_baseline"] else ""), f"`{spec_to_str(row['spec'])}`",
                    f"{row['lr']:.3g}", f"{len(f)} ({nd})", _pct([x["error"] for x in f]),
                    S.fmt_mean_sd([x["loss"] for x in f], 1.0, 4)]
            if text:
                cols += [S.fmt_mean_sd([x.get("ppl") for x in f], 1.0), _pct([x["best_acc"] for x in f])]
            else:
                cols += [_pct([x["best_acc"] for x in f]), S.fmt_mean_sd([x.get("ece") for x in f], 1.0, 3)]
            L.append("| " + " | ".join(cols) + " |")
        L.append("")
        if "budget_acc" in res:
            L.append("NSF default at compressed budgets (final test accuracy %, mean ± std): " + "; ".join(
                f"{b:g} → {_pct([1 - r['final']['error'] for r in res['budget_runs'][b]])}"
                for b in sorted(res["budget_runs"])) + f". Target (best baseline final): {100 * res['target']:.2f} %.\n")
        L.append("<details><summary>LR tuning (validation error % per grid LR; † diverged)</summary>\n")
        for label, row in res["rows"].items():
            items = [f"{lr:.3g}: " + ("†" if m["diverged"] else f"{100 * m['error']:.2f}") for lr, m in row["tried"]]
            L.append(f"- {label}: " + ", ".join(items) + (f" → **{row['lr']:.3g}**" if row["lr"] else "")
                     + (f" (flags: {', '.join(row['flags'])})" if row["flags"] else ""))
        L.append("\n</details>\n")
        for kind in ("curves", "budget"):
            if (task, kind) in files:
                L.append(f"![{task} {kind}]({img_prefix}{files[task, kind]})\n")
    return "\n".join(L) + "\n"


def _render_matrix(an: dict) -> list[str]:
    """All optimizers x tasks (mean test error %), and the raw vs grafted comparison."""
    labels = []
    for k, _ in an["opts"]:  # the suite's order
        if k not in labels and any(res["rows"].get(k, {}).get("runs") for res in an["tasks"].values()):
            labels.append(k)
    tasks = list(an["tasks"])
    L = ["", "### All optimizers: test error % (mean ± std over seeds)", "",
         "| optimizer | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for k in labels:
        cells = []
        for t in tasks:
            row = an["tasks"][t]["rows"].get(k)
            cells.append(_pct([r["final"]["error"] for r in row["runs"]]) if row and row["runs"] else "")
        L.append(f"| {k} | " + " | ".join(cells) + " |")
    graft = [k for k in ("NSF cyclic raw", "NSF cyclic sgd", "NSF cyclic adam") if k in labels]
    if len(graft) > 1:
        L += ["", "### Raw vs grafted (same p schedule, each with its own tuned LR): test error % and test loss", "",
              "| task | " + " | ".join(graft) + " |", "|---|" + "---|" * len(graft)]
        for t in tasks:
            cells = []
            for k in graft:
                row = an["tasks"][t]["rows"].get(k)
                if row and row["runs"]:
                    f = [r["final"] for r in row["runs"]]
                    cells.append(f"{_pct([x['error'] for x in f])} / {S.fmt_mean_sd([x['loss'] for x in f], 1.0, 3)}"
                                 f" (lr {row['lr']:.3g})")
                else:
                    cells.append("")
            L.append(f"| {t} | " + " | ".join(cells) + " |")
    return L


def _tuning_text(s) -> str:
    seeds = f"seed {s.tune_seeds[0]}" if len(s.tune_seeds) == 1 else f"mean over seeds {s.tune_seeds}"
    if s.rule == "walk":
        return (f"{seeds}, full budget, shared half-decade grid walked from a reference point, "
                f"≤ {s.max_points or default_max_points('walk', Grid.default())} points")
    return (f"{seeds}, full budget, the whole half-decade grid 1e-5..10, extended until the best point has two "
            f"worse points on each side, then refined a quarter decade either side; criterion {s.criterion}")


def _render_search(dec: Decided) -> list[str]:
    det = dec.search()
    L = ["## Choice of the NSF default (declared search on validation splits)\n"]
    if det is None:
        L.append("(search not finished)\n")
        return L
    win = det["winner"]
    s = dec.suite.search
    L.append(f"Tasks: {', '.join(s.tasks)} (validation split carved from train; test never used). Each candidate's "
             f"LR is tuned by the same grid walk; score = mean over tasks of the best validation error (tie: "
             f"validation loss). Stage A: p range × scale mode at period 250 steps, cosine; stage B: stage-A "
             f"winner × period {s.periods} × shape {s.shapes}. "
             + (f"One seed ({ts[0]}).\n" if len(ts := dec.suite.tune_seeds) == 1 else f"Mean over seeds {ts}.\n"))
    for stage in ("stage_a", "stage_b"):
        L.append(f"**{stage.replace('_', ' ').title()}**\n")
        L.append("| candidate | mean val error % | mean val loss | " + " | ".join(f"{t} (lr, val err %)" for t in s.tasks) + " |")
        L.append("|---|---|---|" + "---|" * len(s.tasks))
        for row in sorted(det[stage], key=lambda r: (r["error"], r["loss"])):
            cells = [f"{p['lr']:.3g}, †" if p["diverged"] else f"{p['lr']:.3g}, {100 * p['error']:.2f}"
                     for p in row["per_task"]]
            mark = " **(winner)**" if row["spec"] == win else ""
            L.append(f"| `{spec_to_str(row['spec'])}`{mark} | {100 * row['error']:.2f} | {row['loss']:.4f} | "
                     + " | ".join(cells) + " |")
        L.append("")
    L.append(f"**Winner: `{spec_to_str(win)}`** — used as \"NSF default\" in every table below.\n")
    return L


def load(run_dir) -> Decided:
    """The recorded sweep in ``run_dir``: its suite and ``decisions.json``.  Where ``decisions.json`` is missing
    (a directory from before it) or older than ``runs.jsonl`` (a driver killed mid-sweep), the decisions are
    derived from ``runs.jsonl`` by the suite's planner instead (not written: the driver is their writer)."""
    sw = Sweep.open(run_dir)
    suite = suite_from_dict(sw.suite)
    d = sw.decisions()
    runs = sw.store.path
    if d is None or (runs.exists() and sw.decisions_file.stat().st_mtime_ns < runs.stat().st_mtime_ns):
        d = Planner(suite, sw.store).decisions()  # no decisions.json, or older than the last finished run
    return Decided(suite, sw.store, d)


def write_report(run_dir, results_md=None, plots_dir=None, plot_prefix: str = "", notes=None) -> Path:
    """Write DIR/report.md, DIR/plots/*.png, DIR/summary.json; optionally also ``results_md`` with its plots
    copied to ``plots_dir`` (default: ``results_plots/`` beside it) under ``plot_prefix + name``."""
    from . import evidence_md as E
    dec = load(run_dir)
    run_dir = Path(run_dir)
    if E.is_evidence(dec):  # the declared evidence protocol has its own analysis and layout
        an = E.analyse(dec)
        files, draw, summary = E.plots(dec, an, run_dir / "plots"), E.render, E.summary(an)
    else:
        an = analyse(dec)
        files, draw, summary = _plots(dec, an, run_dir / "plots"), render, _summary(an)
    note = dec.suite.note  # e.g. the quick suite's: a miniature that decides nothing
    md = draw(dec, an, files, img_prefix="plots/", notes=note)
    path = run_dir / "report.md"
    path.write_text(md)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if results_md:
        results_md = Path(results_md)
        results_md.parent.mkdir(parents=True, exist_ok=True)
        img_dir = Path(plots_dir) if plots_dir else results_md.parent / "results_plots"
        img_dir.mkdir(parents=True, exist_ok=True)
        for f in set(files.values()):
            shutil.copy(run_dir / "plots" / f, img_dir / (plot_prefix + f))
        rel = os.path.relpath(img_dir, results_md.parent)
        text = "\n\n".join(t for t in (note, Path(notes).read_text() if notes else "") if t)
        results_md.write_text(draw(dec, an, files, img_prefix=rel + "/" + plot_prefix, notes=text))
    return path


def _summary(an: dict) -> dict:
    out = {}
    for task, res in an["tasks"].items():
        out[task] = {"best_baseline": res["best_baseline"], "ttt_curve": res.get("ttt_curve"),
                     "ttt_budget": res.get("ttt_budget"), "target": res.get("target"),
                     "errors": {k: [r["final"]["error"] for r in v["runs"]] for k, v in res["rows"].items()},
                     "lr": {k: v["lr"] for k, v in res["rows"].items()}}
    return out
