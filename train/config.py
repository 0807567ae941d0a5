"""The recipe's typed config: one dataclass per YAML section (``fusion`` is the block's own
:class:`~fusion.block.config.FusionConfig`). Loaded by :func:`fusion.config.load_config` from
``configs/fusion.yaml`` plus dotted ``key=value`` overrides; ``python train/run.py --help`` lists every key."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from fusion.block.config import FusionConfig
from fusion.config import invalid

# LoRA on the LLM's attention and MLP projections only. PEFT full-matches this against module names relative to
# the thinker, so the audio encoder's own q/k/v projections (model.audio_tower...) and the ViT (model.visual...)
# can never match.
LLM_LORA_REGEX = (r"model\.language_model\.layers\.\d+\."
                  r"(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))")


@dataclass
class ModelConfig:
    """The frozen backbone."""

    name: str = "tiny-random"
    """'tiny-random' (tests), 'qwen2_5_omni_3b'/'qwen2_5_omni_7b' (random weights at that size), or a hub id /
    local Qwen2.5-Omni checkpoint (e.g. Qwen/Qwen2.5-Omni-7B)."""
    seed: int = 0
    """Seed of random backbone weights (tiny-random and the random-weight configs)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel of the backbone."""


@dataclass
class LoraConfig:
    """LoRA on the LLM (PEFT)."""

    enabled: bool = True
    """false = the LLM stays exactly the base model (the LoRA layers are kept frozen at their zero init, so the
    adapter format and loading path are unchanged)."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: str = LLM_LORA_REGEX
    """Regex full-matched against module names relative to the thinker (must not reach the encoders)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise invalid("r", f"must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise invalid("dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class SyntheticConfig:
    """The ``synthetic`` source: random media in the processor's exact layout, a short answer to learn."""

    n_samples: int = 64
    """Number of distinct samples (the order cycles through them, one permutation per epoch)."""
    seconds_min: int = 2
    """Shortest clip, in seconds."""
    seconds_max: int = 4
    """Longest clip, in seconds."""
    frame_size: int = 56
    """Frame side in pixels (56 = 4 merged video tokens per temporal grid)."""
    cue: Literal["text", "media"] = "text"
    """Where the answer is written: 'text' = a colour word in the question maps to the letter (learnable by LoRA);
    'media' = the letter is the index of the 2-s chunk whose video and audio carry a strong offset."""
    seed: int = 0
    """Content seed (sample i is drawn from seed and i alone)."""

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise invalid("n_samples", f"must be >= 1, got {self.n_samples}")
        if not 1 <= self.seconds_min <= self.seconds_max:
            raise invalid("seconds_max", f"need 1 <= seconds_min <= seconds_max, got {self.seconds_min}, "
                                         f"{self.seconds_max}")
        if self.frame_size < 28 or self.frame_size % 28:
            raise invalid("frame_size", f"must be a positive multiple of 28, got {self.frame_size}")


@dataclass
class McqJsonlConfig:
    """The ``mcq_jsonl`` source (MCQ schema {id, video, question, options, answer, category})."""

    path: str | None = None
    """The JSONL file; relative video paths are resolved against its folder."""
    style: str = "toy"
    """Prompt style of the rendered chats: 'toy' or 'worldsense' (fusion.data.prompts)."""
    limit: int | None = None
    """Use only the first `limit` rows (None: all)."""

    def __post_init__(self) -> None:
        from fusion.data.prompts import STYLES

        if self.style not in STYLES:
            raise invalid("style", f"must be one of {list(STYLES)}, got {self.style!r}")
        if self.limit is not None and self.limit < 1:
            raise invalid("limit", f"must be >= 1 or null, got {self.limit}")


@dataclass
class DataConfig:
    """Which dataset source feeds the recipe, and the order seed."""

    source: str = "synthetic"
    """A registered source name: 'synthetic' or 'mcq_jsonl'."""
    seed: int = 0
    """Order seed: epoch e visits the samples in permutation(seed, e); fixed order = exact resume."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic source."""
    mcq_jsonl: McqJsonlConfig = field(default_factory=McqJsonlConfig)
    """Settings of the mcq_jsonl source."""


