"""``nsf report`` for an evidence-protocol sweep (docs/evidence.md): verdict tables per claim × arm kind, the
paired effects with their CIs, power, time to target and early alignment, and two plots per task.  The
numbers come from :mod:`nsf_lab.bench.verdicts`; this module only lays them out."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nsf_lab.experiment import stats as S
from nsf_lab.experiment.util import jsonable, save_figure

from . import verdicts as V
from .report import code_line

KINDS = ("tuned", "tied", "one-shot")


def is_evidence(dec) -> bool:
    """A sweep of the evidence protocol (tied and one-shot arms, budgets re-tuned)."""
    return getattr(dec.suite, "protocol", None) == "evidence" or dec.suite.name.startswith("evidence")


def count_test_examples(task: str, data_root: str | None = None) -> int | None:
    """Examples (characters for text) in a task's test set; None where the data cannot be loaded here."""
    from .protocol import eval_size
    try:
        return eval_size(task, "test", data_root)
    except Exception:  # noqa: BLE001 -- a missing dataset only makes the margin rule conservative
        return None


def analyse(dec, data_root: str | None = None) -> dict:
    recs = list(dec.store.records().values())
    design = V.design_of(getattr(dec.suite, "protocol", None))
    arms = V.arms_of(dec)
    best = {t: (dec.decisions.get("best_baseline") or {}).get(t) for t in arms}  # chosen on validation by the planner
    n_test = {t: count_test_examples(t, data_root) for t in arms}
    curves_of = lambda r: dec.store.curves(r["run_id"])  # noqa: E731
    c12 = V.claim_c1_c2(arms, best, n_test, design)
    ttt = {}
    # C3 family: P1 on every task with budget runs; Bonferroni level (a bootstrap has no Holm p-value)
    budget_tasks = getattr(dec.suite, "budget_tasks", None)  # None: every task has budget runs
    m = max(1, len(budget_tasks or arms))
    for t, a in arms.items():
        if "NSF default" in a and best[t] in a:
            ttt[t] = V.time_to_target(a["NSF default"], a[best[t]], level=1 - V.ALPHA / m)
    c4 = V.claim_c4(arms, best, curves_of, design)
    fsgdm = {t: V.alignment(a["NSF default"], a["FSGDM"], curves_of)
             for t, a in arms.items() if "NSF default" in a and "FSGDM" in a}
    an = {"arms": arms, "best": best, "n_test": n_test, "C1": c12["C1"], "C2": c12["C2"], "C3": ttt,
          "C4": c4, "C4_fsgdm": fsgdm, "power": V.power_table(arms, best, n_test, design=design), "records": recs,
          "design": design, "budget_tasks": budget_tasks}
    if design.counted_once:
        from . import evidence3_md
        an["v3"] = evidence3_md.analyse(dec, an)
    return an


# ----------------------------------------------------------------------------------------------------------
# Formatting

def _ci(res, digits=2) -> str:
    if not res:
        return "n/a"
    return f"{res['diff']:+.{digits}f} [{res['lo']:+.{digits}f}, {res['hi']:+.{digits}f}]"


def _n(res) -> str:
    """Seeds paired, and those left out (diverged, or run by one arm only)."""
    if not res:
        return "0"
    return f"{res['n']}" + (f" (−{len(res['left_out'])})" if res.get("left_out") else "")


def _budget(x: float) -> str:
    return "never" if math.isinf(x) else "n/a" if math.isnan(x) else f"{x:.2f}"


def banner(dec, n_done: int) -> list[str]:
    """The PARTIAL banner of an unfinished sweep (never shown as finished)."""
    d = dec.decisions or {}
    if d.get("complete"):
        return [f"Complete: all {n_done} planned runs finished.\n"]
    from .protocol import dry_run
    total = dry_run(dec.suite, dec.store)["total"]
    return [f"> **PARTIAL: {n_done} of about {total} planned runs finished** (a dry run's estimate: every LR "
            "search not yet done ends at its first bracket). Every table below covers the runs finished so far; "
            "verdicts on a partial sweep are provisional.\n"]


