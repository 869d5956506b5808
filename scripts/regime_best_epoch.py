"""Numbers results/fashionmnist-regime/NOTES.md quotes that the report does not print: the paired 95% t interval
of each method minus SAM at each run's best epoch (per noise draw), and the SAM limits against SAM epoch by epoch.

    .venv/bin/python scripts/regime_best_epoch.py     # from the root of a checkout
"""
import glob
import json

import pandas as pd
import scipy.stats as st

r = [dict(json.load(open(f)), best=pd.read_csv(f[:-12] + "metrics.csv").test_acc.max())
     for f in glob.glob("results/fashionmnist-regime/*/summary.json")]


def at_defaults(h: dict) -> bool:
    return (h.get("rho", 0.05) == 0.05 and h.get("beta", 0.5) == 0.5 and h.get("gamma", 0.5) == 0.5
            and h.get("k", 5) == 5 and h.get("alpha", 0.7) in (0.7, 0.01))


d = pd.DataFrame(r)
d = d[(d.epochs == 20) & d.hparams.map(at_defaults)]
for noise in ("fixed", "run"):
    b = d[d.label_noise_seed.fillna("fixed") == noise].pivot_table(index="seed", columns="method", values="best")
    for m in ("saf", "esam", "looksam"):
        x = 100 * (b[m] - b.sam)
        h = st.t.ppf(0.975, len(x) - 1) * x.std() / len(x) ** 0.5
        print(noise, m, f"{x.mean():+.2f} [{x.mean() - h:.2f}, {x.mean() + h:.2f}]")
sam = {r["seed"]: r for r in r if r["method"] == "sam" and r["epochs"] == 20 and r["hparams"]["rho"] == 0.05
       and r.get("label_noise_seed", "fixed") == "fixed"}
for x in r:
    if (x["method"], x["hparams"].get("beta"), x["hparams"].get("gamma"), x["hparams"].get("k")) in (
            ("esam", 1.0, 1.0, None), ("looksam", None, None, 1)):
        a, b = (pd.read_csv(f"results/fashionmnist-regime/{y['run_dir']}/metrics.csv") for y in (x, sam[x["seed"]]))
        print("limit", x["method"], x["seed"], "max |test acc diff|", (a.test_acc - b.test_acc).abs().max(),
              "max |train loss diff|", (a.train_loss - b.train_loss).abs().max())
for name, keep in (("looksam alpha=0.7, seeds 0-2", lambda h: h.get("alpha") == 0.7),
                   ("looksam alpha=0.1, seeds 0-2", lambda h: h.get("alpha") == 0.1)):
    runs = [x for x in r if x["method"] == "looksam" and keep(x["hparams"]) and x["seed"] <= 2
            and x.get("label_noise_seed", "fixed") == "fixed" and x["hparams"].get("k") == 5]
    print(name, "first-epoch test acc %.1f" % (100 * sum(pd.read_csv(
        f"results/fashionmnist-regime/{x['run_dir']}/metrics.csv").test_acc[0] for x in runs) / len(runs)))
for x in r:
    if x["method"] == "esam" and x["hparams"].get("gamma") == 0.5:
        m = pd.read_csv(f"results/fashionmnist-regime/{x['run_dir']}/metrics.csv")
        if "esam_selected_flipped_share" in m:
            print("esam", x["hparams"].get("beta"), x.get("label_noise_seed"), x["seed"],
                  f"flipped share kept at the last epoch {m.esam_selected_flipped_share.iloc[-1]:.3f}")