@dataclass
class TrainConfig:
    """Steps, batches, checkpoints, logging."""

    output_dir: str = "runs/fusion"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/."""
    steps: int = 200
    """Optimizer steps."""
    micro_batch_size: int = 2
    """Samples per rank per forward."""
    global_batch_size: int | None = None
    """Samples per optimizer step over ALL ranks, the same on any number of ranks: each rank accumulates
    global_batch_size / (micro_batch_size * ranks) micro-batches (must divide; train/batch_size.py). null = use
    grad_accum. Set one of the two."""
    grad_accum: int | None = None
    """Micro-batches per rank per optimizer step when global_batch_size is null (then the global batch is
    micro_batch_size * grad_accum * ranks: it grows with the ranks); null = 1, or derived from global_batch_size."""
    seed: int = 0
    """Seed of the trainable weights' initialisation (LoRA A) and of the RNG state."""
    save_every: int = 50
    """Checkpoint every N steps (and at the last step); the frozen backbone is never written."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    resume: bool = False
    """Continue from output_dir's last checkpoint (same data order, same losses as an uninterrupted run)."""
    stop_after: int | None = None
    """Stop after this many steps as if the job were killed (no export): for testing resume."""
    log_every: int = 10
    """Print a log line every N steps (metrics.jsonl gets every step)."""
    progress: bool = True
    """Show progress on rank 0: a tqdm bar on a terminal, a plain line every 10 % or 30 s in a log."""
    bf16: bool | None = None
    """bf16 mixed precision; null = bf16 on GPU, fp32 on CPU."""
    cpu_shm_op: bool = False
    """Build DeepSpeed's shared-memory all-reduce op on CPU (only DeepSpeed inference uses it; ~20 s JIT build)."""
    retentions: list[float] = field(default_factory=list)
    """Retention schedule of the block while training: step s keeps ``retentions[s % len]`` (cycled, so a resumed
    run sees the same schedule); empty = ``fusion.retention`` every step. One adapter trained on, e.g., [0.1, 0.25]
    serves both budgets; the adapter still records ``fusion.retention`` as its default."""
    token_cache_gib: float = 4.0
    """Memory for the per-sample cache of the frozen encoders' tokens and TMRoPE ids (train/token_cache.py): each
    sample's are built once, alone, and reused at every later visit; 0 = rebuild them every step."""
    probe: bool = True
    """At the end, save the trained model's answer-position logits on the first batch (final_probe.safetensors)."""

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "save_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise invalid(name, f"must be >= 1, got {getattr(self, name)}")
        if self.grad_accum is not None and self.grad_accum < 1:
            raise invalid("grad_accum", f"must be >= 1 or null, got {self.grad_accum}")
        if self.global_batch_size is not None:
            if self.grad_accum is not None:
                raise invalid("global_batch_size", f"and grad_accum={self.grad_accum} are both set; set one and "
                                                   "null the other (global_batch_size stays constant over ranks, "
                                                   "grad_accum is per rank)")
            if self.global_batch_size < 1 or self.global_batch_size % self.micro_batch_size:
                raise invalid("global_batch_size", f"must be a positive multiple of micro_batch_size="
                                                   f"{self.micro_batch_size}, got {self.global_batch_size}")
        if not (math.isfinite(self.token_cache_gib) and self.token_cache_gib >= 0):
            raise invalid("token_cache_gib", f"must be >= 0 (GiB; 0 disables the cache), got {self.token_cache_gib}")
        for r in self.retentions:
            if isinstance(r, bool) or not (isinstance(r, (int, float)) and math.isfinite(r) and 0 < r <= 1):
                raise invalid("retentions", f"every entry must be in (0, 1] (the fraction KEPT), got {r!r}")
        if self.stop_after is not None and not 1 <= self.stop_after <= self.steps:
            raise invalid("stop_after", f"must be in [1, steps={self.steps}] or null, got {self.stop_after}")