def render(dec, an: dict, files: dict, img_prefix: str = "", notes: str = "") -> str:
    recs = an["records"]
    doc = "docs/evidence_v3.md" if "v3" in an else "docs/evidence.md"
    L = [f"# nsf bench report: suite `{dec.suite.name}` (evidence protocol, {doc})\n"]
    L += banner(dec, len(recs))
    vers = recs[0].get("versions", {}) if recs else {}
    L.append(f"- runs: {len(recs)} finished ({sum(1 for r in recs if r['final'].get('diverged'))} diverged, "
             f"kept); summed run wall time {sum(r.get('wall_s') or 0.0 for r in recs) / 60:.1f} min; versions: "
             + ", ".join(f"{k} {v}" for k, v in vers.items()))
    code = code_line(dec.store)
    if code:
        L.append(code)
    L.append("- paired over seeds (every arm shares a seed's initialisation and batch order); Δ = NSF arm − "
             "baseline arm; error in points (percentage points), loss in nats.\n")
    if notes:
        L.append(notes.rstrip() + "\n")
    L += _summary(an)
    if "v3" in an:
        from . import evidence3_md
        L += evidence3_md.render(an, dec.suite)
    L += _paired_tables(an)
    L += _power(an)
    L += _ttt(an)
    L += _alignment(an)
    L += _arms(an)
    for task in an["arms"]:
        for kind in ("budget", "early"):
            if (task, kind) in files:
                L.append(f"![{task} {kind}]({img_prefix}{files[task, kind]})\n")
    return "\n".join(L) + "\n"


def _summary(an: dict) -> list[str]:
    L = ["## Verdicts per claim × arm kind\n",
         an["design"].intro + " Cells: verdict, Δ and its Holm-corrected CI. Last column: the tuned NSF arms against "
         "FSGDM (secondary: Δ and 95 % CI, no verdict).\n",
         "| task | claim | " + " | ".join(KINDS) + " | vs FSGDM |", "|---|---|" + "---|" * (len(KINDS) + 1)]
    for task in an["arms"]:
        for claim, rows, cell, fsgdm in (
                ("C1 error (pt)", an["C1"]["rows"], lambda r: _ci(r["res"]), _fsgdm(an["C1"]["secondary"], task)),
                ("C2 loss", an["C2"]["rows"], lambda r: _ci(r["res"], 4), _fsgdm(an["C2"]["secondary"], task, 4)),
                ("C4 acc at matched train loss (pt)", an["C4"]["rows"],
                 lambda r: _ci(r["res"]["train"]["res"]) if r["res"] else "n/a", _fsgdm_alignment(an, task))):
            cells = []
            for kind in KINDS:
                rs = [r for r in rows if r["task"] == task and r["kind"] == kind]
                cells.append("; ".join(f"{r['id']} **{r['verdict']}** {cell(r)}" for r in rs) or "—")
            L.append(f"| {task} | {claim} | " + " | ".join(cells) + f" | {fsgdm} |")
        t = an["C3"].get(task)
        c3 = f"P1 **{t['verdict']}** ratio {_budget(t['ratio'][0])} [{_budget(t['ratio'][1])}, " \
             f"{_budget(t['ratio'][2])}]" if t else _c3_absent(an, task)
        L.append(f"| {task} | C3 time to target | {c3} | — | — | — |")
    L.append("")
    return L


def _fsgdm(secondary: list[dict], task: str, digits: int = 2) -> str:
    """A task's secondary comparisons against FSGDM, for the summary table."""
    rs = [r for r in secondary if r["task"] == task and r["base"] == "FSGDM"]
    return "; ".join(f"{r['nsf']} {_ci(r['res'], digits)}" for r in rs) or "—"


def _fsgdm_alignment(an: dict, task: str) -> str:
    """C4's secondary comparison against FSGDM (at matched training loss), for the summary table."""
    if task not in an["C4_fsgdm"]:
        return "—"
    res = an["C4_fsgdm"][task]
    return f"NSF default {_ci(res['train']['res']) if res else 'n/a'}"


