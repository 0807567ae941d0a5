"""`CompressedQwen3Thinker`: Qwen3-Omni's HF thinker (Qwen3OmniMoe) with the same compression hook as Qwen2.5-Omni.

The hook is :class:`fusion.model.compression.CompressionMixin` unchanged (encoders -> scatter -> full MRoPE ids
-> AVTokens -> compressor -> Selection -> apply_keep -> language model). What differs on Qwen3-Omni:

- **Layout.** Audio runs at its own rate (13 tokens/s, one id per token; ``position_id_per_seconds`` = 13) and an
  audio-in-video block is merged token by token in time order (no 2-s chunks). ``AVTokens.time_group`` is therefore
  cut from the time ids alone: group = ``floor(time_id / (13 * 2))`` (2-s groups, ``seconds_per_chunk``).
- **Ids.** Interleaved MRoPE ids are floats; kept tokens keep their original ids and decoding continues at
  ``max(kept id) + 1`` (``apply_keep``'s rope deltas).
- **DeepStack.** The vision tower returns extra features ``ds_l`` ``(N_visual, D)`` that the language model adds
  to the hidden states at visual positions after its first layers: ``h_l[visual_pos_masks] += ds_l``. They are
  gathered with the same kept index as everything else: ``ds_l' = ds_l[keep[visual]]`` and
  ``visual_pos_masks' = visual[source_index]`` (so a dropped video token takes its DeepStack rows with it).
- **Audio scores.** Methods reading the audio encoder's attention (``audio_attn``, ``segment_topk``, OmniZip) get it
  from the AuT encoder's last layer, which runs at the token rate (``attention_received_tokens``, no pooling).
- **In-LLM hooks** (FastV, DyCoke stage 2) are refused: ``fusion.model.hooked_lm`` runs the decoder layers itself
  and would skip the DeepStack additions.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import Qwen3OmniMoeThinkerForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

from fusion.errors import InputMismatchError, UnsupportedOptionError
from fusion.model.audio_attention import MODES, LastLayerInputRecorder, attention_received_tokens
from fusion.model.compression import CompressionMixin
from fusion.model.keep import PrunedBatch
from fusion.model.video_chunks import encode_video_in_chunks
from fusion.tokens import AVTokens


class CompressedQwen3Thinker(CompressionMixin, Qwen3OmniMoeThinkerForConditionalGeneration):
    """Qwen3-Omni's thinker with a compressor (see the module doc and
    :class:`~fusion.model.compression.CompressionMixin`)."""

    default_video_fps = 1.0  # Qwen3-Omni's processor samples 1 fps when no fps is given
    packed_encoder_attention = False  # the packed path is written for Qwen2.5's towers; Qwen3's run stock

    def __init__(self, config) -> None:
        super().__init__(config)
        self._deepstack: dict[str, list[Tensor]] = {}

    # ------------------------------------------------------------------ encoders (keep the DeepStack features)
    def _encode_video(self, pixel_values_videos: Tensor, video_grid_thw: Tensor) -> Tensor:
        pieces: list[list[Tensor]] = []  # per encoder call: one (n, D) tensor per DeepStack layer

        def encode(pixels: Tensor, grid: Tensor) -> Tensor:
            out = self.model.get_video_features(pixels, grid)
            pieces.append([torch.cat(feat) for feat in out.deepstack_features])
            return torch.cat(out.pooler_output)  # (n, D)

        video = encode_video_in_chunks(encode, pixel_values_videos, video_grid_thw, self.video_chunk_grids)
        self._deepstack["video"] = [torch.cat(layer) for layer in zip(*pieces)]  # per layer (N_v, D)
        return video

    def _encode_image(self, pixel_values: Tensor, image_grid_thw: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values, image_grid_thw)
        self._deepstack["image"] = [torch.cat(feat) for feat in out.deepstack_features]  # per layer (N_i, D)
        return torch.cat(out.pooler_output)

    def _audio_features(self, input_features, feature_attention_mask, audio_feature_lengths, requires):
        """Audio embeds ``(N_a, D)`` and the requested attention-received scores ``{mode: (N_a,)}``, read from the
        AuT encoder's last layer, which already runs at 13 tokens per second (no pooling after it)."""
        modes = [m for m in MODES if f"audio_attention_{m}" in requires]
        if not modes:
            return super()._audio_features(input_features, feature_attention_mask, audio_feature_lengths, requires)
        if feature_attention_mask is None:
            raise InputMismatchError("audio attention scores need feature_attention_mask (the processor returns it)")
        with LastLayerInputRecorder(self.model.audio_tower) as rec:
            out = self.model.get_audio_features(input_features, feature_attention_mask, audio_feature_lengths)
        token_lens = _get_feat_extract_output_lengths(feature_attention_mask.sum(-1),
                                                      self.config.audio_config.n_window)  # (n_clips,)
        layer = self.model.audio_tower.layers[-1]
        scores = {m: attention_received_tokens(layer, rec.hidden_states, rec.cu_seqlens, token_lens, m)
                  for m in modes}
        return out.last_hidden_state, scores

    def build_tokens(self, input_ids: Tensor, *args, **kwargs) -> AVTokens:
        self._deepstack = {}
        return super().build_tokens(input_ids, *args, **kwargs)

    # ------------------------------------------------------------------ DeepStack follows the kept index
    def _visual_deepstack(self, tokens: AVTokens) -> tuple[Tensor, list[Tensor]] | None:
        """``(B, L)`` visual mask (video | image) and per DeepStack layer ``(N_visual, D)`` rows in row-major
        order of that mask (the stock thinker's joint layout), or None without visual inputs."""
        if not self._deepstack:
            return None
        ids = tokens.special_ids
        video, image = tokens.input_ids == ids.video, tokens.input_ids == ids.image  # (B, L)
        visual = video | image
        if "video" in self._deepstack and "image" in self._deepstack:
            layers = []
            for vid, img in zip(self._deepstack["video"], self._deepstack["image"]):
                joint = vid.new_zeros(int(visual.sum()), vid.shape[-1])  # (N_visual, D)
                joint[video[visual]] = vid
                joint[image[visual]] = img.to(vid.dtype)
                layers.append(joint)
            return visual, layers
        return visual, next(iter(self._deepstack.values()))

    def _after_keep(self, tokens: AVTokens, selection, pruned: PrunedBatch) -> PrunedBatch:
        found = self._visual_deepstack(tokens)
        self._deepstack = {}
        if found is None:
            return pruned
        visual, layers = found
        keep = selection.keep & tokens.attention_mask.bool()  # (B, L)
        kept_rows = keep[visual]  # (N_visual,) which DeepStack rows survive, in their original order
        valid = pruned.source_index >= 0  # (B, L')
        kept_visual = visual.gather(1, pruned.source_index.clamp(min=0)) & valid  # (B, L')
        pruned.lm_inputs = dict(visual_pos_masks=kept_visual,
                                deepstack_visual_embeds=[layer[kept_rows] for layer in layers])
        return pruned

    def _check_llm_hook(self, hook) -> None:
        raise UnsupportedOptionError(
            f"{type(hook).__name__} (an in-LLM hook: FastV, DyCoke stage 2) does not run on Qwen3-Omni: "
            "fusion.model.hooked_lm runs the decoder layers itself and would skip the DeepStack visual features "
            "Qwen3-Omni adds after its first layers; use a pre-LLM method (e.g. dycoke with stage2=False)"
        )


# as for Qwen2.5 (fusion.model.thinker): give our class the stock thinker's checkpoint key conversions
register_checkpoint_conversion_mapping(
    CompressedQwen3Thinker.__name__,
    get_checkpoint_conversion_mapping(Qwen3OmniMoeThinkerForConditionalGeneration.__name__) or [],
    overwrite=True,
)
