"""Train the learned V<->A fusion block with LoRA on a frozen Qwen2.5-Omni thinker (DeepSpeed + PEFT).

    deepspeed train/run.py --config configs/fusion.yaml [dotted.key=value ...]
    python train/run.py --config configs/fusion.yaml [dotted.key=value ...]      # one process, no launcher
    python train/run.py --help                                                   # every key, type, default

Steps: resolve the config (printed, saved to ``output_dir/config.yaml``) -> build the frozen backbone + block +
LoRA -> DeepSpeed engine (ZeRO-2 by default; gloo on CPU) -> train with checkpoints every ``train.save_every``
steps -> ``output_dir/adapter/`` (``adapter_config.json``, ``adapter_model.safetensors``, ``fusion_config.json``),
which ``fusion.load_model(base, method="fusion", adapter=...)`` and ``PeftModel.from_pretrained`` both load.
Killed at any instant, a run leaves its last complete checkpoint and a loadable adapter (the previous one, if any);
``train.resume=true`` continues with the uninterrupted run's losses (docs/crash-safety.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python train/run.py` puts train/ itself first on sys.path, where its modules would shadow top-level names;
# drop it so `import train` finds the installed package (pip install -e .)
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from fusion.cli import parse_recipe, recipe_parser, run_reporting_errors  # noqa: E402
from fusion.config import dump_yaml, load_config, to_dict  # noqa: E402
from fusion.crash_points import crash_point  # noqa: E402
from fusion.errors import ConfigError  # noqa: E402
from fusion.progress import quiet_library_bars  # noqa: E402
from train.config import RunConfig  # noqa: E402

HEADER = "Resolved config of this run; rerun with: deepspeed train/run.py --config {path} [key=value ...]"
RESUMABLE_CHANGES = ("train.resume", "train.stop_after", "train.steps", "train.log_every", "train.progress",
                     "train.save_every", "train.keep_checkpoints", "train.probe", "train.output_dir", "wandb.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = recipe_parser("train/run.py", "Train the fusion block (+ LoRA) on a frozen backbone.",
                           "configs/fusion.yaml", "fusion.retention=0.2 optim.lr=1e-4")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the DeepSpeed launcher (the process reads LOCAL_RANK)")
    args = parse_recipe(parser, RunConfig, argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def check_resumable(saved: dict, current: dict, prefix: str = "") -> None:
    """Raise :class:`ConfigError` if a setting that changes the trajectory differs from the checkpointed run's."""
    diff = []

    def walk(a, b, key):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else k)
        elif a != b and not any(key == c or key.startswith(c) for c in RESUMABLE_CHANGES):
            diff.append(f"{key} ({a!r} -> {b!r})")

    walk(saved, current, prefix)
    if diff:
        raise ConfigError(f"train.resume: the checkpointed run used other settings: {', '.join(diff)}; resume with "
                          "the same settings or start a new train.output_dir")


def annealed_temperature(start: float, final: float, step: int, steps: int) -> float:
    """Geometric schedule ``tau_t = tau_0 (tau_1 / tau_0)^(t / (T - 1))``: ``tau_0`` at step 0, ``tau_1`` last."""
    return start * (final / start) ** (step / max(1, steps - 1))


