"""The learned block's hyper-parameters (`FusionConfig`), the backbone it was built for (`BaseIdentity`), and
``fusion_config.json``, the file that travels with a trained adapter."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from fusion.config import from_dict, invalid
from fusion.errors import AdapterMismatchError, ConfigError

FUSION_CONFIG_NAME = "fusion_config.json"
FORMAT = "av-fusion/fusion-block"
FORMAT_VERSION = 1


@dataclass
class FusionConfig:
    """The V<->A fusion block (registry name ``fusion``); every field is a ``fusion.<name>`` key of the recipe."""

    retention: float = 0.25
    """Fraction of the audio+video tokens KEPT, in (0, 1]; a pool of N keeps ceil(retention * N)."""
    budget: Literal["joint", "modality"] = "joint"
    """joint: one top-k over the N_v + N_a pool (the split emerges from the scores); modality: ceil(r * N) each."""
    scorer: str = "learned"
    """'learned' (scorer MLP + straight-through top-k) or the registry name of a training-free method, which then
    chooses the tokens (on the fused embeddings) while the block's fusion and LoRA still learn."""
    scorer_params: dict[str, Any] = field(default_factory=dict)
    """Parameters of a training-free scorer method (e.g. {budget: joint}); must be empty for 'learned'."""
    fused: bool = True
    """Replace the AV tokens by their fused version (cross-attention); false = the scorer sees the raw tokens."""
    instruction: bool = False
    """Instruction pre-fusion: AV tokens also attend to the question's text tokens (those after the media block,
    up to the end of the user turn)."""
    dim: int = 256
    """Width d of the block's internal space (D -> d -> D)."""
    heads: int = 4
    """Attention heads of each cross-attention (d must be divisible by heads)."""
    layers: int = 1
    """Stacked bidirectional cross-attention + MLP layers in the d-space."""
    neighbours: int = 1
    """A token attends to the other modality in its own 2-s time group and in groups g-n .. g+n."""
    scorer_hidden: int = 256
    """Hidden width of the scorer MLP (D -> scorer_hidden -> 1)."""
    temperature: float = 1.0
    """Softmax temperature tau of the straight-through estimator: y_soft = softmax(s / tau)."""
    standardise: bool = False
    """Standardise the keep-scores within each modality of each sample, z = (s - mean) / std, before the top-k.
    With the joint budget the split between video and audio then follows the shape of the two score
    distributions, never an offset between them: the straight-through gradient along such an offset measures how
    the loss reacts to scaling a whole modality's tokens, not their relevance, and on a sharp backbone it drove the
    joint budget to one modality (README, ToyWorld). False (the value of adapters saved before it existed):
    raw scores. Learned scorer only (a training-free scorer ranks by its own rule)."""
    allocation: bool = False
    """Coverage-aware selection (``fusion/block/allocation.py``): a learned head splits each pool's budget over its
    cells (one modality of one 2-s time group; the integer counts sum exactly to the budget), then the top-scored
    tokens of each cell are kept. At initialisation every cell gets the pool's retention (an even spread).
    False (adapters saved before it existed): one top-k over the whole pool."""
    relaxation: Literal["ste", "soft", "marginal"] = "ste"
    """How training differentiates the selection. ste: hard top-k forward, softmax straight-through backward
    (dropped tokens get gradient only through the softmax normaliser; with ``allocation`` the budgets get none).
    soft: every token stays in the sequence with the attention bias log y on its key, y = sigmoid((s - t) / tau)
    with t solved so the kept mass is the budget (``fusion/block/relaxed.py``), so the LM loss reaches every
    score and the allocation; tau is annealed from ``temperature`` to ``temperature_final``. marginal (with
    ``allocation``): the hard per-cell top-k, plus each cell's next-best token at weight frac(kappa_c) (attention
    bias log frac), so the budgets learn whether one more token of a cell helps; the scores learn through the
    straight-through gate. Evaluation always uses the hard top-k."""
    split: Literal["off", "searched"] = "off"
    """searched (``fusion/block/split.py``): a head reads the question and the clip and picks the video share of the
    joint budget among ``split_shares``; each modality then keeps its top-scored tokens. It learns from a search:
    the trainer scores every candidate share with the current model (no gradient) and the head learns to predict
    each share's answer loss (``loss.split_weight``); the block keeps the cheapest. At initialisation it picks the
    share nearest the proportional split. off: the split emerges from one joint top-k."""
    split_shares: list[float] = field(default_factory=lambda: [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0])
    """Candidate video shares of the joint budget for ``split: searched`` (sorted, in [0, 1], at least two)."""
    split_prior: float = 0.5
    """lambda: a share costs its predicted answer loss + lambda |share - proportional share|, so moving away from the
    proportional split needs a predicted gain (answer cross-entropy, nats) larger than lambda times the distance."""
    temperature_final: float | None = None
    """tau at the last training step (geometric schedule from ``temperature``); None = constant tau."""
    init_seed: int = 0
    """Seed of the block's random initialisation (the gate starts at exactly zero regardless)."""

    def __post_init__(self) -> None:
        if isinstance(self.retention, bool) or not (isinstance(self.retention, (int, float))
                                                    and math.isfinite(self.retention) and 0 < self.retention <= 1):
            raise invalid("retention", f"must be in (0, 1] (the fraction of tokens KEPT), got {self.retention!r}")
        if self.budget not in ("joint", "modality"):
            raise invalid("budget", f"must be 'joint' or 'modality', got {self.budget!r}")
        for name in ("dim", "heads", "layers", "scorer_hidden"):
            if getattr(self, name) < 1:
                raise invalid(name, f"must be >= 1, got {getattr(self, name)}")
        if self.neighbours < 0:
            raise invalid("neighbours", f"must be >= 0 (groups on each side), got {self.neighbours}")
        if self.dim % self.heads:
            raise invalid("heads", f"dim={self.dim} is not divisible by heads={self.heads}; pick a divisor of dim")
        if not self.temperature > 0:
            raise invalid("temperature", f"must be > 0, got {self.temperature}")
        if self.temperature_final is not None and not self.temperature_final > 0:
            raise invalid("temperature_final", f"must be > 0 or null, got {self.temperature_final}")
        if self.relaxation not in ("ste", "soft", "marginal"):
            raise invalid("relaxation", f"must be 'ste', 'soft' or 'marginal', got {self.relaxation!r}")
        if self.relaxation == "marginal" and not self.allocation:
            raise invalid("relaxation", "'marginal' relaxes the per-cell budgets: it needs fusion.allocation=true")
        if self.scorer != "learned" and (self.allocation or self.relaxation != "ste"):
            raise invalid("allocation" if self.allocation else "relaxation",
                          f"applies to the learned scorer only; fusion.scorer={self.scorer!r} ranks by its own rule "
                          "(set fusion.allocation=false fusion.relaxation=ste)")
        if self.split not in ("off", "searched"):
            raise invalid("split", f"must be 'off' or 'searched', got {self.split!r}")
        if self.split == "searched":
            if self.scorer != "learned" or self.allocation or self.relaxation != "ste" or self.budget != "joint":
                raise invalid("split", "'searched' splits one joint budget of the learned scorer between the "
                                       "modalities: it needs fusion.scorer=learned fusion.budget=joint "
                                       "fusion.allocation=false fusion.relaxation=ste")
            shares = self.split_shares
            if not (isinstance(shares, (list, tuple)) and all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                              and 0.0 <= f <= 1.0 for f in shares)
                    and len(set(shares)) >= 2):
                raise invalid("split_shares", f"needs at least two distinct video shares in [0, 1], got {shares!r}")
            self.split_shares = sorted(float(f) for f in shares)
            if not (isinstance(self.split_prior, (int, float)) and self.split_prior >= 0):
                raise invalid("split_prior", f"must be >= 0, got {self.split_prior!r}")
        if self.scorer != "learned":
            from fusion.pruners import METHODS

            if self.scorer == "fusion" or self.scorer not in set(METHODS):
                known = ", ".join(m for m in METHODS if m != "fusion")
                raise invalid("scorer", f"{self.scorer!r} is neither 'learned' nor a training-free method; "
                                        f"known methods: {known}")
        elif self.scorer_params:
            raise invalid("scorer_params", "only a training-free scorer takes parameters; the learned scorer is "
                                           "configured by scorer_hidden/temperature")


