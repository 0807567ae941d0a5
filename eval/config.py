"""The harness's typed config: one dataclass per YAML section, loaded by :func:`fusion.config.load_config` from
``configs/eval_*.yaml`` plus dotted ``key=value`` overrides; ``python eval/run.py --help`` lists every key.

A run is a matrix: ``methods`` (each entry one method with its own parameters) x ``retentions`` x one benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fusion.config import invalid

BENCHMARKS = ("toyworld", "toyworld_long", "worldsense", "jsonl")


@dataclass
class ModelConfig:
    """The backbone every method runs on."""

    name: str = "toy"
    """'toy' (the pre-trained ToyWorld backbone), 'toy_long' (the ToyWorld-Long one), 'tiny-random' (tests), or a
    hub id / local Qwen2.5-Omni checkpoint (e.g. Qwen/Qwen2.5-Omni-3B)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and media dtype; auto = bfloat16 on cuda, float32 on cpu."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """Attention kernel of the backbone (written with every result row)."""
    device: str = "auto"
    """'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ..."""
    seed: int = 0
    """Seed of random weights (tiny-random)."""
    threads: int | None = None
    """torch CPU threads (null: torch's default)."""


@dataclass
class ToyWorldData:
    """The ``toyworld`` benchmark: its test split, generated into ``dir`` when missing."""

    dir: str = "runs/toyworld"
    """Folder with test.jsonl + videos/ (python -m fusion.data.toyworld writes it); generated here when missing."""
    n_test: int = 200
    """Test clips generated when the folder has none (an existing split is used as it is; see data.limit)."""
    seed: int = 0
    """Generator seed (clip i of the test split is drawn from [seed, 1, i])."""
    seconds: int = 4
    """Clip length in seconds (>= 4)."""
    split: Literal["test", "val"] = "test"
    """test: the reported split (generated when missing); val: the validation split for choosing recipes and
    hyper-parameters (val.jsonl, written by ``python -m fusion.data.toyworld ... --n-val N``)."""


@dataclass
class ToyWorldLongData:
    """The ``toyworld_long`` benchmark (fusion/data/toyworld_long.py): 8-16 s video-heavy clips, generated into
    ``dir`` when missing; group by ``length_bucket`` for accuracy vs clip length."""

    dir: str = "runs/toyworld_long"
    """Folder with test.jsonl + videos/ (python -m fusion.data.toyworld_long writes it); generated when missing."""
    n_test: int = 800
    """Test clips generated when the folder has none."""
    seed: int = 0
    """Generator seed (clip i of the test split is drawn from [seed, 1, i])."""
    min_seconds: int = 8
    """Shortest clip (>= 8)."""
    max_seconds: int = 16
    """Longest clip."""
    split: Literal["test", "val"] = "test"
    """test: the reported split; val: the validation split for choosing recipes (must exist)."""


@dataclass
class WorldSenseData:
    """The ``worldsense`` benchmark from a local copy (ROOT/worldsense_qa.json + ROOT/videos/<video_id>.mp4)."""

    root: str | None = None
    """The dataset folder (honglyhly/WorldSense with its videos unzipped)."""
    qa_file: str = "worldsense_qa.json"
    """The QA file's name inside root."""
    video_dir: str = "videos"
    """The videos' folder inside root."""


@dataclass
class DataConfig:
    """Which benchmark, how media are sampled and how prompts look."""

    benchmark: Literal["toyworld", "toyworld_long", "worldsense", "jsonl"] = "toyworld"
    """toyworld / toyworld_long (generated if missing), worldsense (local copy) or jsonl (our MCQ schema,
    fusion/data/mcq.py)."""
    toyworld: ToyWorldData = field(default_factory=ToyWorldData)
    """Settings of the toyworld benchmark."""
    toyworld_long: ToyWorldLongData = field(default_factory=ToyWorldLongData)
    """Settings of the toyworld_long benchmark."""
    worldsense: WorldSenseData = field(default_factory=WorldSenseData)
    """Settings of the worldsense benchmark."""
    jsonl: str | None = None
    """The MCQ JSONL file of the jsonl benchmark (relative video paths resolve against its folder)."""
    limit: int | None = None
    """Evaluate only the first N questions (null: all)."""
    max_frames: int = 768
    """Frame cap per video (qwen-omni-utils' default 768; the OmniZip/WorldSense papers use 128)."""
    prompt: Literal["toy", "worldsense"] = "toy"
    """Prompt style (fusion/data/prompts.py): 'toy' or 'worldsense' (lmms-eval's WorldSense prompt + Qwen's system
    prompt)."""
    use_audio: bool = True
    """Feed each clip's audio track (interleaved with its video); false = a video-only control."""
    on_error: Literal["skip", "fail"] = "skip"
    """A question whose media cannot be used (missing, empty, corrupt, no video stream, longer than the model's
    context): skip = record it with its error and go on; it is counted (n_skipped, n_failed), named in results.json
    and results.md, and left out of accuracy, which is reported over the scored questions and, as
    accuracy_strict, with the unscored ones counted wrong; fail = stop the run at the first one (exit status 2)."""

    def __post_init__(self) -> None:
        if self.benchmark == "worldsense" and not self.worldsense.root:
            raise invalid("worldsense.root", "is required for benchmark=worldsense (the folder holding "
                                             "worldsense_qa.json and videos/)")
        if self.benchmark == "jsonl" and not self.jsonl:
            raise invalid("jsonl", "is required for benchmark=jsonl (the MCQ JSONL file)")
        if self.limit is not None and self.limit < 1:
            raise invalid("limit", f"must be >= 1 or null, got {self.limit}")
        if self.max_frames < 2:
            raise invalid("max_frames", f"must be >= 2 (the temporal patch), got {self.max_frames}")


