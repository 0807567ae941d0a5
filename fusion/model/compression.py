"""`CompressionMixin`: one compression hook between projectors and LLM, for any Qwen-Omni HF thinker class.

Prefill with media goes:  encoders -> scatter into inputs_embeds -> full TMRoPE ids (unpruned) -> AVTokens
-> compressor -> Selection -> apply_keep -> language model -> lm_head.  Everything else (text-only calls,
decoding steps with a cache, calls with ready ``inputs_embeds``) is the stock HF path. A compressor whose
``llm_hook()`` returns a hook (FastV, DyCoke stage 2; ``fusion.model.llm_hooks``) has its prefill / decoding run by
``fusion.model.hooked_lm`` and ``fusion.model.hooked_generate`` instead.

The mixin goes first in the bases (``class X(CompressionMixin, HFThinker)``); a backbone adapts it through the few
``_``-methods marked "backbone hook": the encoders and default fps in ``fusion.model.token_building`` (the
frozen front, ``build_tokens``), the per-token extras and language-model inputs here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from fusion.errors import InputMismatchError, SelectionError
from fusion.model.hooked_generate import hooked_generate
from fusion.model.hooked_lm import hooked_forward
from fusion.model.keep import PrunedBatch, apply_keep
from fusion.model.packed_attention import use_packed_encoder_attention
from fusion.model.padding import check_padding_side, padding_side_of
from fusion.model.soft_mask import soft_attention_mask
from fusion.model.token_building import TokenBuildingMixin
from fusion.model.video_chunks import DEFAULT_CHUNK_GRIDS
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


class CompressionMixin(TokenBuildingMixin):
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
    def _after_keep(self, tokens: AVTokens, selection, pruned: PrunedBatch) -> PrunedBatch:
        """Gather backbone-specific per-token inputs with the kept index (backbone hook; Qwen2.5: nothing)."""
        return pruned

    def _language_model_inputs(self, pruned: PrunedBatch) -> dict:
        """Extra keyword inputs of the language model for a pruned prefill (backbone hook; default ``lm_inputs``)."""
        return pruned.lm_inputs

    def _check_llm_hook(self, hook) -> None:
        """Raise if an in-LLM hook cannot run on this backbone (backbone hook; Qwen2.5: every hook runs)."""

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
