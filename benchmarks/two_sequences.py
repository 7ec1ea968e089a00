"""Write the two-sequence combination cases of issue 18 at a chosen region width.

``python benchmarks/two_sequences.py OUT [--width W] [--side S]`` writes
``OUT/sub01_t1.nii.gz``, ``sub01_flair.nii.gz``, ``sub01_seg.nii.gz`` and the same for
``sub02``: three adjacent boxes A, B, C along x (B ``W`` voxels wide, A and C ``S``;
``2 W`` along y, 8 slices), t1 bright on A and B, flair bright on B and C, so that B (the
target, ``*_seg``) is distinct only in the combination. With one sequence B looks like A
(t1) or C (flair): their union scores 2 W / (2 W + S) Dice, at most 0.5 once S >= 2 W
(the default, S = 2 W). They are the cases of ``tests/test_evaluation_sequences.py``
(``combination_case``), whose width is 6 voxels, narrower than the encoder's 17 x 17
patches (Table S1): every voxel of B then sees A or C. The default here is 16, so that
B has an inside whose patches see B alone.
Then: ``napari-cuts evaluate --data OUT --seeds 1 --ablation``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    opts = {"--width": 16, "--side": None}
    for flag in opts:
        if flag in args:
            i = args.index(flag)
            try:
                opts[flag] = int(args[i + 1])
            except (IndexError, ValueError):
                print(f"{flag} needs a whole number of voxels (>= 2).", file=sys.stderr)
                return 2
            del args[i:i + 2]
    width = opts["--width"]
    side = 2 * width if opts["--side"] is None else opts["--side"]
    if len(args) != 1 or width < 2 or side < 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "tests"))
    from test_evaluation_sequences import _write_cases

    out = Path(args[0])
    cases = _write_cases(out, width=width, side=side)
    for name, (t1, _flair, gt) in cases.items():
        print(f"{out / name}_{{t1,flair,seg}}.nii.gz: {t1.shape} voxels, target {int(gt.sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
