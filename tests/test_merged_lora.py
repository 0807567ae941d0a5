"""LoRA folded into the base weight for the split search (train/merged_lora.py): the same language-model outputs up
to float rounding, the base weights untouched, the layers restored on exit, and no folding where it would change
the function (dropout while training)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from fusion import load_model
from train.config import LLM_LORA_REGEX
from train.merged_lora import merged_lora


def _lora_thinker(dropout: float = 0.0):
    thinker, _ = load_model("tiny-random")
    model = get_peft_model(thinker, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                               target_modules=LLM_LORA_REGEX))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, LoraLinear):  # B != 0: LoRA really changes the outputs
                layer.lora_B["default"].weight.copy_(torch.randn(layer.lora_B["default"].weight.shape,
                                                                 generator=generator) * 0.1)
    return model.get_base_model()


def _outputs(thinker, embeds, mask):
    with torch.no_grad():
        return thinker.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state


def test_folded_lora_gives_the_same_outputs_and_leaves_the_weights_alone():
    thinker = _lora_thinker().eval()
    language_model = thinker.model.language_model
    width = thinker.config.get_text_config().hidden_size
    embeds = torch.randn(3, 17, width, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, 12:] = 0
    layers = [m for m in language_model.modules() if isinstance(m, LoraLinear)]
    weights = {id(m): m.base_layer.weight.clone() for m in layers}
    stock = _outputs(thinker, embeds, mask)
    with torch.no_grad():
        plain = language_model.layers[0].self_attn.q_proj.base_layer(embeds)
    with merged_lora(language_model) as folded:
        assert folded == len(layers) > 0
        inside = _outputs(thinker, embeds, mask)
    assert not torch.allclose(plain, language_model.layers[0].self_attn.q_proj(embeds))  # LoRA is not a no-op here
    assert torch.allclose(inside, stock, atol=1e-5, rtol=1e-4)
    assert all("forward" not in m.__dict__ for m in layers)  # restored: the LoRA path runs again
    assert all(torch.equal(m.base_layer.weight, weights[id(m)]) for m in layers)
    assert torch.equal(_outputs(thinker, embeds, mask), stock)


def test_lora_dropout_while_training_is_not_folded():
    thinker = _lora_thinker(dropout=0.1).train()
    with merged_lora(thinker.model.language_model) as folded:
        assert folded == 0
    thinker.eval()  # dropout is off in eval: folding is exact again
    with merged_lora(thinker.model.language_model) as folded:
        assert folded > 0


def test_folded_lora_with_grad_gives_lora_the_same_gradients():
    thinker = _lora_thinker().train()
    language_model = thinker.model.language_model
    width = thinker.config.get_text_config().hidden_size
    embeds = torch.randn(2, 11, width, generator=torch.Generator().manual_seed(2))
    lora = {n: p for n, p in language_model.named_parameters() if "lora_" in n}
    for p in lora.values():
        p.requires_grad_(True)

    def gradients(fold: bool) -> dict:
        language_model.zero_grad()
        if fold:
            with merged_lora(language_model, grad=True) as folded:
                assert folded > 0
                out = language_model(inputs_embeds=embeds).last_hidden_state
        else:
            out = language_model(inputs_embeds=embeds).last_hidden_state
        (out ** 2).mean().backward()  # after the exit: the graph holds W'
        return {n: p.grad.clone() for n, p in lora.items()}

    plain, folded = gradients(False), gradients(True)
    assert any(g.abs().max() > 0 for g in plain.values())
    assert all(torch.allclose(folded[n], plain[n], atol=1e-6, rtol=1e-4) for n in plain)
