#!/usr/bin/env python
"""`make demo`: run the compressed thinker on tiny random inputs and print what each method kept."""

from __future__ import annotations

import torch

from fusion import METHODS, load_model
from fusion.testing import random_inputs


def main() -> None:
    model, _ = load_model("tiny-random")
    inputs = random_inputs(model, seconds=6, batch_size=2, seed=0)
    print("| method | retention | video kept | audio kept | sequence |\n|---|---|---|---|---|")
    for name in ("none", "uniform", "random"):
        for retention in ((1.0,) if name == "none" else (0.25, 0.1)):
            model.set_compressor(METHODS.build(name, retention=retention))
            with torch.no_grad():
                model(**inputs)
            for row in model.last_stats.rows():
                kept = [f"{row[k + '_after']}/{row[k + '_before']}" for k in ("video", "audio", "sequence")]
                print(f"| {name} | {retention} | " + " | ".join(kept) + " |")


if __name__ == "__main__":
    main()