def _paired_tables(an: dict) -> list[str]:
    L = []
    for claim, title, digits in (("C1", "C1 lower test error: Δ test error (points)", 2),
                                 ("C2", "C2 lower test loss: Δ test cross-entropy", 4)):
        L += [f"## {title}\n",
              f"Holm correction across the whole primary list ({an['design'].family}) for this claim; each CI is at "
              "its Holm step's level." + (" Equivalence margin ±0.3 points where the test set has ≥ 3000 "
                                          "examples, ±1 point (and a held needs Δ ≤ −1) below that."
                                          if claim == "C1" else " No equivalence margin.") + "\n",
              "| task | id | kind | NSF arm | baseline | seeds (left out) | Δ [CI] | CI level | p | Holm p "
              "| verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in an[claim]["rows"]:
            res = r["res"]
            L.append(f"| {r['task']} | {r['id']} | {r['kind']} | {r['nsf']} | {r['base'] or '(none)'} | "
                     + (f"{_n(res)} | {_ci(res, digits)} | {100 * res['level']:.2f} % | {res['p']:.3g} | "
                        f"{r['holm']['p_adj']:.3g} | " if res else "0 | n/a | | | | ") + f"**{r['verdict']}** |")
        L += ["", "Secondary comparisons (95 % CI, no verdict):\n",
              "| task | kind | NSF arm | baseline | seeds | Δ [95 % CI] |",
              "|---|---|---|---|---|---|"]
        for r in an[claim]["secondary"]:
            L.append(f"| {r['task']} | {r['kind']} | {r['nsf']} | {r['base']} | {_n(r['res'])} "
                     f"| {_ci(r['res'], digits)} |")
        L.append("")
    return L


def _c3_absent(an: dict, task: str, missing: str = "no data") -> str:
    """Why a task has no C3 verdict: not declared for it (budget runs on some tasks only), or runs missing."""
    declared = an.get("budget_tasks")
    return f"not run: declared for {', '.join(declared)} only" if declared and task not in declared else missing


def _power(an: dict) -> list[str]:
    L = ["## Seeds and power\n",
         "Largest paired SD of test error among the primary comparisons over the pilot (seeds 0–9); seeds needed "
         "for a 0.3-point paired "
         "difference at 80 % power, α 0.05 (two-sided paired t, t quantiles iterated; the normal formula of "
         "docs/evidence.md alongside), and for 1 point (the resolution of test sets < 3000); and the effect the "
         "pilot's seeds resolve at 80 % power.\n",
         "| task | test set | largest paired SD (pt, from) | pilot seeds | seeds for 0.3 pt (t) | (normal formula) "
         "| seeds for 1 pt (t) | resolvable now (pt) |", "|---|---|---|---|---|---|---|---|"]
    for p in an["power"]:
        L.append(f"| {p['task']} | {p['n_test'] or 'unknown'} | {p['sd']:.3f} ({p['from']}) | {p['n']} | "
                 f"{p['need'] or '> 10000'} | {p['z_formula']} | {p['need_1pt'] or '> 10000'} | "
                 f"{p['resolvable']:.2f} |")
    L.append("")
    if any("holm_m" in p for p in an["power"]):
        L += ["At Holm's first step (α / the family's size: the strictest level any primary is tested at):\n",
              "| task | family size | seeds for 0.3 pt | resolvable now (pt) |", "|---|---|---|---|"]
        L += [f"| {p['task']} | {p['holm_m']} | {p['need_holm'] or '> 10000'} | {p['resolvable_holm']:.2f} |"
              for p in an["power"]]
        L.append("")
    return L


def _ttt(an: dict) -> list[str]:
    L = ["## C3 time to target\n",
         "Target = the best tuned baseline's full-budget mean test accuracy. Per arm the per-seed final accuracy at "
         "each budget run (LR re-tuned per budget); the first budget reaching the target by linear interpolation "
         "of the mean in budget (the smallest budget run means \"at most that\"); step ratio = NSF's / the baseline's; "
         "reverse = the baseline's budget to reach NSF's full-budget mean accuracy / NSF's. Percentile bootstrap "
         "over seeds (resampled jointly for both arms and all budgets, 2000 draws) at the Bonferroni level across "
         "tasks. Held if the CI is ≤ 0.25, not held if its lower end is > 0.5.\n",
         "| task | arm | final accuracy % per budget | target % | step ratio [CI] | reverse [CI] | verdict |",
         "|---|---|---|---|---|---|---|"]
    for task, t in an["C3"].items():
        if t is None:
            L.append(f"| {task} | ({_c3_absent(an, task, 'budget runs missing')}) | | | | | |")
            continue
        for who, label in (("nsf", "NSF default"), ("base", an["best"][task])):
            acc = t["acc"][who]
            cols = ["; ".join(f"{b:g}: {S.fmt_mean_sd(acc[:, i], 100.0)}" for i, b in enumerate(t["budgets"]))]
            last = (f"{100 * t['target']:.2f} | {_budget(t['ratio'][0])} [{_budget(t['ratio'][1])}, "
                    f"{_budget(t['ratio'][2])}] | {_budget(t['reverse'][0])} [{_budget(t['reverse'][1])}, "
                    f"{_budget(t['reverse'][2])}] | **{t['verdict']}**") if who == "nsf" else " | | | "
            L.append(f"| {task} | {label} | " + " | ".join(cols) + f" | {last} |")
        fs = an["arms"][task].get("FSGDM")
        if fs is not None and an["best"][task] != "FSGDM":
            L.append(f"| {task} | FSGDM (full budget only) | "
                     f"1: {S.fmt_mean_sd([1 - e for e in fs.finals('error').values() if e is not None], 100.0)}"
                     " | | | | |")
    L.append("")
    return L


def _alignment(an: dict) -> list[str]:
    control = " − ".join(an["design"].control)
    L = ["## C4 early alignment\n",
         "Per seed: NSF − baseline test accuracy (points) at matched training loss and at matched test loss (three "
         "log-spaced loss levels every run of the pair passes), and averaged over the evaluations in the first 20 % "
         f"of the run. Holm across the primary list per measure. Negative control: {control}. Test loss is "
         "temperature-scaled (T fitted per evaluation on the test logits, amendment 13) where the runs record it "
         "(marked *T*); stage-1 records predate it and match the unscaled test loss.\n",
         "| task | id | kind | pair | seeds | at matched train loss | at matched test loss | first 20 % | verdict |",
         "|---|---|---|---|---|---|---|---|---|"]

    def cells(res):
        if not res:
            return "0 | n/a | n/a | n/a"
        scaled = " *T*" if res.get("test_key") == "loss_ts" else ""
        return (f"{len(res['seeds'])} | {_ci(res['train']['res'])} | {_ci(res['test']['res'])}{scaled} | "
                f"{_ci(res['early']['res'])}")
    for r in an["C4"]["rows"]:
        L.append(f"| {r['task']} | {r['id']} | {r['kind']} | {r['nsf']} − {r['base']} | {cells(r['res'])} | "
                 f"**{r['verdict']}** |")
    for task, res in an["C4"]["control"].items():
        kind = an["arms"][task][an["design"].control[0]].kind
        L.append(f"| {task} | control | {kind} | {control} | {cells(res)} | (95 % CI) |")
    for task, res in an["C4_fsgdm"].items():
        L.append(f"| {task} | secondary | tuned | NSF default − FSGDM | {cells(res)} | (95 % CI) |")
    L.append("")
    return L


def _arms(an: dict) -> list[str]:
    L = ["## Arms (test runs) and tuner flags\n",
         "| task | arm | kind | LR (budget 1; ¼, ½ where run) | seeds (div.) | test error % | test loss "
         "| tuner flags |",
         "|---|---|---|---|---|---|---|---|"]
    for task, arms in an["arms"].items():
        for label, a in arms.items():
            f = a.finals("error")
            nd = sum(1 for r in a.runs.get(1.0, {}).values() if r["final"].get("diverged"))
            lrs = ", ".join(f"{a.lr[b]:.3g}" + ("" if b == 1.0 else f" @{b:g}") for b in sorted(a.lr, reverse=True))
            mark = " **(best baseline)**" if label == an["best"][task] else ""
            L.append(f"| {task} | {label}{mark} | {a.kind} | {lrs} | {len(f)} ({nd}) | "
                     f"{S.fmt_mean_sd(f.values(), 100.0)} | "
                     f"{S.fmt_mean_sd(a.finals('loss').values(), 1.0, 4)} | {', '.join(a.flags) or '—'} |")
    flagged = [(t, lab, a.flags) for t, arms in an["arms"].items() for lab, a in arms.items() if a.flags]
    L.append("\nTuner flags (edge: best LR at the grid edge; cap: at the point cap; within-one-sample: decided "
             "within one "
             "validation sample): " + ("; ".join(f"{t} {lab}: {', '.join(fl)}" for t, lab, fl in flagged)
                                       if flagged else "none") + ".\n")
    return L


# ----------------------------------------------------------------------------------------------------------
# Plots

def plots(dec, an: dict, outdir: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for task, arms in an["arms"].items():
        t = an["C3"].get(task)
        if t is not None:
            fig, ax = plt.subplots(figsize=(5.5, 4))
            for who, label in (("nsf", "NSF default"), ("base", an["best"][task])):
                acc = 100 * t["acc"][who]
                ax.errorbar(t["budgets"], acc.mean(0), yerr=acc.std(0, ddof=1), marker="o", capsize=3, label=label)
            ax.axhline(100 * t["target"], color="k", ls=":", lw=1, label="target")
            ax.set(xlabel="budget (fraction of the full run)", ylabel="final test accuracy %", xticks=t["budgets"],
                   title=f"{task}: time to target")
            ax.legend(fontsize=7)
            files[task, "budget"] = Path(save_figure(fig, outdir / f"{task}_evidence_budget.png", dpi=90)).name
        pairs = [(r["nsf"], r["base"]) for r in an["C4"]["rows"] if r["task"] == task and r["res"]]
        pairs += [an["design"].control] if all(k in arms for k in an["design"].control) else []
        if not pairs:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for i, label in enumerate(dict.fromkeys(k for p in pairs for k in p)):
            mc = _mean_curves(dec, arms[label])
            if mc is None:
                continue
            early = mc["frac"] <= V.EARLY_FRAC + 1e-9
            style = dict(color=plt.get_cmap("tab10")(i % 10), lw=1.2, label=label)
            axes[0].plot(mc["step"][early], 100 * mc["acc"][early], "-o", ms=2, **style)
            axes[1].plot(mc["train_loss"], 100 * mc["acc"], "-", **style)
        axes[0].set(xlabel="optimizer step (first 20 % of the run)", ylabel="test accuracy % (mean over seeds)",
                    title=f"{task}: early accuracy")
        axes[1].set(xlabel="training loss", ylabel="test accuracy %", xscale="log",
                    title="accuracy at matched training loss")
        axes[1].invert_xaxis()  # training goes left to right
        axes[0].legend(fontsize=6)
        files[task, "early"] = Path(save_figure(fig, outdir / f"{task}_evidence_early.png", dpi=90)).name
    return files


def _mean_curves(dec, arm: V.Arm) -> dict | None:
    cs = [dec.store.curves(r["run_id"]) for r in arm.runs.get(1.0, {}).values() if not r["final"].get("diverged")]
    if not cs:
        return None
    n = min(len(c["step"]) for c in cs)
    out = {k: np.nanmean(np.array([[np.nan if v is None else v for v in c[k][:n]] for c in cs], float), 0)
           for k in ("acc", "train_loss")}
    out.update(step=np.array(cs[0]["step"][:n]), frac=np.array(cs[0]["frac"][:n]))
    return out


def summary(an: dict) -> dict:
    """summary.json: the verdicts and effects, JSON-able."""
    def row(r):
        res = r["res"]
        return {"task": r["task"], "id": r["id"], "kind": r["kind"], "nsf": r["nsf"], "base": r["base"],
                "verdict": r["verdict"], **({k: res[k] for k in ("diff", "lo", "hi", "p", "n", "level")}
                                            if res and "diff" in res else {})}
    return jsonable({"best_baseline": an["best"], "n_test": an["n_test"],
            "C1": [row(r) for r in an["C1"]["rows"]], "C2": [row(r) for r in an["C2"]["rows"]],
            "C3": {t: None if x is None else {"ratio": x["ratio"], "reverse": x["reverse"], "verdict": x["verdict"],
                                             "target": x["target"], "level": x["level"]} for t, x in an["C3"].items()},
            "C4": [row(r) for r in an["C4"]["rows"]], "power": an["power"]})