@dataclass
class ScoringConfig:
    """How an answer is read off the model."""

    mode: Literal["logits", "generate"] = "logits"
    """logits: one prefill, argmax over the option letters' logits; generate: greedy decoding, then the letter is
    parsed as lmms-eval's WorldSense scorer does (fusion.data.scoring.parse_letter)."""
    max_new_tokens: int = 16
    """Tokens generated per question in generate mode."""
    batch_size: int = 1
    """Questions per forward (1 for long real videos: batched logits mode keeps the full (B, L, V) logits)."""
    time_prefill: bool = True
    """In generate mode, also time a separate prefill forward (one extra prefill per batch); logits mode's scoring
    forward IS the prefill."""
    warmup: int = 1
    """Untimed forwards per method setting before its first timed one (on its first batch)."""

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise invalid(name, f"must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise invalid("warmup", f"must be >= 0, got {self.warmup}")


@dataclass
class MethodEntry:
    """One method of the matrix. Rows: one per retention (``retentions``, else the run's), or one per entry of
    ``settings`` when the budget is set by the method's own parameters (OmniZip rho pairs, DyCoke k)."""

    method: str = "none"
    """Registry name (fusion.METHODS): none, uniform, random, omnizip, segment_topk, vidcom2, divprune, dycoke, fastv,
    keyframe, audio_attn, xattn, pair, fusion."""
    name: str | None = None
    """Display name in tables (default: the method's own display name, e.g. keyframe+audio_attn for a pair)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The method's own parameters (e.g. {k: 1} for fastv, {video: keyframe, audio: audio_attn} for pair)."""
    retentions: list[float] | None = None
    """Retentions of this entry (null: the run's retentions; method none: [1.0])."""
    settings: list[dict[str, Any]] | None = None
    """Explicit settings, one row each, merged over params; a setting may hold 'retention' and 'label' (the row's
    name suffix). E.g. [{rho_audio: 0.3, rho_video: 0.6, label: '45%'}]."""
    adapter: str | None = None
    """method=fusion: a trained adapter directory (run_dir/adapter); null = an untrained block."""

    def __post_init__(self) -> None:
        from fusion.errors import UnknownMethodError
        from fusion.pruners import METHODS

        try:
            METHODS[self.method]
        except UnknownMethodError as e:
            raise invalid("method", str(e)) from None
        if self.adapter is not None and self.method != "fusion":
            raise invalid("adapter", f"only method=fusion takes an adapter (got method={self.method!r})")
        if self.adapter is not None and self.params:
            raise invalid("params", "an adapter holds the block's settings (fusion_config.json); give no params")
        if self.retentions is not None:
            if not self.retentions:
                raise invalid("retentions", "must hold at least one retention (or be null)")
            for r in self.retentions:
                if not 0 < r <= 1:
                    raise invalid("retentions", f"every retention is a fraction KEPT in (0, 1], got {r}")
        if self.settings is not None and self.retentions is not None:
            raise invalid("settings", "give either settings (budget from the method's parameters) or retentions")
        if self.settings is not None and not self.settings:
            raise invalid("settings", "must hold at least one setting (or be null)")


@dataclass
class FlopsConfig:
    """Analytic FLOPs (DyCoke App. C / FastV; multiply-accumulates, as the papers count)."""

    decode_tokens: int = 100
    """R, the decoded tokens counted in the decode term (the papers use R = 100 'for calculation')."""


@dataclass
class GroupSpec:
    """A way to group accuracy (one table per group; the first one gives the main table's columns)."""

    name: str = "category"
    """Column header of the grouping (e.g. domain, task_type)."""
    key: str = "category"
    """The sample field: 'category' or a key of the sample's extra (e.g. task_domain for WorldSense)."""
    order: list[str] | None = None
    """Column order (null: sorted); values not listed follow, sorted."""
    plot: bool = False
    """Also draw accuracy_vs_<name>.png: accuracy per group value, one line per method, a panel per retention."""


@dataclass
class RunSection:
    """Where results go and what is printed."""

    output_dir: str = "runs/eval"
    """Run directory: config.yaml, samples.jsonl, results.json, results.md, accuracy_vs_retention.png."""
    progress: bool = True
    """Show progress: a tqdm bar on a terminal, a plain line every 10 % or 30 s in a log (fusion/progress.py)."""
    retry_failed: bool = False
    """On a rerun, redo the samples that failed before (default: a failure is a result and is kept)."""


@dataclass
class EvalConfig:
    """Everything one evaluation run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone."""
    data: DataConfig = field(default_factory=DataConfig)
    """The benchmark."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """How answers are read."""
    methods: list[MethodEntry] = field(default_factory=lambda: [MethodEntry()])
    """The methods (rows of the tables)."""
    retentions: list[float] = field(default_factory=lambda: [0.25, 0.1])
    """Retentions every method entry runs at unless it gives its own."""
    flops: FlopsConfig = field(default_factory=FlopsConfig)
    """FLOPs accounting."""
    groups: list[GroupSpec] = field(default_factory=lambda: [GroupSpec()])
    """Accuracy groupings (the first one gives the main table's columns)."""
    run: RunSection = field(default_factory=RunSection)
    """Outputs."""

    def __post_init__(self) -> None:
        if not self.methods:
            raise invalid("methods", "needs at least one method entry")
        if not self.groups:
            raise invalid("groups", "needs at least one grouping (e.g. [{name: category, key: category}])")
        for r in self.retentions:
            if not 0 < r <= 1:
                raise invalid("retentions", f"every retention is a fraction KEPT in (0, 1], got {r}")
