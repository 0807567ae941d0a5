"""A small word-level tokenizer with Qwen2.5-Omni's special tokens, built offline.

Used by the tiny random thinker and the ToyWorld backbone (no hub access needed). The special tokens
and the chat template follow Qwen's layout (``<|im_start|>role ... <|im_end|>``, media placeholders
wrapped in ``<|vision_bos|>``/``<|audio_bos|>`` markers). Words are split on whitespace and punctuation;
unknown words map to ``[UNK]``. Ids are stable: new words are only ever appended to :data:`WORDS`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK = "<|endoftext|>", "[UNK]"
SPECIAL_TOKENS = (
    PAD,  # 0, also the padding token
    UNK,
    "<|im_start|>",
    "<|im_end|>",  # end of a turn = eos
    "<|AUDIO|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
)

# Append only (ids must not move). Chat roles, letters, digits, punctuation, and the ToyWorld words.
WORDS = (
    "system", "user", "assistant", "A", "B", "C", "D", "E", "F",
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", ".", ",", "?", "!", ":", "(", ")", "'",
    "you", "are", "a", "helpful", "assistant", "answer", "with", "the", "letter", "of", "best", "option",
    "only", "question", "options", "what", "which", "how", "many", "is", "when", "while", "does", "do", "in",
    "at", "on", "to", "and", "or", "first", "last", "second", "third", "fourth", "time", "times", "moment",
    "colour", "color", "shape", "shapes", "square", "circle", "triangle", "cross", "red", "green", "blue",
    "yellow", "white", "purple", "orange", "beep", "beeps", "tone", "tones", "sound", "sounds", "heard",
    "hear", "high", "low", "middle", "pitch", "appear", "appears", "appeared", "shown", "seen", "visible",
    "screen", "left", "right", "top", "bottom", "corner", "there", "none", "no", "one", "two", "three",
    "four", "five", "six", "zero", "count", "number", "video", "audio", "clip", "watch", "listen", "carefully",
    "select", "respond", "same", "different", "before", "after", "during", "moves", "move", "where", "play",
    "plays", "played", "starts", "start", "ends", "end", "loudest", "longest", "silent", "silence",
    "lowest", "highest",
)

CHAT_TEMPLATE = (  # Qwen2.5-Omni's text layout: "<|im_start|>role\n...<|im_end|>\n" (newlines vanish in word tokens)
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'video' -%}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{%- elif part['type'] == 'audio' -%}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{%- elif part['type'] == 'image' -%}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
DEFAULT_SYSTEM = "you are a helpful assistant ."


def vocabulary() -> dict[str, int]:
    """Token -> id (special tokens first, then :data:`WORDS` without duplicates)."""
    vocab: dict[str, int] = {}
    for token in SPECIAL_TOKENS + WORDS:
        vocab.setdefault(token, len(vocab))
    return vocab


def build_word_tokenizer() -> PreTrainedTokenizerFast:
    """The offline word-level tokenizer with Qwen-style special tokens and chat template."""
    core = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    media = {
        "audio_token": "<|AUDIO|>", "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>",
        "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
        "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
    }
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        pad_token=PAD,
        eos_token="<|im_end|>",
        bos_token=None,
        extra_special_tokens=media,
        padding_side="left",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[2:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