class FusionRecipe:
    """setup -> train -> export (torchtune-style); every rank runs it, rank 0 writes the run directory."""

    def __init__(self, cfg: RunConfig, config_file: str | None) -> None:
        self.cfg, self.config_file = cfg, config_file
        self.run_dir = Path(cfg.train.output_dir)
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.main = self.rank == 0
        self._blocks: list | None = None  # the block's copies (PEFT keeps the trained one and the original)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import yaml

        from train.batch_size import plan_of
        from train.checkpoint import latest_checkpoint, load_checkpoint
        from train.distributed import deepspeed_config, initialize
        from train.export import recover
        from train.logs import RunLogger
        from train.model import build_model, trainable_summary
        from train.optim import build_optimizer
        from train.order import SampleOrder
        from train.sources import build_source

        cfg = self.cfg
        latest = latest_checkpoint(self.run_dir)
        if latest and not cfg.train.resume:
            raise ConfigError(f"train.output_dir: {self.run_dir} already holds a run (checkpoint {latest[0]}); "
                              "continue it with train.resume=true or choose a new train.output_dir")
        if latest and (self.run_dir / "config.yaml").is_file():
            check_resumable(yaml.safe_load((self.run_dir / "config.yaml").read_text()), to_dict(cfg))
        torch.manual_seed(cfg.train.seed)
        self.bf16 = torch.cuda.is_available() if cfg.train.bf16 is None else cfg.train.bf16
        self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if torch.cuda.is_available() else None
        if self.device is not None:
            torch.cuda.set_device(self.device)

        ds_config = deepspeed_config(cfg, self.world, self.bf16, self.config_file)  # fail fast, before loading
        self.plan = plan_of(cfg.train, self.world)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            recover(self.run_dir / "adapter")  # what a kill during a previous export left
            text = dump_yaml(cfg, self.run_dir / "config.yaml", header=HEADER.format(path=self.run_dir / "config.yaml"))
            print(f"resolved config ({self.run_dir / 'config.yaml'}):\n{text}", flush=True)

        model, processor = build_model(cfg, torch.bfloat16 if self.bf16 else None)
        self.thinker = model.get_base_model()
        self.source = build_source(cfg.data, processor, self.thinker.config)
        self.order = SampleOrder(len(self.source), cfg.data.seed)
        optimizer, self.scheduler = build_optimizer(model, cfg)
        self.engine = initialize(model, optimizer, self.scheduler, ds_config, cfg.train.cpu_shm_op)

        self.start = 0
        if latest and cfg.train.resume:
            self.start = load_checkpoint(self.engine, self.run_dir, latest[0])
        elif cfg.train.resume:
            print(f"[rank {self.rank}] train.resume=true but {self.run_dir} has no checkpoint: starting fresh",
                  flush=True)
        self.log = RunLogger(cfg, self.run_dir, self.main, self.start)
        self.token_cache = self.build_token_cache()
        counts = trainable_summary(self.engine.module)
        self.log.info(f"trainable parameters: lora {counts['lora']:,} | block {counts['block']:,} | frozen "
                      f"{counts['frozen']:,} | ZeRO stage {self.engine.zero_optimization_stage()} | "
                      f"{'bf16' if self.bf16 else 'fp32'} | world {self.world} | {self.plan.describe()} | "
                      f"{len(self.source)} samples"
                      + (f" | resumed at step {self.start}" if self.start else ""))

    # ------------------------------------------------------------------ data
    def build_token_cache(self):
        """The per-sample cache of the frozen front (``train/token_cache.py``), or None: ``train.token_cache_gib``
        is 0, or the block reads per-token extras (they are not cached)."""
        from train.split_search import token_inputs
        from train.token_cache import TokenCache

        budget = int(self.cfg.train.token_cache_gib * 2**30)
        if budget == 0 or any(block.requires for block in self.fusion_blocks()):
            return None
        return TokenCache(self.batch, lambda batch: token_inputs(self.thinker, batch), len(self.source), budget)

    def batch(self, indices: list[int]) -> dict:
        """Collated samples on the engine's device, float media in the engine's dtype."""
        batch = self.source.collate([self.source.example(i) for i in indices])
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        out = {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.engine.device)
                value = value.to(dtype) if value.is_floating_point() else value
            out[key] = value
        return out

    # ------------------------------------------------------------------ training
    def step(self, step: int):
        """One optimizer step (``plan.accum`` micro-batches on each rank); returns its metrics: the losses are the
        mean over the step's ``plan.micro_batches`` micro-batches of ALL ranks (each micro-batch weighs the same,
        as in the gradient DeepSpeed averages), the token counts their sums; equal to one rank's with the same
        global batch."""
        from train import loss as losses
        from train import split_search
        from train.logs import StepMetrics
        from train.order import position_seed

        cfg, plan, t0 = self.cfg, self.plan, time.perf_counter()
        if cfg.train.retentions:
            self.set_retention(cfg.train.retentions[step % len(cfg.train.retentions)])
        if cfg.fusion.temperature_final is not None:
            self.set_temperature(annealed_temperature(cfg.fusion.temperature, cfg.fusion.temperature_final, step,
                                                      cfg.train.steps))
        lrs = dict(zip((g["name"] for g in self.scheduler.optimizer.param_groups), self.scheduler.get_last_lr()))
        totals = torch.zeros(8, dtype=torch.float64)  # loss, ce, kd, video kept/total, audio kept/total, split
        searched = cfg.fusion.split == "searched"
        for micro in range(plan.accum):
            start = self.order.micro_batch_start(step, micro, self.rank, self.world, plan.accum, plan.micro)
            indices = self.order.positions(start, plan.micro)
            batch = self.batch(indices)
            labels = batch.pop("labels")
            tokens = None if self.token_cache is None else self.token_cache.tokens(self.thinker, indices, batch)
            # dropout (and any other draw from torch's global generator) of this micro-batch: keyed by its stream
            # position, so the same micro-batch draws the same on any rank, any number of ranks, after a resume
            torch.manual_seed(position_seed(cfg.train.seed, start, "noise"))
            teacher = losses.teacher_logits(self.engine.module, batch) if cfg.loss.kd else None
            block = split_search.active_block(self.fusion_blocks()) if searched else None
            candidates = None
            if searched:
                scored = self.scored_shares(start, len(labels), len(cfg.fusion.split_shares))
                candidates, tokens = split_search.candidate_losses(self.thinker, block, batch, labels, scored, tokens)
                block.force_split(self.exploring_shares(start, candidates.shape[0], candidates.shape[1]))
            with self.folded_lora():
                out = self.engine(**batch, av_tokens=tokens)
            aligned = losses.pruned_labels(labels, out.source_index)
            ce = losses.cross_entropy(out.logits, aligned)
            kd = torch.zeros((), device=ce.device)
            if teacher is not None:
                kd = losses.distillation(losses.answer_logits(out.logits, aligned),
                                         losses.answer_teacher_logits(teacher, out.source_index, aligned),
                                         cfg.loss.kd_temperature)
            split = torch.zeros((), device=ce.device)
            if candidates is not None:
                split = split_search.split_loss(block.last_split_prediction, candidates)
            loss = ce + cfg.loss.kd_weight * kd + cfg.loss.split_weight * split
            self.engine.backward(loss)  # DeepSpeed: / accum here, then the mean over ranks of the gradients
            crash_point("train-step")
            self.engine.step()
            stats = self.thinker.last_stats
            totals += torch.tensor([loss.item(), ce.item(), kd.item(), stats.video_after.sum().item(),
                                    stats.video_before.sum().item(), stats.audio_after.sum().item(),
                                    stats.audio_before.sum().item(), split.item()], dtype=torch.float64)
        if self.world > 1:  # sums over ranks, then / every micro-batch of the step: each weighs the same
            reduced = totals.to(self.engine.device)
            torch.distributed.all_reduce(reduced)
            totals = reduced.cpu()
        averaged = [0, 1, 2, 7]  # the losses; the token counts stay sums
        totals[averaged] /= plan.micro_batches
        return StepMetrics(step=step + 1, loss=float(totals[0]), ce=float(totals[1]), kd=float(totals[2]),
                           lr=lrs.get("lora", 0.0), block_lr=lrs.get("block", 0.0),
                           step_ms=1000 * (time.perf_counter() - t0), video_kept=int(totals[3]),
                           video_total=int(totals[4]), audio_kept=int(totals[5]), audio_total=int(totals[6]),
                           split=float(totals[7]))

    def folded_lora(self):
        """The gradient step's LoRA projections as one matmul each, ``(W + s B A) x`` (``train/merged_lora.py``; the
        same gradients up to float rounding); ZeRO-3 partitions A and B outside its own hooks: no folding there."""
        from contextlib import nullcontext

        from train.merged_lora import merged_lora

        if self.engine.zero_optimization_stage() == 3:
            return nullcontext()
        return merged_lora(self.thinker.model.language_model, grad=True)

    def per_sample_draws(self, start: int, batch_size: int, purpose: str, draw) -> torch.Tensor:
        """``draw(generator)`` for every sample of the micro-batch at stream positions ``start ..``, concatenated:
        sample ``i``'s generator is seeded by ``(train.seed, start + i, purpose)`` alone
        (:func:`train.order.position_seed`), so 2 ranks draw what 1 rank does and a resumed run what the
        uninterrupted one did."""
        from train.order import position_seed

        return torch.cat([draw(torch.Generator().manual_seed(position_seed(self.cfg.train.seed, start + i, purpose)))
                          for i in range(batch_size)])

    def exploring_shares(self, start: int, batch_size: int, n_shares: int) -> torch.Tensor:
        """``(B,)`` the searched split's forced shares of the micro-batch at ``start`` (-1: the head's choice)."""
        from train.split_search import exploring_share

        explore = self.cfg.loss.split_explore
        return self.per_sample_draws(start, batch_size, "explore",
                                     lambda g: exploring_share(1, n_shares, explore, g))

    def scored_shares(self, start: int, batch_size: int, n_shares: int) -> torch.Tensor | None:
        """``(B, S)`` the shares the search scores for the micro-batch at ``start`` (``loss.split_scored`` of them
        per sample), or None: all of them."""
        from train.split_search import scored_shares

        n_scored = self.cfg.loss.split_scored
        if n_scored is None or n_scored >= n_shares:
            return None
        return self.per_sample_draws(start, batch_size, "search", lambda g: scored_shares(1, n_shares, n_scored, g))

    def fusion_blocks(self) -> list:
        """Every copy of the block PEFT holds (the trained one and the original), found once."""
        if self._blocks is None:  # the schedules call this every step
            from fusion.block.block import FusionBlock

            self._blocks = [m for m in self.engine.module.modules() if isinstance(m, FusionBlock)]
        return self._blocks

    def set_retention(self, retention: float) -> None:
        """The block's retention (every copy PEFT holds: the trained one and the original)."""
        for block in self.fusion_blocks():
            if block.retention != retention:
                block.set_retention(retention)

    def set_temperature(self, temperature: float) -> None:
        """tau of the relaxed selection for this step (every copy of the block)."""
        for block in self.fusion_blocks():
            block.set_temperature(temperature)

    def train(self) -> bool:
        """Run the remaining steps; False when ``train.stop_after`` stopped the run early."""
        from train.checkpoint import save_checkpoint
        from train.distributed import barrier

        cfg = self.cfg
        self.engine.train()
        for step in range(self.start, cfg.train.steps):
            metrics = self.step(step)
            self.log.step(metrics)
            done = step + 1
            if done % cfg.train.save_every == 0 or done == cfg.train.steps:
                save_checkpoint(self.engine, self.run_dir, done, {"loss": metrics.loss},
                                cfg.train.keep_checkpoints, self.main, barrier)
            if cfg.train.stop_after is not None and done == cfg.train.stop_after and done < cfg.train.steps:
                self.log.info(f"stopping after step {done} (train.stop_after): no export, as if the job were killed")
                return False
        if self.token_cache is not None:
            self.log.info(f"token cache: {self.token_cache.describe()}")
        self.set_retention(cfg.fusion.retention)  # the adapter's default, whatever the schedule ended on
        return True

    # ------------------------------------------------------------------ outputs
    def probe(self) -> None:
        """Save the trained model's answer-position logits on the first micro-batch (final_probe.safetensors)."""
        from safetensors.torch import save_file

        from train.loss import answer_logits, pruned_labels

        indices = self.order.positions(0, self.cfg.train.micro_batch_size)
        batch = self.batch(indices)
        labels = batch.pop("labels")
        self.engine.eval()
        with torch.no_grad():
            out = self.engine(**batch)
        if self.main:
            logits = answer_logits(out.logits, pruned_labels(labels, out.source_index)).float().cpu().contiguous()
            path = self.run_dir / "final_probe.safetensors"
            tmp = path.with_name(path.name + ".tmp")  # write-then-rename: never a torn probe
            save_file({"logits": logits, "indices": torch.tensor(indices)}, str(tmp))
            tmp.replace(path)

    def export(self) -> Path:
        """``run_dir/adapter/`` (LoRA + the block via modules_to_save + fusion_config.json), written by rank 0 into a
        staging directory that then replaces the previous adapter atomically (train/export.py)."""
        from train.distributed import barrier
        from train.export import export_run_adapter

        target = self.run_dir / "adapter"
        if self.engine.zero_optimization_stage() == 3:  # gather the partitioned adapter weights first
            import deepspeed

            saved = [p for n, p in self.engine.module.named_parameters() if "lora_" in n or "av_fusion" in n]
            with deepspeed.zero.GatheredParameters(saved, modifier_rank=None):
                if self.main:
                    export_run_adapter(self.engine.module, target)
        elif self.main:
            export_run_adapter(self.engine.module, target)
        barrier()
        self.log.info(f"adapter written to {target}")
        return target

    def cleanup(self) -> None:
        self.log.close()
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def train(config: str | None, overrides: list[str]) -> None:
    """setup -> train -> probe -> export -> cleanup."""
    cfg = load_config(RunConfig, config, overrides)
    from train.distributed import single_process_env

    single_process_env()
    recipe = FusionRecipe(cfg, config)
    recipe.setup()
    if recipe.train():
        if cfg.train.probe:
            recipe.probe()
        recipe.export()
    recipe.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_library_bars()  # transformers' "Loading weights" bar: off in a log
    return run_reporting_errors(lambda: train(args.config, args.overrides))


if __name__ == "__main__":
    sys.exit(main())
