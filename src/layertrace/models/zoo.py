"""The verified families: tiny config-built models of every kind ``adapt()`` serves (and refuses).

Each :class:`ZooModel` builds a 2-3 block, width-32 model from its config in code (nothing is
downloaded). The test suite (tests/models/test_zoo.py) checks every one of them against the model
itself; ``layertrace models`` runs :func:`~layertrace.models.hf_auto.self_check` on each and lists
what this install verifies. To add a family, add one entry here (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

VOCAB = 99
_TEXT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             max_position_embeddings=64)
_LLAMA = dict(_TEXT, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
              tie_word_embeddings=False)
_VISION = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
               num_attention_heads=4, intermediate_size=64, num_labels=5)
_SLIDING3 = ["sliding_attention", "full_attention", "sliding_attention"]


@dataclass
class ZooModel:
    """One tiny model: ``model_class(config_class(**config))``.

    Attributes:
        name: short id (test ids, ``layertrace models``).
        model_class / config_class: names in ``transformers``.
        config: config keyword arguments (tiny: hidden 32, 2-3 blocks, vocabulary 99).
        group: ``encoder_classifier``, ``decoder_classifier``, ``causal_lm``, ``vision_classifier``,
            ``encoder`` (headless) or ``refused``.
        nested: build the config as ``config_class(**{nested: config})`` sub-config style (CLIP / SigLIP).
        padding_invariant: padding a sample leaves its result unchanged (False for SigLIP's text
            tower, which reads the last position whatever the padding).
    """

    name: str
    model_class: str
    config_class: str
    config: dict[str, Any]
    group: str
    nested: str | None = None
    padding_invariant: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> torch.nn.Module:
        """The model in eval mode, seeded (float32, CPU)."""
        import transformers

        torch.manual_seed(seed)
        config_cls = getattr(transformers, self.config_class)
        cfg = config_cls(**({self.nested: self.config} if self.nested else self.config), **self.extra)
        model = getattr(transformers, self.model_class)(cfg)
        if self.group in ("vision_classifier", "encoder") and "pixel" in _input_name(model):
            with torch.no_grad():  # zero-initialised tokens / positions (DeiT, DINOv2) make layer 0 trivial
                for pname, p in model.named_parameters():
                    if ("token" in pname or "position_embeddings" in pname) and p.dim() > 1:
                        p.normal_(0.0, 0.5)
        return model.eval()


def _input_name(model: torch.nn.Module) -> str:
    import inspect

    return "pixel_values" if "pixel_values" in inspect.signature(model.forward).parameters else "input_ids"


def _lm(name: str, model_class: str, config_class: str, **cfg: Any) -> ZooModel:
    return ZooModel(name, model_class, config_class, cfg, "causal_lm")


ZOO: list[ZooModel] = [
    # ---- encoder classifiers
    ZooModel("bert", "BertForSequenceClassification", "BertConfig", dict(_TEXT, num_labels=3), "encoder_classifier"),
    ZooModel("roberta", "RobertaForSequenceClassification", "RobertaConfig",
             dict(_TEXT, max_position_embeddings=66, pad_token_id=1, num_labels=3), "encoder_classifier"),
    ZooModel("xlm-roberta", "XLMRobertaForSequenceClassification", "XLMRobertaConfig",
             dict(_TEXT, max_position_embeddings=66, pad_token_id=1, num_labels=3), "encoder_classifier"),
    ZooModel("distilbert", "DistilBertForSequenceClassification", "DistilBertConfig",
             dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64,
                  num_labels=3), "encoder_classifier"),
    ZooModel("albert", "AlbertForSequenceClassification", "AlbertConfig",
             dict(_TEXT, embedding_size=16, num_hidden_layers=3, num_hidden_groups=1, num_labels=3),
             "encoder_classifier"),
    ZooModel("electra", "ElectraForSequenceClassification", "ElectraConfig",
             dict(_TEXT, embedding_size=16, num_labels=3), "encoder_classifier"),
    ZooModel("deberta", "DebertaForSequenceClassification", "DebertaConfig",
             dict(_TEXT, relative_attention=True, max_relative_positions=16, pos_att_type=["c2p", "p2c"],
                  num_labels=3), "encoder_classifier"),
    ZooModel("deberta-v2", "DebertaV2ForSequenceClassification", "DebertaV2Config",
             dict(_TEXT, relative_attention=True, position_buckets=8, pos_att_type=["c2p", "p2c"], num_labels=3),
             "encoder_classifier"),
    ZooModel("modernbert", "ModernBertForSequenceClassification", "ModernBertConfig",
             dict(_TEXT, num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=4, pad_token_id=0,
                  num_labels=3, classifier_pooling="mean"), "encoder_classifier"),
    ZooModel("modernbert-cls", "ModernBertForSequenceClassification", "ModernBertConfig",
             dict(_TEXT, num_hidden_layers=3, global_attn_every_n_layers=2, local_attention=4, pad_token_id=0,
                  num_labels=3, classifier_pooling="cls"), "encoder_classifier"),
    ZooModel("mpnet", "MPNetForSequenceClassification", "MPNetConfig",
             dict(_TEXT, max_position_embeddings=66, pad_token_id=1, num_labels=3), "encoder_classifier"),
    ZooModel("mobilebert", "MobileBertForSequenceClassification", "MobileBertConfig",
             dict(_TEXT, embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=1,
                  num_labels=3), "encoder_classifier"),
    # ---- decoder classifiers (last non-pad token, head = score)
    ZooModel("llama-cls", "LlamaForSequenceClassification", "LlamaConfig", dict(_LLAMA, num_labels=3),
             "decoder_classifier"),
    ZooModel("qwen2-cls", "Qwen2ForSequenceClassification", "Qwen2Config", dict(_LLAMA, num_labels=3),
             "decoder_classifier"),
    ZooModel("gpt2-cls", "GPT2ForSequenceClassification", "GPT2Config",
             dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0, num_labels=3),
             "decoder_classifier"),
    # ---- causal LMs
    _lm("gpt2", "GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0),
    _lm("gpt-neox", "GPTNeoXForCausalLM", "GPTNeoXConfig", **_TEXT, rotary_pct=0.5, pad_token_id=0,
        tie_word_embeddings=False),
    _lm("gptj", "GPTJForCausalLM", "GPTJConfig", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
        n_positions=64, pad_token_id=0),
    _lm("opt", "OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
        num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=16, pad_token_id=0),
    _lm("bloom", "BloomForCausalLM", "BloomConfig", vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4,
        pad_token_id=0),
    _lm("falcon", "FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, pad_token_id=0),
    _lm("falcon-alibi", "FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, alibi=True, pad_token_id=0),
    _lm("llama", "LlamaForCausalLM", "LlamaConfig", **_LLAMA),
    _lm("mistral", "MistralForCausalLM", "MistralConfig", **dict(_LLAMA, num_hidden_layers=3), sliding_window=3),
    _lm("qwen2", "Qwen2ForCausalLM", "Qwen2Config", **dict(_LLAMA, num_hidden_layers=3), use_sliding_window=True,
        sliding_window=3, layer_types=_SLIDING3),
    _lm("qwen3", "Qwen3ForCausalLM", "Qwen3Config", **_LLAMA, head_dim=8),
    _lm("gemma", "GemmaForCausalLM", "GemmaConfig", **dict(_LLAMA, tie_word_embeddings=True), head_dim=8),
    _lm("gemma2", "Gemma2ForCausalLM", "Gemma2Config", **dict(_LLAMA, num_hidden_layers=3, tie_word_embeddings=True),
        head_dim=8, sliding_window=3, layer_types=_SLIDING3, final_logit_softcapping=5.0, attn_logit_softcapping=4.0,
        query_pre_attn_scalar=8),
    _lm("gemma3", "Gemma3ForCausalLM", "Gemma3TextConfig",
        **dict(_LLAMA, num_hidden_layers=3, tie_word_embeddings=True), head_dim=8, sliding_window=3,
        layer_types=_SLIDING3, final_logit_softcapping=5.0, query_pre_attn_scalar=8),
    _lm("phi", "PhiForCausalLM", "PhiConfig", **_LLAMA, partial_rotary_factor=0.5),
    _lm("phi3", "Phi3ForCausalLM", "Phi3Config", **_LLAMA),
    _lm("olmo2", "Olmo2ForCausalLM", "Olmo2Config", **_LLAMA),
    _lm("granite", "GraniteForCausalLM", "GraniteConfig", **_LLAMA, embedding_multiplier=2.0, logits_scaling=4.0,
        residual_multiplier=0.5, attention_multiplier=0.3),
    _lm("cohere", "CohereForCausalLM", "CohereConfig", **dict(_LLAMA, tie_word_embeddings=True), logit_scale=0.5),
    _lm("cohere2", "Cohere2ForCausalLM", "Cohere2Config", **dict(_LLAMA, num_hidden_layers=3, tie_word_embeddings=True),
        logit_scale=0.5, sliding_window=3, layer_types=_SLIDING3),
    _lm("stablelm", "StableLmForCausalLM", "StableLmConfig", **_LLAMA, partial_rotary_factor=0.5),
    _lm("starcoder2", "Starcoder2ForCausalLM", "Starcoder2Config", **_LLAMA, sliding_window=None),
    _lm("smollm3", "SmolLM3ForCausalLM", "SmolLM3Config", **dict(_LLAMA, num_hidden_layers=3), no_rope_layer_interval=3),
    _lm("mixtral", "MixtralForCausalLM", "MixtralConfig", **_LLAMA, num_local_experts=4, num_experts_per_tok=2),
    _lm("qwen2-moe", "Qwen2MoeForCausalLM", "Qwen2MoeConfig", **_LLAMA, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=32, shared_expert_intermediate_size=32, decoder_sparse_step=1),
    # ---- vision classifiers
    ZooModel("vit", "ViTForImageClassification", "ViTConfig", dict(_VISION), "vision_classifier"),
    ZooModel("deit", "DeiTForImageClassification", "DeiTConfig", dict(_VISION), "vision_classifier"),
    ZooModel("deit-teacher", "DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(_VISION),
             "vision_classifier"),
    ZooModel("beit", "BeitForImageClassification", "BeitConfig", dict(_VISION, use_mean_pooling=True),
             "vision_classifier"),
    ZooModel("beit-cls", "BeitForImageClassification", "BeitConfig",
             dict(_VISION, use_mean_pooling=False, use_relative_position_bias=True), "vision_classifier"),
    ZooModel("data2vec-vision", "Data2VecVisionForImageClassification", "Data2VecVisionConfig",
             dict(_VISION, use_mean_pooling=True), "vision_classifier"),
    ZooModel("dinov2", "Dinov2ForImageClassification", "Dinov2Config",
             {k: v for k, v in _VISION.items() if k != "intermediate_size"}, "vision_classifier"),
    ZooModel("dinov2-registers", "Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
             dict({k: v for k, v in _VISION.items() if k != "intermediate_size"}, num_register_tokens=2),
             "vision_classifier"),
    ZooModel("vit-msn", "ViTMSNForImageClassification", "ViTMSNConfig", dict(_VISION), "vision_classifier"),
    ZooModel("ijepa", "IJepaForImageClassification", "IJepaConfig", dict(_VISION), "vision_classifier"),
    ZooModel("clip-image-cls", "CLIPForImageClassification", "CLIPConfig",
             {k: v for k, v in _VISION.items() if k != "num_labels"}, "vision_classifier", nested="vision_config",
             extra=dict(num_labels=5)),
    ZooModel("siglip-image-cls", "SiglipForImageClassification", "SiglipConfig",
             {k: v for k, v in _VISION.items() if k != "num_labels"}, "vision_classifier", nested="vision_config",
             extra=dict(num_labels=5)),
    # ---- headless encoders (similarity analysis of every layer; readout = the model's own pooled output)
    ZooModel("bert-model", "BertModel", "BertConfig", dict(_TEXT), "encoder"),
    ZooModel("vit-model", "ViTModel", "ViTConfig", {k: v for k, v in _VISION.items() if k != "num_labels"}, "encoder"),
    ZooModel("clip-vision-proj", "CLIPVisionModelWithProjection", "CLIPVisionConfig",
             dict({k: v for k, v in _VISION.items() if k != "num_labels"}, projection_dim=24), "encoder"),
    ZooModel("clip-text-proj", "CLIPTextModelWithProjection", "CLIPTextConfig",
             dict(_TEXT, projection_dim=24, eos_token_id=2, pad_token_id=0), "encoder"),
    ZooModel("siglip-vision", "SiglipVisionModel", "SiglipVisionConfig",
             {k: v for k, v in _VISION.items() if k != "num_labels"}, "encoder"),
    ZooModel("siglip-text", "SiglipTextModel", "SiglipTextConfig", dict(_TEXT, projection_size=24, pad_token_id=0),
             "encoder", padding_invariant=False),
    # ---- refused in one line (layers of different widths / not one stack of residual blocks)
    ZooModel("swin", "SwinForImageClassification", "SwinConfig",
             dict(image_size=16, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2,
                  num_labels=5), "refused"),
    ZooModel("pvt", "PvtForImageClassification", "PvtConfig",
             dict(image_size=16, num_encoder_blocks=2, depths=[1, 1], sequence_reduction_ratios=[2, 1],
                  hidden_sizes=[8, 16], patch_sizes=[4, 2], strides=[4, 2], num_attention_heads=[1, 1],
                  mlp_ratios=[2, 2], num_labels=5), "refused"),
    ZooModel("hiera", "HieraForImageClassification", "HieraConfig",
             dict(image_size=[32, 32], patch_size=[3, 3], patch_stride=[2, 2], patch_padding=[1, 1], embed_dim=8,
                  depths=[1, 1], num_heads=[1, 1], query_stride=[2, 2], masked_unit_size=[4, 4],
                  num_query_pool=1, num_labels=5), "refused"),
    ZooModel("gemma3n", "Gemma3nForCausalLM", "Gemma3nTextConfig",
             dict(vocab_size=VOCAB, vocab_size_per_layer_input=VOCAB, hidden_size=32, hidden_size_per_layer_input=8,
                  intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  layer_types=["sliding_attention", "full_attention"], sliding_window=3, num_kv_shared_layers=0,
                  laurel_rank=4, activation_sparsity_pattern=[0.0, 0.0], altup_num_inputs=2), "refused"),
    ZooModel("funnel", "FunnelForSequenceClassification", "FunnelConfig",
             dict(vocab_size=VOCAB, block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=64, num_labels=3),
             "refused"),
]


def zoo_names(group: str | None = None) -> list[str]:
    """Names of the zoo models (of one group)."""
    return [z.name for z in ZOO if group is None or z.group == group]


def get(name: str) -> ZooModel:
    """The zoo entry called ``name``."""
    for z in ZOO:
        if z.name == name:
            return z
    raise KeyError(name)


def verify_zoo(names: list[str] | None = None) -> list[dict[str, Any]]:
    """Build every zoo model and adapt it (running the self-check): what this install serves.

    Returns:
        one dict per model: ``name``, ``model_class``, ``group``, ``status`` (``verified``,
        ``refused`` or ``FAILED``), ``detail`` (self-check time, or the one-line reason), ``n_layers``.
    """
    import time
    import warnings

    from ..errors import LayertraceError
    from .registry import adapt

    rows = []
    for z in ZOO:
        if names and z.name not in names:
            continue
        row: dict[str, Any] = {"name": z.name, "model_class": z.model_class, "group": z.group, "n_layers": None}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = z.build()
            start = time.perf_counter()
            adapter = adapt(model)
            row.update(status="verified", n_layers=adapter.n_layers,
                       detail=f"adapt + self-check {1000 * (time.perf_counter() - start):.0f} ms")
        except LayertraceError as exc:
            row.update(status="refused" if z.group == "refused" else "FAILED", detail=str(exc))
        except Exception as exc:  # building the model failed (a transformers version without the class)
            row.update(status="FAILED", detail=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        rows.append(row)
    return rows


def registered_families() -> list[str]:
    """Model class names served: the zoo's verified Hugging Face families and registered factories."""
    from .registry import factory_families

    return sorted(set(factory_families()) | {z.model_class for z in ZOO if z.group != "refused"})
