"""Distribution metrics of one feature space against one reference set: FD, KID, precision/recall,
density/coverage.

Names follow `<metric>@<reference set>`, e.g. fd_digits@real, fid@teacher, precision_digits@real
(the paper scores students against the teacher's own samples: "@teacher").
"""
from __future__ import annotations

import numpy as np

from odebench.metrics.fd import fd_bootstrap_stderr, fd_features, kid
from odebench.metrics.registry import REGISTRY, MetricValue, register, value

PRDC = ("precision", "recall", "density", "coverage")  # k-NN manifold metrics (odebench.metrics.prdc)


def metric_names(feature: str) -> dict[str, str]:
    """Paper names for Inception (fid, kid); `<metric>_<feature>` otherwise."""
    if feature == "inception":
        return {"fd": "fid", "kid": "kid", **{k: f"{k}_inception" for k in PRDC}}
    return {k: f"{k}_{feature}" for k in ("fd", "kid", *PRDC)}


def _register(feature: str) -> dict[str, str]:
    names = metric_names(feature)
    for kind, name in names.items():
        if name not in REGISTRY:
            scale = {"fd": " (squared feature units)", "kid": " (raw unbiased MMD^2, x1)"}.get(kind, "")
            register(name, kind in PRDC, f"{kind}{scale} in {feature} feature space against a reference set")
    return names


def distribution_metrics(features: np.ndarray, ref_features: np.ndarray, feature: str, feature_identity: str,
                         ref_key: str, ref_desc: str, fd_bootstrap: int = 20, kid_subsets: int = 50,
                         precision_recall: bool = True, paired: bool = False) -> dict[str, MetricValue]:
    """FD (bootstrap stderr), KID (seeded subsets) and k-NN precision/recall/density/coverage of `features`
    vs `ref_features`. `paired`: row i of both sets comes from the same noise (students against the
    teacher's own samples), so resampling keeps pairs together and KID leaves matched pairs out of its
    cross term."""
    from odebench.metrics.prdc import DEFAULT_K, prdc

    names = _register(feature)
    n, m = len(features), len(ref_features)
    ident = f"{feature_identity}; vs {m} {ref_desc}"
    fd = fd_features(features, ref_features)
    fd_err = fd_bootstrap_stderr(features, ref_features, reps=fd_bootstrap, paired=paired) if fd_bootstrap > 1 else None
    kid_v, kid_err = kid(features, ref_features, subsets=kid_subsets, subset_size=min(1000, n, m), paired=paired)
    pairing = "paired by seed (resampled by pair)" if paired else "independent sets"
    out = {
        f"{names['fd']}@{ref_key}": value(names["fd"], fd, fd_err, f"Frechet distance, scale: squared feature units "
                                          f"(raw, as clean-fid), float64 eigen-trace, bootstrap stderr ({fd_bootstrap}, "
                                          f"{pairing}); {ident}", n),
        f"{names['kid']}@{ref_key}": value(names["kid"], kid_v, kid_err, f"KID, scale: raw unbiased MMD^2 (x1, not the x1000 "
                                           f"papers often print), kernel (x.y/d+1)^3, {kid_subsets} seeded subsets of "
                                           f"{min(1000, n, m)}, {pairing}; {ident}", n),
    }
    if precision_recall and min(n, m) > DEFAULT_K:  # k-NN balls need more than k points a side
        pr = prdc(features, ref_features, ref_desc, feature_identity)
        for kind in PRDC:
            out[f"{names[kind]}@{ref_key}"] = value(names[kind], pr[kind].value, pr[kind].stderr, pr[kind].identity, n)
    return out