@dataclass(frozen=True)
class BaseIdentity:
    """The backbone sizes an adapter depends on (recorded in fusion_config.json and checked at load time)."""

    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    turn_end_token_id: int | None = None
    """Token that ends the user turn (``<|im_end|>``, the thinker's eos): bounds the question for pre-fusion."""

    @classmethod
    def from_config(cls, config) -> BaseIdentity:
        """From a thinker config (Qwen2_5OmniThinkerConfig)."""
        text = config.get_text_config()
        eos = text.eos_token_id if text.eos_token_id is not None else getattr(config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
        return cls(model_type=str(config.model_type), hidden_size=int(text.hidden_size),
                   num_hidden_layers=int(text.num_hidden_layers), num_attention_heads=int(text.num_attention_heads),
                   num_key_value_heads=int(text.num_key_value_heads), intermediate_size=int(text.intermediate_size),
                   vocab_size=int(text.vocab_size), turn_end_token_id=None if eos is None else int(eos))

    def mismatches(self, other: BaseIdentity) -> list[str]:
        """``["hidden_size: adapter 64, model 2048", ...]`` for every field that differs."""
        return [f"{f.name}: adapter {getattr(self, f.name)!r}, model {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def save_fusion_config(directory: str | Path, config: FusionConfig, base: BaseIdentity) -> Path:
    """Write ``directory/fusion_config.json`` (the block's hyper-parameters and the backbone's identity)."""
    path = Path(directory) / FUSION_CONFIG_NAME
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "block": asdict(config), "base": asdict(base)}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_fusion_config(directory: str | Path) -> tuple[FusionConfig, BaseIdentity]:
    """Read ``directory/fusion_config.json``; a missing or malformed file is an :class:`AdapterMismatchError`."""
    path = Path(directory) / FUSION_CONFIG_NAME
    if not path.is_file():
        raise AdapterMismatchError(
            f"{path} does not exist: {directory} is not a fusion-block adapter (a trained run writes "
            f"run_dir/adapter/ with adapter_config.json, adapter_model.safetensors and {FUSION_CONFIG_NAME})"
        )
    try:
        payload = json.loads(path.read_text())
        if payload.get("format") != FORMAT:
            raise ValueError(f"format is {payload.get('format')!r}, expected {FORMAT!r}")
        if payload.get("version") != FORMAT_VERSION:
            raise ValueError(f"version {payload.get('version')!r} is not supported (this code reads {FORMAT_VERSION})")
        block = from_dict(FusionConfig, payload["block"], prefix="block")
        base = BaseIdentity(**payload["base"])
    except (ValueError, KeyError, TypeError, ConfigError) as e:
        raise AdapterMismatchError(f"{path} is malformed ({e}); re-export the adapter with this version") from None
    return block, base


def check_base(adapter_base: BaseIdentity, model_config, where: str = "the adapter") -> None:
    """Raise :class:`AdapterMismatchError` if the model is not the backbone ``adapter_base`` describes."""
    found = BaseIdentity.from_config(model_config)
    diff = adapter_base.mismatches(found)
    if diff:
        raise AdapterMismatchError(
            f"{where} was trained on another backbone ({'; '.join(diff)}); load it onto the backbone it was trained "
            "on (same model size and tokenizer)"
        )
