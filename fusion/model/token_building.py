"""`TokenBuildingMixin`: the frozen front of a Qwen-Omni thinker -- encoders, scatter, TMRoPE ids -> `AVTokens`.

``build_tokens`` runs the audio / vision / image encoders, scatters their outputs into the text embeddings at the
placeholder tokens, computes the full (unpruned) TMRoPE position ids and annotates every token (modality, time,
frame, grid cell) as :class:`~fusion.tokens.AVTokens`. It is what every compressor sees, and what the trainer's token
cache stores per sample (``train/token_cache.py``). ``CompressionMixin`` (``fusion.model.compression``) builds on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusion.errors import InputMismatchError, NonFiniteFeaturesError
from fusion.model.annotate import annotate_tokens
from fusion.model.audio_attention import MODES, LastLayerInputRecorder, attention_received
from fusion.model.layout import SpecialIds
from fusion.model.lm_attention import LM_ATTENTION, last_position_attention
from fusion.model.video_chunks import encode_video_in_chunks
from fusion.tokens import AVTokens


def _check_finite(name: str, tensor: Tensor | None) -> None:
    if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteFeaturesError(
            f"{name} contains NaN or Inf (NaN/Inf pixels or mel features propagate there); check the media decoding "
            "and feature extraction for this sample "
            "(a silent or corrupt clip can produce them) and drop or fix the sample"
        )


class TokenBuildingMixin:
    """The encoders and the annotation of the unpruned sequence; a backbone adapts the ``_encode_*`` hooks.

    Expects the HF thinker's ``self.model`` (``get_*_features``, ``get_rope_index``), ``self.config`` and
    ``self.video_chunk_grids`` (set by ``CompressionMixin.__init__``).
    """

    # ------------------------------------------------------------------ backbone hooks
    #: run the encoders' windowed attention packed (``fusion.model.packed_attention``, written for Qwen2.5's towers)
    packed_encoder_attention: bool = True
    #: the processor's frame rate when ``video_second_per_grid`` is not given (Qwen2.5-Omni samples at 2 fps)
    default_video_fps: float = 2.0

    def _encode_video(self, pixel_values_videos: Tensor, video_grid_thw: Tensor) -> Tensor:
        """``(N_v, D)`` merged video embeddings (backbone hook; chunked, see ``fusion.model.video_chunks``)."""
        return encode_video_in_chunks(
            lambda pixels, grid: torch.cat(self.model.get_video_features(pixels, grid).pooler_output),
            pixel_values_videos, video_grid_thw, self.video_chunk_grids)

    def _encode_image(self, pixel_values: Tensor, image_grid_thw: Tensor) -> Tensor:
        """``(N_i, D)`` merged image embeddings (backbone hook)."""
        return torch.cat(self.model.get_image_features(pixel_values, image_grid_thw).pooler_output)

    # ------------------------------------------------------------------ encoders + annotation
    def _audio_features(self, input_features, feature_attention_mask, audio_feature_lengths, requires):
        """Audio embeds ``(N_a, D)`` and the requested attention-received scores ``{mode: (N_a,)}``."""
        modes = [m for m in MODES if f"audio_attention_{m}" in requires]
        if feature_attention_mask is not None:
            feature_lens = feature_attention_mask.sum(-1)
        elif audio_feature_lengths is not None:
            feature_lens = audio_feature_lengths
        else:
            raise InputMismatchError("input_features needs feature_attention_mask (or audio_feature_lengths)")
        if not modes:
            out = self.model.get_audio_features(input_features, feature_attention_mask, audio_feature_lengths)
            return out.last_hidden_state, {}
        with LastLayerInputRecorder(self.model.audio_tower) as rec:
            out = self.model.get_audio_features(input_features, feature_attention_mask, audio_feature_lengths)
        layer = self.model.audio_tower.layers[-1]
        scores = {m: attention_received(layer, rec.hidden_states, rec.cu_seqlens, feature_lens, m) for m in modes}
        return out.last_hidden_state, scores

    def _scatter(self, embeds: Tensor, input_ids: Tensor, token_id: int, features: Tensor, what: str) -> Tensor:
        mask = input_ids == token_id
        n = int(mask.sum())
        if n != features.shape[0]:
            raise InputMismatchError(
                f"input_ids holds {n} {what} placeholder token(s) but the {what} encoder produced {features.shape[0]} "
                f"token(s); build input_ids with the processor from the same media (placeholder counts must match "
                f"the grid / audio lengths)"
            )
        _check_finite(f"the {what} encoder's output", features)
        return embeds.masked_scatter(mask[..., None], features.to(embeds.dtype))

    def build_tokens(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        video_second_per_grid: Tensor | None = None,
        input_features: Tensor | None = None,
        feature_attention_mask: Tensor | None = None,
        audio_feature_lengths: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        use_audio_in_video: bool | None = None,
        position_ids: Tensor | None = None,
        requires: frozenset[str] = frozenset(),
    ) -> AVTokens:
        """Run the encoders, scatter their outputs and annotate the unpruned sequence."""
        if input_ids is None or input_ids.ndim != 2:
            raise InputMismatchError("input_ids of shape (batch, length) are required when media inputs are given")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids = SpecialIds.from_config(self.config)
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, L, D)
        audio_scores: dict[str, Tensor] = {}
        if input_features is not None:
            audio, audio_scores = self._audio_features(input_features, feature_attention_mask, audio_feature_lengths,
                                                       requires)
            embeds = self._scatter(embeds, input_ids, ids.audio, audio, "audio")
        for token_id, what, present in ((ids.audio, "audio", input_features), (ids.video, "video", pixel_values_videos),
                                        (ids.image, "image", pixel_values)):
            if present is None and bool((input_ids == token_id).any()):
                raise InputMismatchError(
                    f"input_ids holds {what} placeholder tokens but no {what} inputs were given; pass the processor's "
                    f"full output (e.g. model(**processor(...)))"
                )
        if pixel_values_videos is not None:
            if video_grid_thw is None:
                raise InputMismatchError("pixel_values_videos needs video_grid_thw (the processor returns both)")
            video = self._encode_video(pixel_values_videos, video_grid_thw)  # (N_v, D)
            embeds = self._scatter(embeds, input_ids, ids.video, video, "video")
        if pixel_values is not None:
            image = self._encode_image(pixel_values, image_grid_thw)  # (N_i, D)
            embeds = self._scatter(embeds, input_ids, ids.image, image, "image")

        if position_ids is None:
            if use_audio_in_video is None:  # infer the interleaved layout: <|vision_bos|><|audio_bos|>
                after_bos = torch.nn.functional.pad(input_ids[:, 1:], (0, 1), value=-1)
                use_audio_in_video = bool(((input_ids == ids.vision_bos) & (after_bos == ids.audio_bos)).any())
            if video_grid_thw is not None and video_second_per_grid is None:  # the processor's default fps
                spg = self.config.vision_config.temporal_patch_size / self.default_video_fps
                video_second_per_grid = torch.full((video_grid_thw.shape[0],), spg)
            audio_seqlens = audio_feature_lengths
            if feature_attention_mask is not None:
                audio_seqlens = feature_attention_mask.sum(-1)
            position_ids, _ = self.model.get_rope_index(
                input_ids, image_grid_thw, video_grid_thw, attention_mask, use_audio_in_video, audio_seqlens,
                video_second_per_grid,
            )
        tokens = annotate_tokens(embeds, input_ids, attention_mask, position_ids, video_grid_thw, self.config)
        if LM_ATTENTION in requires:  # the attention teacher (attention_oracle): one uncompressed LM pass
            tokens.extras[LM_ATTENTION] = last_position_attention(self, tokens)
        for mode, scores in audio_scores.items():
            full = torch.full(input_ids.shape, float("nan"), device=embeds.device)
            full[input_ids == ids.audio] = scores.to(full.device)
            tokens.extras[f"audio_attention_{mode}"] = full
        return tokens
