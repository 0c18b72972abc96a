"""Write the small synthetic demo dataset (``tiny-imagenet-200`` layout): a thin command-line
wrapper around :mod:`ranking_lib.data.demo`, where the generator lives (so an installed package
has it too).

    python data_scripts/make_demo_dataset.py --out /tmp/demo [--classes 10 --train-per-class 100
        --val-per-class 20 --seed 0]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ranking_lib.data.demo import class_specs, main, make_demo_dataset, render_image  # noqa: E402,F401

if __name__ == "__main__":
    sys.exit(main())
