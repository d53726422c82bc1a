"""Tables and significance tests of docs/spectral.md ("Results of the full runs"), from the instruments' JSON.

Reads ``response.json``, ``fprinciple.json``, ``filtering.json`` and ``alignment.json`` written by
``nsf spectrum <instrument> --out RUN_DIR`` and prints, as Markdown, what the doc reports:

* R1 ``response``: gain table (measured vs predicted, max. rel. deviation), the below-window gains, the p = 0
  single-tone transfer, Adam's absolute transfer and the cycled-p chunk gains;
* R2 ``fprinciple``: per-optimizer summary tables and the Welch differences of the learned-frequency centroid;
* R3 ``filtering``: SB tables at matched training loss and the Welch differences of SB;
* R4 ``alignment``: accuracy-at-matched-test-loss tables, Welch differences and the count of p < 0.05;
* the wall time of each run (``/usr/bin/time -v`` output in ``RUN_DIR/<instrument>.err``, if present).

"±" is the stored 95 % t half-width over seeds (``nsf_lab.experiment.stats.mean_ci``); differences are Welch
t-intervals (95 %) of the difference of seed means (``nsf_lab.experiment.stats.welch``, the same numbers as
``scipy.stats.ttest_ind(equal_var=False)``).

    python benchmarks/spectral_analysis.py --run-dir runs/spectral_final
"""
from __future__ import annotations

import argparse
import json
import os
import re

import numpy as np

from nsf_lab.experiment import stats
from nsf_lab.spectral._common import first_index_below
from nsf_lab.spectral.alignment import accuracy_at_loss
from nsf_lab.spectral.filtering import _at_levels
from nsf_lab.spectral.fprinciple import centroid
from nsf_lab.spectral.response import high_freq_mask

NAMES = {"sgd": "SGD-m (torch)", "adam": "Adam (torch)"}


def short(label):
    if label.startswith("nsf-cyclic-adam"):
        return "cyclic grafted"
    if label.startswith("nsf-cyclic:"):
        return "cyclic raw"
    return NAMES.get(label, label.replace("nsf-fixed:", "NSF "))


def cycles(labels):
    """(raw, grafted) cyclic labels among ``labels``."""
    return (next(l for l in labels if l.startswith("nsf-cyclic:")),
            next(l for l in labels if l.startswith("nsf-cyclic-adam")))


def ci(c, dg=2):
    """A stored mean_ci dict as 'mean ± half-width (n=…)'."""
    if c["mean"] is None:
        return "never"
    s = f"{c['mean']:.{dg}f}" + (f" ± {c['ci95']:.{dg}f}" if c.get("ci95") is not None else "")
    return s + (f" (n={c['n']})" if c.get("n_missing") else "")


def welch(a, b):
    """(text, p, difference) of the Welch t-test of mean(a) − mean(b); p is None with < 2 seeds on a side."""
    t = stats.welch(a, b)
    if t is None:
        return "n/a", None, None
    return f"{t['diff']:+.3f} [{t['lo']:+.3f}, {t['hi']:+.3f}], p = {t['p']:.3f}", t["p"], t["diff"]


