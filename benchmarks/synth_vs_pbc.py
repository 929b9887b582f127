"""Do synthetic patches have the colours and proportions of real ones? Numbers for docs/synthetic.md.

    python benchmarks/synth_vs_pbc.py PBC_DEV                     # 12 patches per class at 128 px

Per PBC class and its synthetic counterpart: the fraction of dark (nuclear) pixels and their mean
colour; over all patches: background and red-cell colours (pixels by brightness band).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from smr.synth.contact_sheet import PBC_TO_SYNTH, _load_square, _maturities, _synthetic


def _pixels(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    px = np.concatenate([a.reshape(-1, 3).astype(np.float64) for a in images])
    return px, px.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pbc", type=Path, help="the pbc-dev folder")
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    real_all, syn_all = [], []
    print(f"{'PBC class':<14} {'dark fraction real / synthetic':>31}   mean dark colour real / synthetic")
    for pbc, syn in PBC_TO_SYNTH.items():
        files = sorted((args.pbc / pbc).glob("*.jpg"))[: args.per_class]
        real = [_load_square(f, args.size) for f in files]
        fake = [_synthetic(syn, m, args.size, 0, k) for k, m in enumerate(_maturities(syn, args.per_class))]
        real_all += real
        syn_all += fake
        (rp, rs), (sp, ss) = _pixels(real), _pixels(fake)
        print(
            f"{pbc:<14} {np.mean(rs < 330):>15.3f} / {np.mean(ss < 330):.3f}   "
            f"{rp[rs < 330].mean(0).round()} / {sp[ss < 330].mean(0).round()}"
        )
    for name, images in (("real", real_all), ("synthetic", syn_all)):
        px, s = _pixels(images)
        bg, red = s > 640, (s > 480) & (s < 600)
        print(
            f"{name:>9}: background {bg.mean():.2f} of pixels, colour {px[bg].mean(0).round()}; "
            f"red cells {red.mean():.2f}, colour {px[red].mean(0).round()}"
        )


if __name__ == "__main__":
    main()
