"""Conversation builders: one MCQ sample -> a Qwen-format conversation with one video placeholder.

Two styles:

* ``"toy"``: ``<question> A. <opt> B. <opt> ...`` after the video, no explicit system message (the processor's
  default system prompt is inserted by the chat template). Short, and every word is in the toy vocabulary.
* ``"worldsense"``: exactly what lmms-eval's ``worldsense`` task sends (``worldsense_doc_to_text``): the task's
  system sentence, the "frames of a video and the corresponding audio" instruction, the question and the
  ``"A. ..."`` candidates, one per line; with Qwen2.5-Omni's official system prompt as the system message
  (lmms-eval's ``qwen2_5_omni`` model default).

The assistant's answer (training target) is the option letter alone.
"""

from __future__ import annotations

from fusion.data.mcq import MCQSample
from fusion.data.processor import QWEN_SYSTEM_PROMPT
from fusion.errors import ConfigError

WORLDSENSE_SYS = (
    "Carefully watch this video and pay attention to every detail. "
    "Based on your observations, select the best option that accurately addresses the question."
)
WORLDSENSE_AUDIO_TEMPLATE = (
    "\nThese are the frames of a video and the corresponding audio. "
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
)
STYLES = ("toy", "worldsense")
__all__ = ["QWEN_SYSTEM_PROMPT", "STYLES", "WORLDSENSE_AUDIO_TEMPLATE", "WORLDSENSE_SYS", "answer_text", "conversation",
           "lettered_options", "question_text"]


def _check_style(style: str) -> None:
    if style not in STYLES:
        raise ConfigError(f"prompt style {style!r} is unknown; use one of {list(STYLES)}")


def lettered_options(sample: MCQSample) -> list[str]:
    """``["A. <opt>", "B. <opt>", ...]``."""
    return [f"{letter}. {text}" for letter, text in zip(sample.letters, sample.options)]


def question_text(sample: MCQSample, style: str = "toy") -> str:
    """The user turn's text (after the video).

    ``toy``: ``"<question> A. <opt> B. <opt> ..."``.
    ``worldsense``: ``WORLDSENSE_SYS + WORLDSENSE_AUDIO_TEMPLATE + question + "\\n" + "".join(c + "\\n")``.
    """
    _check_style(style)
    if style == "toy":
        return " ".join([sample.question, *lettered_options(sample)])
    return WORLDSENSE_SYS + WORLDSENSE_AUDIO_TEMPLATE + sample.question + "\n" + "".join(
        c + "\n" for c in lettered_options(sample))


def conversation(sample: MCQSample, style: str = "toy", system: str | None = None,
                 with_video: bool = True) -> list[dict]:
    """The Qwen-format conversation for ``sample`` (pass it to ``processor.apply_chat_template``).

    Args:
        sample: the question.
        style: ``"toy"`` or ``"worldsense"``.
        system: system prompt; default none for ``toy`` (the processor's default is used) and Qwen's official
            one for ``worldsense``.
        with_video: put the video placeholder before the text (False: a text-only control).
    """
    _check_style(style)
    if system is None and style == "worldsense":
        system = QWEN_SYSTEM_PROMPT
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "video", "video": sample.video}] if with_video else []
    content.append({"type": "text", "text": question_text(sample, style)})
    messages.append({"role": "user", "content": content})
    return messages


def answer_text(sample: MCQSample) -> str:
    """The assistant's target: the correct letter."""
    return sample.answer
