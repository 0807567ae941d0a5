"""lmms-eval (>= 0.6) plugin: the entry point of the ``lmms_eval.models`` group (declared in pyproject.toml).

This module does not import lmms-eval until :func:`manifests` is called, and ``import eval`` never imports it.
The model class itself lives in :mod:`eval.lmms_model`, which lmms-eval imports lazily by its class path::

    pip install --no-deps "lmms-eval>=0.6,<0.8"          # its own pins conflict with ours (av, wandb, torch)
    lmms-eval --model av_fusion \\
        --model_args pretrained=Qwen/Qwen2.5-Omni-3B,method=omnizip,rho_audio=0.3,rho_video=0.6 \\
        --tasks worldsense --batch_size 1 --log_samples --output_path logs/

    from lmms_eval.evaluator import simple_evaluate
    from eval.lmms_model import AVFusionOmni
    results = simple_evaluate(model=AVFusionOmni(pretrained="Qwen/Qwen2.5-Omni-3B", method="uniform", retention=0.25),
                              tasks=["worldsense"])

``pretrained=Qwen/Qwen3-Omni-30B-A3B-Instruct`` (or a local Qwen3-Omni checkpoint, or ``tiny-random-qwen3``) loads the
Qwen3-Omni thinker and its processor instead; the alias ``qwen3_omni_avc`` names the same class.
"""

from __future__ import annotations

MODEL_ID = "av_fusion"
ALIASES = ("qwen2_5_omni_avc", "qwen3_omni_avc")
CLASS_PATH = "eval.lmms_model.AVFusionOmni"


def manifests():
    """``[ModelManifest("av_fusion", simple_class_path="eval.lmms_model.AVFusionOmni")]`` for lmms-eval's registry."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=ALIASES)]
