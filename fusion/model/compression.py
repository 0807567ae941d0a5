"""`CompressionMixin`: one compression hook between projectors and LLM, for any Qwen-Omni HF thinker class.

Prefill with media goes:  encoders -> scatter into inputs_embeds -> full TMRoPE ids (unpruned) -> AVTokens
-> compressor -> Selection -> apply_keep -> language model -> lm_head.  Everything else (text-only calls,
decoding steps with a cache, calls with ready ``inputs_embeds``) is the stock HF path. A compressor whose
``llm_hook()`` returns a hook (FastV, DyCoke stage 2; ``fusion.model.llm_hooks``) has its prefill / decoding run by
``fusion.model.hooked_lm`` and ``fusion.model.hooked_generate`` instead.

The mixin goes first in the bases (``class X(CompressionMixin, HFThinker)``); a backbone adapts it through the few
``_``-methods marked "backbone hook" (encoders, default fps, extra language-model inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from fusion.errors import InputMismatchError, NonFiniteFeaturesError, SelectionError
from fusion.model.annotate import annotate_tokens
from fusion.model.audio_attention import MODES, LastLayerInputRecorder, attention_received
from fusion.model.hooked_generate import hooked_generate
from fusion.model.hooked_lm import hooked_forward
from fusion.model.keep import PrunedBatch, apply_keep
from fusion.model.layout import SpecialIds
from fusion.model.lm_attention import LM_ATTENTION, last_position_attention
from fusion.model.packed_attention import use_packed_encoder_attention
from fusion.model.padding import check_padding_side, padding_side_of
from fusion.model.soft_mask import soft_attention_mask
from fusion.model.video_chunks import DEFAULT_CHUNK_GRIDS, encode_video_in_chunks
from fusion.tokens import AVTokens, KeepStats


@dataclass
class CompressedOutput(CausalLMOutputWithPast):
    """``CausalLMOutputWithPast`` plus where the logits' positions come from.

    ``logits`` cover the pruned sequence, padded on the side the input was (``forward``'s ``padding_side``).
    ``attention_mask`` ``(B, L')`` marks its real tokens, ``source_index`` ``(B, L')`` gives each one's index in
    the unpruned input (-1 on padding) and ``labels`` ``(B, L')`` are the given labels at those positions (-100 on
    padding; None without labels); all three are None on the stock path (no media, or decoding).
    """

    attention_mask: Tensor | None = None
    source_index: Tensor | None = None
    labels: Tensor | None = None


def _check_finite(name: str, tensor: Tensor | None) -> None:
    if tensor is not None and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise NonFiniteFeaturesError(
            f"{name} contains NaN or Inf (NaN/Inf pixels or mel features propagate there); check the media decoding "
            "and feature extraction for this sample "
            "(a silent or corrupt clip can produce them) and drop or fix the sample"
        )


class CompressionMixin:
    """An HF thinker with a compressor. ``compressor`` is any ``AVTokens -> Selection`` callable; an
    ``nn.Module`` compressor (the learned block) is registered as the submodule ``av_fusion``.

    ``video_chunk_grids``: the vision tower encodes at most this many temporal grids per call (exact, see
    ``fusion.model.video_chunks``), so its peak memory follows the chunk instead of the clip; ``None`` = one call.
    Encoders on ``sdpa`` run their windowed attention as one call per layer (``fusion.model.packed_attention``).
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        if self.packed_encoder_attention:
            use_packed_encoder_attention(self)
        self._compressor = None
        self.video_chunk_grids: int | None = DEFAULT_CHUNK_GRIDS
        self.last_stats: KeepStats | None = None
        self.last_tokens: AVTokens | None = None

    # ------------------------------------------------------------------ compressor
    @property
    def compressor(self):
        if "av_fusion" in self._modules:
            return self._modules["av_fusion"]
        if self._compressor is None:
            from fusion.pruners.keep_all import KeepAll

            self._compressor = KeepAll()
        return self._compressor

    def set_compressor(self, compressor) -> None:
        """Install a compressor (an ``nn.Module`` becomes the submodule ``av_fusion``, saved with adapters)."""
        if "av_fusion" in self._modules:
            del self._modules["av_fusion"]
        if isinstance(compressor, torch.nn.Module):
            self.add_module("av_fusion", compressor)
            self._compressor = None
        else:
            self._compressor = compressor

    def llm_hook(self):
        """A fresh in-LLM hook from the compressor (``fusion.model.llm_hooks``), or None: the stock path runs."""
        make = getattr(self.compressor, "llm_hook", None)
        return make() if make is not None else None

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

    def _after_keep(self, tokens: AVTokens, selection, pruned: PrunedBatch) -> PrunedBatch:
        """Gather backbone-specific per-token inputs with the kept index (backbone hook; Qwen2.5: nothing)."""
        return pruned

    def _language_model_inputs(self, pruned: PrunedBatch) -> dict:
        """Extra keyword inputs of the language model for a pruned prefill (backbone hook; default ``lm_inputs``)."""
        return pruned.lm_inputs

    def _check_llm_hook(self, hook) -> None:
        """Raise if an in-LLM hook cannot run on this backbone (backbone hook; Qwen2.5: every hook runs)."""

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

    def compress(self, input_ids: Tensor, labels: Tensor | None = None, padding_side: str | None = None,
                 av_tokens: AVTokens | None = None, **media) -> PrunedBatch:
        """Encode, select and slice once. Records ``last_stats`` and the rope deltas for cache decoding.

        The pruned batch is padded on ``padding_side``; None = the side ``media["attention_mask"]`` is padded on
        (:func:`~fusion.model.padding.padding_side_of`; no padding counts as right). ``av_tokens``: what
        :meth:`build_tokens` returned for these same inputs (the trainer's split search builds them once per
        micro-batch: the encoders are frozen), else they are built here.
        """
        padding_side = self._padding_side(padding_side, media.get("attention_mask"))
        compressor = self.compressor
        if av_tokens is None:
            tokens = self.build_tokens(input_ids, requires=getattr(compressor, "requires", frozenset()), **media)
        elif av_tokens.input_ids.shape != input_ids.shape or not torch.equal(av_tokens.input_ids, input_ids):
            raise InputMismatchError("av_tokens were built from other input_ids: pass the build_tokens output of "
                                     "this very batch, or leave av_tokens out")
        else:
            tokens = av_tokens
        selection = compressor(tokens)
        pad = self.config.get_text_config().pad_token_id or 0
        pruned = apply_keep(tokens, selection, labels=labels, padding_side=padding_side, pad_token_id=pad)
        pruned = self._after_keep(tokens, selection, pruned)
        counted = selection.keep  # a soft selection keeps every token: count those with y > 1/2 (log y > -log 2)
        if selection.key_bias is not None:
            counted = counted & (selection.key_bias > -0.6931471805599453)
        self.last_stats = KeepStats.from_keep(tokens, counted)
        self.last_tokens = tokens
        self.model.rope_deltas = pruned.rope_deltas
        return pruned

    @staticmethod
    def _padding_side(padding_side: str | None, attention_mask: Tensor | None) -> str:
        return padding_side_of(attention_mask) if padding_side is None else check_padding_side(padding_side)

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        feature_attention_mask: torch.Tensor | None = None,
        audio_feature_lengths: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        use_audio_in_video: bool | None = None,
        video_second_per_grid: torch.LongTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        logits_to_keep: int | Tensor = 0,
        padding_side: str | None = None,
        visual_pos_masks: Tensor | None = None,
        deepstack_visual_embeds: list[Tensor] | None = None,
        av_tokens: AVTokens | None = None,
        **kwargs,
    ) -> CompressedOutput:
        """Same arguments as the HF thinker (plus ``logits_to_keep``); media prefill goes through the hook.

        The outputs of a media prefill (logits, ``attention_mask``, ``source_index``, ``labels``) are padded on
        ``padding_side``: ``"left"``, ``"right"``, or None (default) = the side ``attention_mask`` is padded on, so
        ``logits[:, -1]`` of a left-padded batch is every row's last token, as with the stock thinker; at retention
        1.0 the logits equal the stock thinker's position for position. ``visual_pos_masks`` /
        ``deepstack_visual_embeds`` are what ``generate`` passes back for a pruned Qwen3-Omni prefix (not for callers).
        ``av_tokens``: this batch's :meth:`build_tokens` output when the caller already has it (see :meth:`compress`).
        """
        has_media = any(x is not None for x in (input_features, pixel_values, pixel_values_videos))
        prefill = past_key_values is None or past_key_values.get_seq_length() == 0
        # a pruned prefix's DeepStack inputs (Qwen3-Omni), passed back by ``generate``: used on its prefill step only
        lm_extra = {} if deepstack_visual_embeds is None else dict(
            visual_pos_masks=visual_pos_masks, deepstack_visual_embeds=deepstack_visual_embeds)
        kept_mask = source_index = kept_labels = None
        if has_media and prefill and inputs_embeds is None and mm_encoder_outputs is None:
            padding_side = self._padding_side(padding_side, attention_mask)
            pruned = self.compress(
                input_ids, labels=labels, padding_side=padding_side, attention_mask=attention_mask,
                pixel_values_videos=pixel_values_videos, video_grid_thw=video_grid_thw,
                video_second_per_grid=video_second_per_grid, input_features=input_features,
                feature_attention_mask=feature_attention_mask, audio_feature_lengths=audio_feature_lengths,
                pixel_values=pixel_values, image_grid_thw=image_grid_thw, use_audio_in_video=use_audio_in_video,
                position_ids=position_ids, av_tokens=av_tokens,
            )
            hook = self.llm_hook()
            if hook is not None:
                self._check_llm_hook(hook)
            mask = pruned.attention_mask
            if pruned.key_bias is not None:  # a relaxed selection (training): every token stays, log y on its key
                if hook is not None or (past_key_values is not None and use_cache):
                    raise SelectionError("a soft selection (key_bias) is for training forwards only: no in-LLM "
                                         "hook, no cache; evaluate the block in eval() mode (hard top-k)")
                mask = soft_attention_mask(pruned.attention_mask, pruned.key_bias, pruned.inputs_embeds.dtype)
            if hook is not None and hook.prefill_layer is not None:  # FastV-like: tokens drop inside the LLM
                hidden, pruned = hooked_forward(self, self.last_tokens, pruned, hook, padding_side, **kwargs)
                outputs = BaseModelOutputWithPast(last_hidden_state=hidden)
            else:
                outputs = self.model.language_model(
                    inputs_embeds=pruned.inputs_embeds, attention_mask=mask,
                    position_ids=pruned.position_ids, past_key_values=past_key_values, use_cache=use_cache,
                    return_dict=True, **self._language_model_inputs(pruned), **kwargs,
                )
            labels, kept_mask, source_index = pruned.labels, pruned.attention_mask, pruned.source_index
            kept_labels = labels  # None without labels
        elif lm_extra and prefill and inputs_embeds is not None:  # generate's prefill of a pruned prefix
            outputs = self.model.language_model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=past_key_values, use_cache=use_cache, **lm_extra, **{**kwargs, "return_dict": True},
            )
        else:
            outputs = self.model(
                input_ids=input_ids, input_features=input_features, pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
                attention_mask=attention_mask, feature_attention_mask=feature_attention_mask,
                audio_feature_lengths=audio_feature_lengths, position_ids=position_ids,
                past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                use_audio_in_video=use_audio_in_video, video_second_per_grid=video_second_per_grid,
                mm_encoder_outputs=mm_encoder_outputs, **kwargs,
            )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels,
                                      vocab_size=self.config.get_text_config().vocab_size, **kwargs)
        return CompressedOutput(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions, attention_mask=kept_mask, source_index=source_index,
            labels=kept_labels,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        input_features: Tensor | None = None,
        feature_attention_mask: Tensor | None = None,
        audio_feature_lengths: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        pixel_values_videos: Tensor | None = None,
        video_grid_thw: Tensor | None = None,
        video_second_per_grid: Tensor | None = None,
        use_audio_in_video: bool | None = None,
        **generate_kwargs,
    ):
        """Compress once (left padding), then decode from the pruned prefix.

        Positions of new tokens continue at ``max(kept TMRoPE id) + 1`` (the prompt ends with text, whose id is
        the maximum). Like the stock thinker, the returned sequences are the *original* ``input_ids`` followed by
        the generated tokens, so ``out[:, input_ids.shape[1]:]`` are the new tokens.
        """
        if all(x is None for x in (input_features, pixel_values, pixel_values_videos)):
            return super().generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        pruned = self.compress(
            input_ids, padding_side="left", attention_mask=attention_mask, pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw, video_second_per_grid=video_second_per_grid, input_features=input_features,
            feature_attention_mask=feature_attention_mask, audio_feature_lengths=audio_feature_lengths,
            pixel_values=pixel_values, image_grid_thw=image_grid_thw, use_audio_in_video=use_audio_in_video,
        )
        hook = self.llm_hook()
        if hook is not None:  # in-LLM methods decode with their own greedy loop (per-layer cache lengths)
            self._check_llm_hook(hook)
            return hooked_generate(self, pruned, hook, input_ids, **generate_kwargs)
        out = super().generate(inputs_embeds=pruned.inputs_embeds, attention_mask=pruned.attention_mask,
                               position_ids=pruned.position_ids, **self._language_model_inputs(pruned),
                               **generate_kwargs)
        if isinstance(out, Tensor):
            return torch.cat([input_ids, out.to(input_ids.device)], dim=1)
        out.sequences = torch.cat([input_ids, out.sequences.to(input_ids.device)], dim=1)
        return out
