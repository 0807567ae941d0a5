#!/usr/bin/env python
"""Pre-train the ToyWorld backbone from scratch, uncompressed, all parameters; save it where `load_model("toy")`
finds it.

    # the shipped backbone, with the defaults (5,000 steps, 2 processes x 1 thread, loss-balanced batches):
    # 13.7 min on 2 cores, 99.7 % uncompressed
    PYTHONPATH=. python scripts/pretrain_toy.py --data runs/toyworld

    # the ToyWorld-Long backbone (fusion/assets/toy_long; its defaults: see WORLDS below)
    PYTHONPATH=. python scripts/pretrain_toy.py --world long

Generates ToyWorld (`--n-train`/`--n-test`/`--data-seed`) into `--data` if it is not there, caches the
processor's tensors once, then trains the thinker of `fusion.model.toy.toy_config` (audio convolutions initialised
wider, `--audio-conv-std`) with the cross-entropy of the answer tokens (letter + end of turn): AdamW (betas
0.9/0.98, weight decay 0.01), linear warm-up, constant, then cosine decay to 0.1 x lr over the last
`--decay-fraction` of a FIXED number of steps, gradient clip 1.0.

Batches are drawn with replacement by a seeded generator, uniformly over samples (`--sampling uniform`) or through
`fusion.data.curriculum.LossBalancedSampler` (`--sampling loss`: categories in proportion to their running loss).
With `--procs N` (gloo, one process per core) every rank draws the same batch and trains on its 1/N share; the
gradients are averaged before clipping, so N processes follow the one-process trajectory (tested) at the speed of
N independent cores: on 2 cores, 2 processes x 1 thread take ~165 ms per batch of 16, 1 process x 2 threads ~210.

Augmentation (`--augment`: the fraction of samples, toy 0.5, long 0.7): `fusion.data.evidence.EvidenceDropout`
keeps each non-evidence audio/video token with probability r ~ U(`--augment-min-keep`, 1) (toy 0.1, long 0.02), so
the backbone answers from the evidence whatever else is missing (a model trained only on whole sequences also reads
the count of background tokens and breaks under any pruning, even one that keeps every evidence token).

``--world long`` trains the ToyWorld-Long thinker (``fusion.model.toy.toy_long_config``, 7-px patches) on
``fusion.data.toyworld_long``: it starts from the shipped ToyWorld backbone wherever the shapes agree
(``--init-from``; the 14-px patch embedding summed over 2 x 2 pixel blocks to 7 px), builds same-length batches
(``fusion.data.curriculum.SameLengthBatches``: no padding between 8-s and 16-s clips) and drops harder: with the
toy's 0.5 / 0.1 the backbone reached 98.6 % uncompressed but only 89.0 % on validation with the evidence oracle at
10 % (beep_count 65 %, mostly under-counted), where r < 0.12 had come up in ~1 % of the samples.

Same seed + data + processes + threads = the same backbone. Writes `model.safetensors`, `config.json`, the
processor files and `pretrain_info.json` (command, seed, steps, timings, accuracies).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from fusion import METHODS
from fusion.data import toyworld, toyworld_long
from fusion.data.curriculum import LossBalancedSampler, SameLengthBatches
from fusion.data.evidence import EvidenceDropout
from fusion.model.loading import build_random_thinker
from fusion.model.toy import ASSET_DIR, LONG_ASSET_DIR, toy_config, toy_long_config, toy_long_processor, toy_processor
from fusion.progress import quiet_library_bars
from train.loss import per_sample_cross_entropy, pruned_labels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from toy_common import evaluate, format_table, prepare_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def portable(path: Path | None) -> str | None:
    """``path`` relative to the repository when it lies inside it (what pretrain_info.json records: no machine
    paths in a shipped file)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# per world: generator, processor, config, and the defaults of the options that differ