def table(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def response(R):
    rows = []
    for lab, by in R["summary"].items():
        for nk, s in by.items():
            i1, i3 = s["ratios"].index(1.0), s["ratios"].index(3.0)
            e = s.get("expected")
            g1, g3 = (f"{s['gain_hf_mean'][i]:.3f}" + (f" ({e[i]:.3f})" if e else "") for i in (i1, i3))
            dev = f"{100 * s['max_rel_dev']:.1f} %" if "max_rel_dev" in s else "— (p moves)"
            rows.append([short(lab), nk[len("noise="):], g1, g3, dev])
    res, summ = R["results"], R["summary"]
    f = np.asarray(res["nsf-fixed:p=0"]["noise=0"]["freqs"])
    hf = high_freq_mask(f)
    print(f"Mean gain over the {hf.sum()} of {len(f)} frequencies above the β2 window (2πf ≥ 0.02, f ≥ {f[hf].min():.2g}):\n")
    print(table(["optimizer", "σ", "gain r = 1 (pred.)", "gain r = 3 (pred.)", "max. rel. dev."], rows))
    i1 = res["nsf-fixed:p=0"]["noise=0"]["ratios"].index(1.0)
    print("\nBelow the β2 window (r = 1): " + "; ".join(
        f"{short(l)}: {res[l]['noise=0']['gain'][i1][0]:.3f} at f = {res[l]['noise=0']['freqs'][0]:.2g} vs "
        f"{summ[l]['noise=0']['gain_hf_mean'][i1]:.3f} above the window" for l in ("nsf-fixed:p=-0.5", "nsf-fixed:p=0.5")))
    r0 = res["nsf-fixed:p=0"]["noise=0"]
    tr = np.asarray(r0["transfer"])
    print("p = 0 tone transfer / lowest f: " + ", ".join(  # a spread of the 16 tone frequencies
        f"{tr[i] / tr[0]:.3f} at f = {r0['tone_freqs'][i]:.2g}" for i in (0, 5, 8, 10, 12, 15)))
    print(f"Adam absolute tone transfer at the lowest f: {res['adam']['noise=0']['transfer'][0]:.0f}")
    parts = []
    for l in (l for l in res if "chunks" in res[l]["noise=0"]):
        ch = res[l]["noise=0"]["chunks"]
        by_gain = {}
        for p, g in zip(ch["p_mean"], ch["gain_hf"]):
            by_gain.setdefault(round(g[i1], 3), round(p, 3))  # one entry per distinct chunk gain
        parts.append(f"{short(l)}: " + ", ".join(f"{g:.3f} at p̄ = {p:+.3f}" for p, g in sorted((p, g) for g, p in by_gain.items())))
    print("Cycled p, 256-step chunks (r = 1): " + "; ".join(parts))


def fprinciple(D):
    ks = D["settings"]["ks"]
    for prof, by in D["results"].items():
        rows = []
        for lab, o in by.items():
            s = o["stats"]
            a5, a2 = s["at_loss"]["0.5"], s["at_loss"]["0.2"]
            cen = [ci(a["centroid"]) + (f" (n={a['n_reached']})" if 0 < a["n_reached"] < 5 else "") for a in (a5, a2)]
            rows.append([short(lab), f"{o['lr']:g}", f"{sum(r['diverged'] for r in o['runs'])}/5",
                         ci(s["final_rel_loss"], 3), ci(s["steps_to_loss"]["0.5"], 0), ci(s["steps_to_loss"]["0.2"], 0),
                         *cen, ci(a5["E"][2]) if a5["E"] else "never", ci(s["coverage_auc"])])
        print(f"\n**{prof} amplitudes**\n")
        print(table(["optimizer", "lr", "diverged", "final L/L0", "steps to 0.5·L0", "steps to 0.2·L0",
                     "centroid at 0.5·L0", "centroid at 0.2·L0", "E_4 at 0.5·L0", "coverage"], rows))

    def seeds(runs, lv):  # centroid of each run at its first evaluation with training loss ≤ lv·L0
        out = []
        for r in runs:
            i = first_index_below(np.asarray([np.inf if x is None else x for x in r["loss"]], float) / r["energy"], lv)
            if i is not None:
                out.append(centroid(r["E"][i], ks))
        return out

    raw, graft = cycles(D["results"]["equal"])
    pairs = [("nsf-fixed:p=0.5", "nsf-fixed:p=0"), ("nsf-fixed:p=0.25", "nsf-fixed:p=0"), ("adam", "sgd"),
             ("nsf-fixed:p=-0.25", "nsf-fixed:p=0"), ("nsf-fixed:p=-0.5", "nsf-fixed:p=0"),
             (raw, "nsf-fixed:p=0"), (raw, "adam"), (graft, "adam")]
    rows = []
    for a, b in pairs:
        cells = []
        for prof in ("equal", "increasing"):
            for lv in (0.5, 0.2):
                A, B = (seeds(D["results"][prof][x]["runs"], lv) for x in (a, b))
                cells.append(welch(A, B)[0] + (f" (n = {len(A)}, {len(B)})" if 2 <= min(len(A), len(B)) < 5 else ""))
        rows.append([f"{short(a)} − {short(b)}", *cells])
    print("\nDifferences of the centroid at matched loss (Welch 95 % CI, p; positive = more high-frequency content):\n")
    print(table(["comparison (Δ centroid)", "equal, 0.5·L0", "equal, 0.2·L0", "increasing, 0.5·L0", "increasing, 0.2·L0"], rows))


def filtering(F):
    for name, r in F["results"].items():
        lv, dl = r["loss_levels"], r["delta"]
        print(f"\n**{name}** — n_train = {r['n_train']}, {r['steps']} steps of batch {r['batch']}, δ = {dl['delta']:.3g} "
              f"({dl['delta'] / dl['median_distance']:.3f} × median distance), low-band share {dl['share']:.3f}.\n")
        opts = r["optimizers"]
        print(table(["optimizer", "lr", *(f"L = {v:.3g}" for v in lv), "final loss", "final e_low", "final e_high"],
                    [[short(l), f"{o['lr']:g}", *(ci(o["at_loss"][str(v)]["SB"], 3) for v in lv),
                      *(ci(o["final"][k], 3) for k in ("loss", "e_low", "e_high"))] for l, o in opts.items()]))
        sb = {l: {v: [a[v]["SB"] for a in map(lambda h: _at_levels(h, lv), o["histories"]) if a[v]] for v in lv}
              for l, o in opts.items()}
        raw, graft = cycles(opts)
        pairs = [("adam", "sgd"), ("adam", "nsf-fixed:p=0"), ("nsf-fixed:p=0.25", "nsf-fixed:p=0"),
                 ("nsf-fixed:p=-0.25", "nsf-fixed:p=0"), (raw, "nsf-fixed:p=0"), (graft, "adam")]
        print("\nWelch differences of SB (95 % CI, p):\n")
        print(table(["comparison", *(f"L = {v:.3g}" for v in lv[1:4])],
                    [[f"{short(a)} − {short(b)}", *(welch(sb[a][v], sb[b][v])[0] for v in lv[1:4])] for a, b in pairs]))


def alignment(A):
    n_sig = n_for = n_all = 0
    for name, r in A["results"].items():
        lv, opts = r["loss_levels"], r["optimizers"]
        print(f"\n**{name}** — test accuracy at matched test loss (mean ± 95 % CI); final acc, ECE, mean confidence\n")
        print(table(["optimizer", "lr", *(f"L = {v:.3g}" for v in lv), "final acc", "final ECE", "final conf."],
                    [[short(l), f"{o['lr']:g}", *(ci(o["at_loss"][str(v)]["acc"], 3) for v in lv),
                      *(ci(o["final"][k], 3) for k in ("acc", "ece", "mean_conf"))] for l, o in opts.items()]))
        acc = {l: {v: [a[v]["acc"] for a in map(lambda h: accuracy_at_loss(h, lv), o["histories"]) if a[v]] for v in lv}
               for l, o in opts.items()}
        rows = []
        for c in cycles(opts):
            for b in ("sgd", "adam", "nsf-fixed:p=0"):
                tests = [welch(acc[c][v], acc[b][v]) for v in lv]
                rows.append([f"{short(c)} − {short(b)}", *(t[0] for t in tests)])
                sig = [t for t in tests if t[1] is not None and t[1] < 0.05]
                n_all, n_sig, n_for = n_all + len(tests), n_sig + len(sig), n_for + sum(t[2] > 0 for t in sig)
        print("\nWelch differences of accuracy at matched test loss (95 % CI, p):\n")
        print(table(["comparison", *(f"L = {v:.3g}" for v in lv)], rows))
    print(f"\nOf {n_all} Welch comparisons {n_sig} have p < 0.05: {n_for} in favour of a cycle, {n_sig - n_for} against.")


def wall_times(run_dir):
    for name in ("response", "fprinciple", "filtering", "alignment"):
        path = os.path.join(run_dir, f"{name}.err")
        m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", open(path).read()) if os.path.exists(path) else None
        if m:
            sec = round(3600 * int(m[1] or 0) + 60 * int(m[2]) + float(m[3]))
            print(f"{name}: {sec // 60} min {sec % 60} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="runs/spectral_final", help="directory with the instruments' JSON")
    run_dir = ap.parse_args().run_dir
    load = lambda name: json.load(open(os.path.join(run_dir, f"{name}.json")))
    for title, fn, name in [("R1 response", response, "response"), ("R2 fprinciple", fprinciple, "fprinciple"),
                            ("R3 filtering", filtering, "filtering"), ("R4 alignment", alignment, "alignment")]:
        print(f"\n## {title}\n")
        fn(load(name))
    print("\n## Wall time of each run\n")
    wall_times(run_dir)


if __name__ == "__main__":
    main()