@dataclass
class OptimConfig:
    """AdamW (a client torch optimizer: no DeepSpeed JIT op) and the learning-rate schedule."""

    lr: float = 2e-4
    """Learning rate of the LoRA weights."""
    block_lr: float | None = None
    """Learning rate of the fusion block (null = lr); the block is trained from scratch."""
    scorer_lr: float | None = None
    """Learning rate of the block's keep-scorer MLP (null = block_lr; 0 = frozen at its random initialisation)."""
    split_lr: float | None = None
    """Learning rate of the block's split head (``fusion.split: searched``; null = block_lr)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """After warm-up: constant, or cosine decay to 0 at train.steps."""
    clip: float = 1.0
    """Gradient-norm clipping (DeepSpeed gradient_clipping); 0 disables it."""

    def __post_init__(self) -> None:
        if not self.lr > 0 or (self.block_lr is not None and not self.block_lr > 0):
            raise invalid("lr", f"learning rates must be > 0, got lr={self.lr}, block_lr={self.block_lr}")
        if self.split_lr is not None and not self.split_lr > 0:
            raise invalid("split_lr", f"must be > 0 or null, got {self.split_lr}")
        if self.scorer_lr is not None and not self.scorer_lr >= 0:
            raise invalid("scorer_lr", f"must be >= 0 (0 freezes the scorer) or null, got {self.scorer_lr}")
        if len(self.betas) != 2:
            raise invalid("betas", f"needs two values, got {self.betas}")
        if self.warmup_steps < 0 or self.clip < 0:
            raise invalid("warmup_steps", "warmup_steps and clip must be >= 0")


@dataclass
class LossConfig:
    """Cross-entropy on the answer tokens, plus optional distillation from the uncompressed backbone."""

    kd: bool = False
    """Add KL(teacher || student) on the answer positions; teacher = same backbone, uncompressed, adapter off."""
    kd_weight: float = 1.0
    """Weight of the KL term: loss = ce + kd_weight * kl."""
    kd_temperature: float = 1.0
    """Distillation temperature T (the KL is scaled by T^2)."""
    split_weight: float = 1.0
    """With ``fusion.split: searched``: loss = ce + ... + split_weight * mean (l^ - l)^2, the split head's regression
    on the answer loss l of every candidate share (``train/split_search.py``)."""
    split_explore: float = 0.5
    """Probability that a sample's gradient step uses a uniformly random candidate share instead of the head's
    (LoRA then learns every split; without it the head's first choice confirms itself)."""
    split_scored: int | None = None
    """Candidate shares scored per sample and step (uniformly drawn, answer-free; the regression averages over those
    alone): the search costs split_scored / S of scoring all S. None: every share."""

    def __post_init__(self) -> None:
        if self.kd_weight < 0 or not self.kd_temperature > 0:
            raise invalid("kd_weight", "kd_weight must be >= 0 and kd_temperature > 0")
        if self.split_weight < 0 or not 0 <= self.split_explore <= 1:
            raise invalid("split_weight", "split_weight must be >= 0 and split_explore in [0, 1]")
        if self.split_scored is not None and self.split_scored < 1:
            raise invalid("split_scored", f"split_scored must be a number of shares >= 1 or null, got "
                                          f"{self.split_scored!r}")


@dataclass
class WandbConfig:
    """Weights & Biases logging (rank 0); WANDB_MODE in the environment overrides mode."""

    enabled: bool = False
    """Log to wandb."""
    mode: Literal["offline", "online", "disabled"] = "offline"
    """offline (default: files under output_dir/wandb, `wandb sync` later), online, or disabled."""
    project: str = "av-fusion"
    """wandb project."""
    name: str | None = None
    """Run name (default: fusion-<scorer>-r<retention>-s<seed>)."""
    group: str | None = None
    """Run group (e.g. a sweep)."""


@dataclass
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The frozen backbone."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """The learned block."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA on the LLM."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset source and order."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Steps, batches, checkpoints, logging."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss terms."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """wandb logging."""
    deepspeed: dict[str, Any] | str = "configs/deepspeed/zero2.json"
    """A DeepSpeed JSON file (path) or an inline mapping; concrete values only (no "auto"). Batch sizes,
    clipping and bf16 come from train/optim and must not be repeated there with other values."""

    def __post_init__(self) -> None:
        if not self.lora.enabled and not self.fusion.fused and self.fusion.scorer != "learned":
            raise invalid("lora.enabled", "nothing would be trained: LoRA is off, fused tokens are off and the "
                                          "scorer is training-free; enable one of them")