WORLDS = {
    "toy": dict(generate=toyworld.generate, processor=toy_processor, config=toy_config,
                defaults=dict(data="runs/toyworld", out=ASSET_DIR, n_train=8000, n_test=1000, steps=5000,
                              init_from=None, same_length=False, augment=0.5, augment_min_keep=0.1)),
    "long": dict(generate=toyworld_long.generate, processor=toy_long_processor, config=toy_long_config,
                 defaults=dict(data="runs/toyworld_long", out=LONG_ASSET_DIR, n_train=4000, n_test=800, steps=2000,
                               init_from=ASSET_DIR, same_length=True, augment=0.7, augment_min_keep=0.02)),
}


def lr_at(step: int, steps: int, lr: float, warmup: int, decay_fraction: float = 1.0) -> float:
    """``lr * (step + 1) / warmup`` during warm-up, ``lr`` until the last ``decay_fraction`` of the steps, then
    ``lr * (0.1 + 0.9 * (1 + cos(pi * p)) / 2)`` with ``p`` going 0 -> 1 over those last steps
    (``decay_fraction`` 1: cosine over everything after warm-up)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    decay_start = max(warmup, steps - round(decay_fraction * steps))
    p = max(0, step - decay_start) / max(1, steps - decay_start)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def widen_audio_convs(model, std: float, seed: int) -> None:
    """Re-draw the audio tower's two convolutions from ``N(0, std^2)`` (biases 0).

    With transformers' ``initializer_range`` 0.02 the convolution output is ~35x smaller than the sinusoidal
    positions Whisper adds right after it, so at init a beep changes the audio tokens by < 1 % and the audio path
    learns very slowly (measured: beep counting at chance after 4000 steps). At ``std`` 0.1 a beep moves its
    tokens by ~20 % at init.
    """
    generator = torch.Generator().manual_seed(seed)
    tower = model.model.audio_tower
    with torch.no_grad():
        for conv in (tower.conv1, tower.conv2):
            conv.weight.normal_(0.0, std, generator=generator)
            conv.bias.zero_()


PATCH_EMBED = "model.visual.patch_embed.proj.weight"


def init_from(model, directory: Path) -> tuple[int, list[str]]:
    """Copy every tensor of the backbone in ``directory`` whose name and shape match ``model``'s; return the count
    copied and the names of ``model``'s tensors left at their random init.

    A vision patch embedding ``(D, 3, tp, kP, kP)`` going to patches of ``P`` px is summed over ``k x k`` pixel
    blocks, ``W'[..., i, j] = sum_{a,b < k} W[..., k i + a, k j + b]``: a frame drawn at ``1/k`` scale then embeds as
    the original did (ToyWorld-Long's 14-px cells are ToyWorld's 28-px cells at half scale).
    """
    from fusion.model.toy import load_toy

    source = load_toy(directory)[0].state_dict()
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if PATCH_EMBED in source and PATCH_EMBED not in matched:
        w, target = source[PATCH_EMBED], own[PATCH_EMBED].shape  # (D, 3, tp, kP, kP), (D, 3, tp, P, P)
        k = w.shape[-1] // target[-1]
        if w.shape[:3] == target[:3] and k * target[-1] == w.shape[-1]:
            D, C, tp, P = *target[:3], target[-1]
            matched[PATCH_EMBED] = w.reshape(D, C, tp, P, k, P, k).sum(dim=(4, 6))
    model.load_state_dict(matched, strict=False)
    return len(matched), sorted(k for k in own if k not in matched)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="toy",
                        help="toy: ToyWorld (4-s clips); long: ToyWorld-Long (8-16 s, video-heavy)")
    parser.add_argument("--data", type=Path, default=None, help="data folder (default: runs/toyworld[_long])")
    parser.add_argument("--out", type=Path, default=None, help="where the backbone is saved (default: the package's)")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--init-from", type=str, default=None,
                        help="a backbone folder whose same-shaped weights start the run ('none': random init)")
    parser.add_argument("--same-length", choices=("on", "off"), default=None,
                        help="batches of one clip length (default: on for the long world)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--decay-fraction", type=float, default=1.0,
                        help="the cosine decay spans this last fraction of the steps (1: all after warm-up)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--procs", type=int, default=2,
                        help="data-parallel processes (gloo); each takes batch-size / procs samples of every batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--eval-n", type=int, default=200, help="test clips scored at each intermediate eval")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--audio-conv-std", type=float, default=0.1, help="init std of the audio convolutions")
    parser.add_argument("--augment", type=float, default=None,
                        help="fraction of samples whose non-evidence AV tokens are randomly dropped (0: none; "
                             "default per world: toy 0.5, long 0.7)")
    parser.add_argument("--sampling", choices=("uniform", "loss"), default="loss",
                        help="batch sampling: uniform over samples, or categories by running loss (see module doc)")
    parser.add_argument("--sampling-floor", type=float, default=0.2,
                        help="with --sampling loss: share of each batch spread evenly over the categories")
    parser.add_argument("--augment-min-keep", type=float, default=None,
                        help="lowest keep probability of a non-evidence token in an augmented sample (default per "
                             "world: toy 0.1, long 0.02)")
    args = parser.parse_args(argv)
    quiet_library_bars()  # transformers' bars: off in a log
    world = WORLDS[args.world]
    for key, value in world["defaults"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.data, args.out = Path(args.data), Path(args.out)
    args.init_from = None if args.init_from in (None, "none") else Path(args.init_from)
    args.same_length = args.same_length in (True, "on")
    if args.procs < 1 or args.batch_size % args.procs:
        parser.error(f"--batch-size {args.batch_size} must split evenly over --procs {args.procs}")
    command = " ".join(["python scripts/pretrain_toy.py", *(argv if argv is not None else sys.argv[1:])])
    if args.procs == 1:
        train(0, args, command)
    else:
        # generate and cache once here, so the ranks only load the caches
        prepare_data(args.data, world["processor"](), args.n_train, args.n_test, args.data_seed, _log,
                     world["generate"])
        with socket.socket() as s:  # a free port, so parallel runs on one machine coexist
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(train, args=(args, command, port), nprocs=args.procs)


def _log(msg: str) -> None:
    print(msg, flush=True)


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce the gradients of ``params`` (flattened into one buffer, one call) and divide by ``world``:
    every rank then holds the gradient of the whole batch (each rank's loss is a mean over equally many answer
    tokens, so the mean of the rank means is the batch mean)."""
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (P,)
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:  # one parameter tensor per iteration
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def train(rank: int, args, command: str, port: int | None = None) -> None:
    """One training process: rank ``rank`` of ``args.procs`` (rank 0 logs, evaluates and saves)."""
    torch.set_num_threads(args.threads)
    world = args.procs
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    log = _log if rank == 0 else (lambda msg: None)
    world_spec = WORLDS[args.world]
    processor = world_spec["processor"]()
    splits = prepare_data(args.data, processor, args.n_train, args.n_test, args.data_seed, log, world_spec["generate"])
    train_split, test = splits["train"], splits["test"]
    config = world_spec["config"](processor.tokenizer)
    model = build_random_thinker(config, seed=args.seed).train()
    widen_audio_convs(model, args.audio_conv_std, seed=args.seed + 1)
    if args.init_from is not None:
        copied, skipped = init_from(model, args.init_from)
        log(f"started from {portable(args.init_from)}: {copied} tensors copied, "
            f"kept the random init of {skipped or 'none'}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"toy thinker: {n_params:,} parameters; {len(train_split)} train / {len(test)} test clips; "
        f"{world} process(es) x {args.threads} thread(s)")
    dropout = None
    if args.augment > 0:
        dropout = EvidenceDropout(args.augment, args.augment_min_keep,
                                  torch.Generator().manual_seed(args.seed + 2 + 1000 * rank))
        model.set_compressor(dropout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    generator = torch.Generator().manual_seed(args.seed)  # the same on every rank: all draw the same batches
    sampler = None
    if args.sampling == "loss":
        sampler = LossBalancedSampler(train_split.categories, floor=args.sampling_floor, generator=generator)
    same_length = None
    if args.same_length:
        same_length = SameLengthBatches(train_split.categories, [s.extra.get("seconds") for s in train_split.samples],
                                        generator)
    eval_index = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[: args.eval_n]
    categories = sorted(set(test.categories))
    share = args.batch_size // world

    history, running, step_times = [], None, []
    start = time.perf_counter()
    for step in range(args.steps):  # one optimiser step per iteration
        tick = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup, args.decay_fraction)
        if sampler is None:
            index = torch.randint(len(train_split), (args.batch_size,), generator=generator)
        else:
            index = sampler.draw(args.batch_size)
        if same_length is not None:
            index = same_length.match(index)
        mine = index[rank * share:(rank + 1) * share]  # this rank's part of the batch
        batch = train_split.batch(mine, mode="train")
        batch.pop("answer"), batch.pop("n_options")
        labels = batch.pop("labels")
        if dropout is not None:
            dropout.set_batch([train_split.scenes[i] for i in mine.tolist()],
                              [train_split.categories[i] for i in mine.tolist()])
        out = model(**batch)
        loss, per_sample = per_sample_cross_entropy(out.logits, pruned_labels(labels, out.source_index))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss, per_sample = loss.detach(), per_sample.detach()
        if world > 1:
            average_gradients([p for p in model.parameters() if p.grad is not None], world)
            parts = [torch.empty_like(per_sample) for _ in range(world)]
            dist.all_gather(parts, per_sample)
            per_sample = torch.cat(parts)  # (B,) in batch order
            loss = per_sample.mean()
        if sampler is not None:
            sampler.update(index, per_sample)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step_times.append(time.perf_counter() - tick)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0:
            ms = 1000 * sorted(step_times[-args.log_every:])[args.log_every // 2]
            log(f"step {step + 1:5d}  loss {running:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}  "
                f"median step {ms:.0f} ms  elapsed {time.perf_counter() - start:.0f} s"
                + (f"  sampling {sampler.state()}" if sampler is not None else ""))
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            if rank == 0:
                model.set_compressor(METHODS.build("none"))
                table = evaluate(model, test, processor, eval_index)
                model.set_compressor(dropout or METHODS.build("none"))
                history.append({"step": step + 1, "elapsed_s": round(time.perf_counter() - start, 1),
                                "loss": running, **{k: round(v, 1) for k, v in table.items() if k != "kept"}})
                log("  eval " + " ".join(f"{c} {table[c]:.1f}" for c in categories) + f"  mean {table['mean']:.1f}")
            if world > 1:
                dist.barrier()
    train_seconds = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    if rank != 0:
        return

    model.set_compressor(METHODS.build("none"))
    final = evaluate(model, test, processor)
    log(format_table({"uncompressed (full test)": final}, categories))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    info = {
        "command": command, "seed": args.seed, "data_seed": args.data_seed, "n_train": len(train_split),
        "n_test": len(test), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "warmup": args.warmup, "decay_fraction": args.decay_fraction, "procs": world, "threads": args.threads,
        "audio_conv_std": args.audio_conv_std, "augment": args.augment, "augment_min_keep": args.augment_min_keep,
        "world": args.world, "init_from": portable(args.init_from),
        "same_length": args.same_length,
        "sampling": args.sampling, "sampling_floor": args.sampling_floor if sampler is not None else None,
        "parameters": n_params, "train_seconds": round(train_seconds, 1),
        "median_step_ms": round(1000 * sorted(step_times)[len(step_times) // 2], 1) if step_times else None,
        "torch": torch.__version__, "test_accuracy": {k: round(v, 2) for k, v in final.items() if k != "kept"},
        "history": history,
    }
    (args.out / "pretrain_info.json").write_text(json.dumps(info, indent=2))
    log(f"saved the toy backbone to {args.out} ({train_seconds / 60:.1f} min of training)")


if __name__ == "__main__":
    main()
