"""Borderline-SMOTE's danger set against imbalanced-learn's when the majority class is
bigger than the balancer's reservoir (``reservoir_size``, 512 by default).

    python -m streamaug.benchmarks.borderline_danger --majority 400 3000 10000

Data, effectively 1-D: every pixel of a 4×4 RGB image is one value v plus noise
(σ 0.5), v ~ N(100, 20) for the majority and N(140, 10) for 150 minority samples;
k=5, m=10. For each majority size it prints how many minority samples streamaug's
balancer and imbalanced-learn's ``BorderlineSMOTE`` put in danger, and how many both do.
"""
from __future__ import annotations

import argparse
import tempfile
import warnings

import numpy as np

MINORITY = 150


def dataset(majority: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = np.r_[rng.normal(100, 20, majority), rng.normal(140, 10, MINORITY)].clip(0, 255)
    images = (v[:, None, None, None] + rng.normal(0, 0.5, (len(v), 4, 4, 3))).round().clip(0, 255).astype(np.uint8)
    return images, np.r_[np.zeros(majority, int), np.ones(MINORITY, int)]


def danger_sets(majority: int, folder: str | None = None) -> tuple[set[int], set[int], int]:
    """``(streamaug's danger samples, imbalanced-learn's, the majority's reservoir size)``, as
    sample indices of class 1."""
    from imblearn.over_sampling import BorderlineSMOTE as ImbBorderline

    from streamaug.loader import StreamLoader, write_shards
    from streamaug.samplers import BorderlineSMOTE, ClassBalancer

    if folder is None:                    # (a folder of its own, removed after: each run left one in /tmp)
        with tempfile.TemporaryDirectory(prefix="borderline-") as own:
            return danger_sets(majority, own)
    images, labels = dataset(majority)
    write_shards((images, labels), folder, maxcount=500, progress=False)
    loader = StreamLoader(folder, batch_size=64, shuffle=False, device="cpu",
                          balance=ClassBalancer("auto", BorderlineSMOTE(k_neighbors=5, m_neighbors=10)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        next(iter(loader))
    loader.close()
    res = loader.balance.reservoir_
    ours = {int(res.entries[1][i][1].rsplit("_", 1)[1]) for i in loader.balance.synthesizer.danger(res, 1, None)}
    ref = ImbBorderline(k_neighbors=5, m_neighbors=10, random_state=0)
    ref.fit_resample(images.reshape(len(images), -1).astype(np.float64), labels)
    return ours, set(ref.in_danger_indices[1].tolist()), int(res.size[0])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--majority", type=int, nargs="+", default=[400, 3000, 10000])
    args = p.parse_args(argv)
    print("| majority | kept in the reservoir | streamaug danger | imbalanced-learn danger | in both |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in args.majority:
        ours, theirs, kept = danger_sets(n)
        print(f"| {n:,} | {kept} | {len(ours)} | {len(theirs)} | {len(ours & theirs)} |")


if __name__ == "__main__":
    main()
