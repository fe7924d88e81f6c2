"""Convert with the `vg` converter: `python data_prep/vg.py --src DIR --out OUT.jsonl [options]`.

A thin wrapper of `dynrefer prepare vg` (same options, same JSON summary on stdout, same
one-line error and exit status 2 on bad input); the converter lives in `dynrefer.prepare`.
"""

import sys
from pathlib import Path

try:
    from dynrefer.cli import main
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from dynrefer.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", "vg", *sys.argv[1:]]))
