#!/usr/bin/env python
"""Accuracy of the ToyWorld backbone on the test split under several compressions, per category.

    PYTHONPATH=. python scripts/eval_toy.py --data runs/toyworld [--model fusion/assets/toy]

Rows: uncompressed (method none), uniform / random at 25 %, uniform at 10 %, uniform 25 % applied to one
modality only (the other kept whole), and a shuffled-media control (each question with another clip of its
category: what the question and the answer prior give without the right media). Logits-mode scoring.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fusion import METHODS
from fusion.model.toy import ASSET_DIR, load_toy
from fusion.pruners.base import Compressor
from fusion.tokens import AVTokens, Selection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_common import evaluate, format_table, prepare_data  # noqa: E402


class OneModality(Compressor):
    """Apply ``inner`` and then keep every token of the other modality (``keep |= mask of the spared one``)."""

    name = "one_modality"

    def __init__(self, inner: Compressor, spare: str) -> None:
        self.inner, self.spare = inner, spare

    def select(self, tokens: AVTokens) -> Selection:
        keep = self.inner(tokens).keep | (tokens.audio_mask if self.spare == "audio" else tokens.video_mask)
        return Selection(keep=keep)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/toyworld"))
    parser.add_argument("--model", type=Path, default=ASSET_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=0, help="score only the first N test clips (0: all)")
    parser.add_argument("--quick", action="store_true", help="only none / uniform 0.25 / shuffled control")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, processor = load_toy(args.model)
    test = prepare_data(args.data, processor, 8000, 1000, 0)["test"]
    index = torch.arange(args.n or len(test))
    settings = {
        "none (r=1.0)": METHODS.build("none"),
        "uniform 0.25": METHODS.build("uniform", retention=0.25),
        "random 0.25": METHODS.build("random", retention=0.25),
        "uniform 0.10": METHODS.build("uniform", retention=0.10),
        "uniform 0.25, video only": OneModality(METHODS.build("uniform", retention=0.25), spare="audio"),
        "uniform 0.25, audio only": OneModality(METHODS.build("uniform", retention=0.25), spare="video"),
    }
    if args.quick:
        settings = {k: v for k, v in settings.items() if k in ("none (r=1.0)", "uniform 0.25")}
    rows = {}
    for name, compressor in settings.items():  # one setting per iteration
        model.set_compressor(compressor)
        rows[name] = evaluate(model, test, processor, index)
        print(f"{name}: mean {rows[name]['mean']:.1f}", flush=True)
    model.set_compressor(METHODS.build("none"))
    rows["shuffled media (control)"] = evaluate(model, test, processor, index, shuffle_media=True)
    print(format_table(rows, sorted(set(test.categories))))


if __name__ == "__main__":
    main()
