"""Hugging Face ``transformers`` norm modules: which ones we run, and how.

transformers defines its norms per model (``LlamaRMSNorm``, ``GemmaRMSNorm``, ``T5LayerNorm``,
...). They differ in where they round, which :func:`layernorm_gpu.rms_norm` /
:func:`layernorm_gpu.layer_norm` reproduce with their ``casting`` and ``weight_offset``
arguments. :data:`TABLE` maps each recognised class, by module path and name, to its
:class:`Convention`; every entry was placed by reading the class's ``forward`` in
transformers 5.24 (``tests/test_hf.py`` checks that each listed class's ``forward`` is still
the source text of its convention's representative, so a change upstream fails a test instead
of silently changing numerics). A class that is not listed, a subclass of a listed class (it
may override ``forward``) included, is left alone by :func:`layernorm_gpu.replace_norms`, which
reports it.

The conventions, with x the module input, ``x_hat = x * rsqrt(mean(x**2) + eps)`` for RMSNorm
and ``(x - mean) * rsqrt(var + eps)`` for LayerNorm, both computed in float32:

============  =======================================================  =========  =============
name          ``forward`` in transformers                              casting    y dtype
============  =======================================================  =========  =============
``llama``     ``weight * x_hat.to(x.dtype)``                           ``llama``  promote(x, w)
``fp32``      ``(weight.float() * x_hat).to(x.dtype)``                 ``torch``  x
``gemma``     ``(x_hat * (1 + weight.float())).type_as(x)``            ``torch``  x
``t5``        ``weight * x_hat.to(weight.dtype if 16-bit)``            ``t5``     w if 16-bit
``cohere``    LayerNorm ``(weight.float() * x_hat).to(x.dtype)``       ``torch``  x
============  =======================================================  =========  =============

plus their unweighted forms (``x_hat.type_as(x)``) and torch's own ``nn.LayerNorm`` /
``nn.RMSNorm``. Nothing here imports transformers: the keys are strings, compared with the
class of a module that already exists.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from . import functional as F
from .dtypes import acc_dtype, output_dtypes

__all__ = ["TABLE", "Convention", "convention_of", "norm_forward"]


@dataclass(frozen=True)
class Convention:
    """How one family of norm modules computes ``y``.

    Attributes:
        name: short name shown in reports (``"llama"``, ``"gemma"``, ...).
        is_rms: RMSNorm (no mean) rather than LayerNorm.
        casting: the rounding points, ``"torch"``, ``"llama"`` or ``"t5"`` (see
            :func:`layernorm_gpu.rms_norm`).
        weight_offset: the scale is ``weight + weight_offset`` (1.0 for Gemma's ``1 + w``).
        weight: the module scales by its ``weight`` attribute (a module without one, such as
            Gemma3n's ``with_scale=False``, is unscaled).
        bias: the module adds its ``bias`` attribute.
        eps: the name of the module attribute holding eps, or eps itself when the module
            hard-codes it.
        float_params: the module casts its parameters to float32 (``weight.float()``), so it
            takes parameters of any dtype, where ``torch.nn.functional.layer_norm``'s dtype
            rule would reject some (a bfloat16 weight on float32 x).
        normalized_shape: the module normalises the dims its ``normalized_shape`` attribute
            names (torch's norms); else the last dim, its weight broadcasting against x's
            trailing dims (transformers').
        formula: the module's ``forward``, as transformers writes it (for documentation).
    """

    name: str
    is_rms: bool
    casting: str
    formula: str
    weight_offset: float = 0.0
    weight: bool = True
    bias: bool = False
    eps: str | float = "variance_epsilon"
    float_params: bool = False
    normalized_shape: bool = False


LLAMA = Convention("llama", True, "llama", "weight * x_hat.to(x.dtype)")
FP32 = Convention("fp32", True, "torch", "(weight.float() * x_hat).to(x.dtype)")
GEMMA = Convention(
    "gemma", True, "torch", "(x_hat * (1 + weight.float())).type_as(x)", 1.0, eps="eps"
)
T5 = Convention("t5", True, "t5", "weight * x_hat.to(weight.dtype if 16-bit)")
COHERE = Convention(
    "cohere", False, "torch", "(weight.float() * x_hat).to(x.dtype)", float_params=True
)
UNWEIGHTED = Convention("fp32", True, "torch", "x_hat.type_as(x)", weight=False, eps="eps")

# transformers.models.<model>.modeling_<model>.<class>, keyed here as "<model>.<class>"
_TRANSFORMERS_TABLE: dict[Convention, tuple[str, ...]] = {
    # the bulk: the body of LlamaRMSNorm.forward, eps in `variance_epsilon`
    LLAMA: (
        "aimv2.Aimv2RMSNorm",
        "apertus.ApertusRMSNorm",
        "apertus1p5.Apertus1p5TextRMSNorm",
        "arcee.ArceeRMSNorm",
        "aria.AriaTextRMSNorm",
        "axk1.AXK1RMSNorm",
        "axk2.AXK2RMSNorm",
        "bailing_hybrid.BailingHybridRMSNorm",
        "bamba.BambaRMSNorm",
        "bitnet.BitNetRMSNorm",
        "blt.BltRMSNorm",
        "chameleon.ChameleonRMSNorm",
        "clvp.ClvpRMSNorm",
        "cohere2_moe.Cohere2MoeRMSNorm",
        "cosmos3_edge.Cosmos3EdgeTextRMSNorm",
        "csm.CsmRMSNorm",
        "cwm.CwmRMSNorm",
        "deepseek_ocr2.DeepseekOcr2VisionRMSNorm",
        "deepseek_ocr2.DeepseekOcr2TextRMSNorm",
        "deepseek_v2.DeepseekV2RMSNorm",
        "deepseek_v3.DeepseekV3RMSNorm",
        "deepseek_v32.DeepseekV32RMSNorm",
        "deimv2.Deimv2RMSNorm",
        "dia.DiaRMSNorm",
        "diffllama.DiffLlamaRMSNorm",
        "doge.DogeRMSNorm",
        "dots1.Dots1RMSNorm",
        "dots3_note.Dots3NoteRMSNorm",
        "emu3.Emu3RMSNorm",
        "ernie4_5.Ernie4_5RMSNorm",
        "ernie4_5_moe.Ernie4_5_MoeRMSNorm",
        "ernie4_5_vl_moe.Ernie4_5_VLMoeRMSNorm",
        "eurobert.EuroBertRMSNorm",
        "evolla.EvollaRMSNorm",
        "exaone4.Exaone4RMSNorm",
        "exaone4_5.Exaone4_5_RMSNorm",
        "exaone_moe.ExaoneMoeRMSNorm",
        "falcon_h1.FalconH1RMSNorm",
        "falcon_mamba.FalconMambaRMSNorm",
        "glm.GlmRMSNorm",
        "glm4.Glm4RMSNorm",
        "glm4_moe.Glm4MoeRMSNorm",
        "glm4_moe_lite.Glm4MoeLiteRMSNorm",
        "glm4v.Glm4vRMSNorm",
        "glm4v_moe.Glm4vMoeTextRMSNorm",
        "glm4v_moe.Glm4vMoeRMSNorm",
        "glm5_next.Glm5NextTextRMSNorm",
        "glm5_next.Glm5NextRMSNorm",
        "glm_image.GlmImageRMSNorm",
        "glm_moe_dsa.GlmMoeDsaRMSNorm",
        "glm_ocr.GlmOcrRMSNorm",
        "granite.GraniteRMSNorm",
        "granite4_vision.Granite4VisionTextRMSNorm",
        "granite_docling.GraniteDoclingTextRMSNorm",
        "granite_swa.GraniteSWARMSNorm",
        "granitemoe.GraniteMoeRMSNorm",
        "granitemoe_swa.GraniteMoeSWARMSNorm",
        "granitemoehybrid.GraniteMoeHybridRMSNorm",
        "granitemoeshared.GraniteMoeSharedRMSNorm",
        "higgs_audio_v2.HiggsAudioV2RMSNorm",
        "hunyuan_v1_dense.HunYuanDenseV1RMSNorm",
        "hunyuan_v1_moe.HunYuanMoEV1RMSNorm",
        "hunyuan_vl.HunYuanVLRMSNorm",
        "hy_v3.HYV3RMSNorm",
        "hy_v4.HYV4RMSNorm",
        "hy_v4_vl.HYV4VLRMSNorm",
        "hyperclovax.HyperCLOVAXRMSNorm",
        "idefics2.Idefics2RMSNorm",
        "idefics3.Idefics3RMSNorm",
        "inkling.InklingRMSNorm",
        "internvl.InternVLVisionRMSNorm",
        "jamba.JambaRMSNorm",
        "jetmoe.JetMoeRMSNorm",
        "kimi_linear.KimiLinearRMSNorm",
        "kolibri1.Kolibri1RMSNorm",
        "laguna.LagunaRMSNorm",
        "lfm2.Lfm2RMSNorm",
        "lfm2_moe.Lfm2MoeRMSNorm",
        "lfm3.Lfm3RMSNorm",
        "lfm3_vl.Lfm3VlVisionRMSNorm",
        "lighton_ocr.LightOnOcrRMSNorm",
        "llama.LlamaRMSNorm",
        "longcat_flash.LongcatFlashRMSNorm",
        "mamba.MambaRMSNorm",
        "mamba2.Mamba2RMSNorm",
        "mellum.MellumRMSNorm",
        "mimo_v2_flash.MiMoV2FlashRMSNorm",
        "minicpm3.MiniCPM3RMSNorm",
        "minimax.MiniMaxRMSNorm",
        "minimax_m2.MiniMaxM2RMSNorm",
        "ministral.MinistralRMSNorm",
        "ministral3.Ministral3RMSNorm",
        "mistral.MistralRMSNorm",
        "mistral3.Mistral3RMSNorm",
        "mistral4.Mistral4RMSNorm",
        "mistral_large4.MistralLarge4RMSNorm",
        "mixtral.MixtralRMSNorm",
        "mllama.MllamaTextRMSNorm",
        "molmo2.Molmo2RMSNorm",
        "muse_glimmer_assistant.MuseGlimmerAssistantRMSNorm",
        "neucodec.NeuCodecRMSNorm",
        "olmoe.OlmoeRMSNorm",
        "ovis2.Ovis2RMSNorm",
        "paddleocr_vl.PaddleOCRRMSNorm",
        "pe_audio.PeAudioEncoderRMSNorm",
        "pe_audio_video.PeAudioVideoEncoderRMSNorm",
        "pe_video.PeVideoEncoderRMSNorm",
        "phi3.Phi3RMSNorm",
        "phi4_multimodal.Phi4MultimodalRMSNorm",
        "pixtral.PixtralRMSNorm",
        "qianfan_ocr.QianfanOCRVisionRMSNorm",
        "qwen2.Qwen2RMSNorm",
        "qwen2_5_omni.Qwen2_5OmniRMSNorm",
        "qwen2_5_vl.Qwen2_5_VLRMSNorm",
        "qwen2_moe.Qwen2MoeRMSNorm",
        "qwen2_vl.Qwen2VLRMSNorm",
        "qwen3.Qwen3RMSNorm",
        "qwen3_moe.Qwen3MoeRMSNorm",
        "qwen3_omni_moe.Qwen3OmniMoeThinkerTextRMSNorm",
        "qwen3_omni_moe.Qwen3OmniMoeTextRMSNorm",
        "qwen3_omni_moe.Qwen3OmniMoeRMSNorm",
        "qwen3_omni_moe.Qwen3OmniMoeCode2WavRMSNorm",
        "qwen3_vl.Qwen3VLTextRMSNorm",
        "qwen3_vl_moe.Qwen3VLMoeTextRMSNorm",
        "sapiens2.Sapiens2RMSNorm",
        "seed_oss.SeedOssRMSNorm",
        "smollm3.SmolLM3RMSNorm",
        "solar_open.SolarOpenRMSNorm",
        "timesfm.TimesFmRMSNorm",
        "timesfm2_5.TimesFm2_5RMSNorm",
        "ultrabert.UltrabertRMSNorm",
        "ultravbert.UltraVBertRMSNorm",
        "unlimited_ocr.UnlimitedOcrTextRMSNorm",
        "vibevoice.VibeVoiceRMSNorm",
        "vibevoice_acoustic_tokenizer.VibeVoiceAcousticTokenizerRMSNorm",
        "vibevoice_asr.VibeVoiceAsrRMSNorm",
        "voxtral_realtime.VoxtralRealtimeRMSNorm",
        "xcodec2.Xcodec2RMSNorm",
        "youtu.YoutuRMSNorm",
        "zamba.ZambaRMSNorm",
        "zamba2.Zamba2RMSNorm",
        "zaya.ZayaRMSNorm",
    ),
    # Llama4's `_norm(x.float()).type_as(x) * weight`: the same rounding, eps in `eps`
    replace(LLAMA, eps="eps"): ("llama4.Llama4TextRMSNorm",),
    # OLMo2's `(weight * x_hat).to(x.dtype)` and Helium's `(weight.float() * x_hat)...`
    FP32: (
        "afmoe.AfmoeRMSNorm",
        "beam.BeamRMSNorm",
        "deepseek_v4.DeepseekV4RMSNorm",
        "flex_olmo.FlexOlmoRMSNorm",
        "flint.FlintRMSNorm",
        "gpt_oss.GptOssRMSNorm",
        "inkling2.Inkling2RMSNorm",
        "inkling2_loop.Inkling2LoopRMSNorm",
        "olmo2.Olmo2RMSNorm",
        "olmo3.Olmo3RMSNorm",
        "olmo_hybrid.OlmoHybridRMSNorm",
        "openai_privacy_filter.OpenAIPrivacyFilterRMSNorm",
        "helium.HeliumRMSNorm",
        "lara_mini.LaraMiniRMSNorm",
        "nemotron_h.NemotronHRMSNorm",
        "nemotron_h_omni.NemotronH_Omni_RMSNorm",
    ),
    # Gemma3n's `_norm(x.float()) * weight.float()` (no weight when `with_scale=False`) and
    # Moshi's: eps in `eps`
    replace(FP32, eps="eps"): (
        "diffusion_gemma.DiffusionGemmaRMSNorm",
        "embedding_gemma2.EmbeddingGemma2RMSNorm",
        "gemma3n.Gemma3nRMSNorm",
        "gemma4.Gemma4RMSNorm",
        "gemma4_unified.Gemma4UnifiedRMSNorm",
        "muse_glimmer.MuseGlimmerRMSNorm",
        "muse_spark.MuseSparkRMSNorm",
        "neomme.NeoMMERMSNorm",
        "kyutai_speech_to_text.KyutaiSpeechToTextRMSNorm",
        "moshi.MoshiRMSNorm",
    ),
    # zero-initialised weight, scale 1 + w in float32
    GEMMA: (
        "gemma.GemmaRMSNorm",
        "gemma2.Gemma2RMSNorm",
        "gemma3.Gemma3RMSNorm",
        "minimax_m3_vl.MiniMaxM3VLRMSNorm",
        "muse_glimmer.MuseGlimmerTextCenteredRMSNorm",
        "qwen3_5.Qwen3_5RMSNorm",
        "qwen3_5_moe.Qwen3_5MoeRMSNorm",
        "qwen3_next.Qwen3NextRMSNorm",
        "recurrent_gemma.RecurrentGemmaRMSNorm",
        "step3p7.Step3p7RMSNorm",
        "t5gemma.T5GemmaRMSNorm",
        "t5gemma2.T5Gemma2RMSNorm",
        "vaultgemma.VaultGemmaRMSNorm",
    ),
    # no weight (FalconMamba's weightless norm keeps an unused `weight` buffer)
    UNWEIGHTED: (
        "esmfold2.EsmFold2RMSNorm",
        "hrm_text.HrmTextRMSNorm",
        "llama4.Llama4TextL2Norm",
        "nanochat.NanoChatRMSNorm",
        "inkling2.Inkling2UnweightedRMSNorm",
        "inkling2_loop.Inkling2LoopUnweightedRMSNorm",
        "falcon_mamba.FalconMambaWeightlessRMSNorm",
    ),
    T5: (
        "idefics.IdeficsRMSNorm",
        "kosmos2_5.Kosmos2_5LayerNorm",
        "longt5.LongT5LayerNorm",
        "mt5.MT5LayerNorm",
        "pix2struct.Pix2StructLayerNorm",
        "pop2piano.Pop2PianoLayerNorm",
        "switch_transformers.SwitchTransformersLayerNorm",
        "t5.T5LayerNorm",
        "udop.UdopLayerNorm",
        "umt5.UMT5LayerNorm",
    ),
    # bias-free LayerNorm
    COHERE: (
        "cohere.CohereLayerNorm",
        "cohere2.Cohere2LayerNorm",
        "cohere2_moe.Cohere2MoeLayerNorm",
        "cohere_compass.CohereCompassLayerNorm",
    ),
    # OLMo's parameter-free LayerNorm with eps=1e-5 written into its forward
    Convention(
        "fp32", False, "torch", "layer_norm(x.float()).to(x.dtype)", weight=False, eps=1e-5
    ): ("olmo.OlmoLayerNorm",),
}

TORCH_LAYER_NORM = Convention(
    "torch",
    False,
    "torch",
    "x_hat * weight + bias, rounded once",
    bias=True,
    eps="eps",
    normalized_shape=True,
)
TORCH_RMS_NORM = Convention(
    "torch", True, "torch", "x_hat * weight, rounded once", eps="eps", normalized_shape=True
)

#: class path (``type(m).__module__ + "." + type(m).__qualname__``) -> its convention
TABLE: dict[str, Convention] = {
    "torch.nn.modules.normalization.LayerNorm": TORCH_LAYER_NORM,
    "torch.nn.modules.normalization.RMSNorm": TORCH_RMS_NORM,
}
for _convention, _names in _TRANSFORMERS_TABLE.items():
    for _name in _names:
        _model, _cls = _name.split(".")
        TABLE[f"transformers.models.{_model}.modeling_{_model}.{_cls}"] = _convention


def class_path(cls: type) -> str:
    """``cls``'s key in :data:`TABLE`: its module path and qualified name."""
    return f"{cls.__module__}.{cls.__qualname__}"


def convention_of(cls: type) -> Convention | None:
    """The convention of modules of exactly class ``cls`` (None: not recognised)."""
    return TABLE.get(class_path(cls))


def norm_forward(
    module: nn.Module, x: torch.Tensor, convention: Convention, backend: str | None
) -> torch.Tensor:
    """What ``module``'s own ``forward(x)`` computes, run by our ops: the norm over the last
    dim of ``x`` with the module's ``weight`` / ``bias`` / eps attributes as ``convention``
    names them.

    Args:
        module: a norm module following ``convention``.
        x: ``(*, hidden)``; with a weight of more dims (Cohere's per-head query/key norms,
            ``(heads, head_dim)``), ``(*, heads, head_dim)``, still normalised over the last dim
            (torch's norms: ``(*, *normalized_shape)``).
        backend: as in :func:`layernorm_gpu.rms_norm`.

    Returns:
        y: ``x.shape``, in the dtype ``convention.casting`` gives.
    """
    eps = getattr(module, convention.eps) if isinstance(convention.eps, str) else convention.eps
    weight = getattr(module, "weight", None) if convention.weight else None
    bias = getattr(module, "bias", None) if convention.bias else None
    params = [p for p in (weight, bias) if p is not None]
    shape = tuple(module.normalized_shape) if convention.normalized_shape else x.shape[-1:]
    if any(p.dim() > len(shape) for p in params):
        return _broadcast_affine(x, weight, bias, eps, convention, backend)
    if convention.float_params and any(p.dtype != x.dtype for p in params):
        # the module's weight.float(), in the arithmetic dtype (float64 for float64 x)
        weight, bias = (None if p is None else p.to(acc_dtype(x.dtype)) for p in (weight, bias))
    common = {"weight_offset": convention.weight_offset, "casting": convention.casting}
    if convention.is_rms:
        return F.rms_norm(x, shape, weight, eps, **common, backend=backend)
    return F.layer_norm(x, shape, weight, bias, eps, **common, backend=backend)


def _broadcast_affine(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    convention: Convention,
    backend: str | None,
) -> torch.Tensor:
    """The norm over the last dim with parameters that broadcast against more of x's trailing
    dims (one weight row per head). The kernels take one weight row for all rows, so the norm
    runs unweighted in the accumulation dtype and the affine follows in torch, rounded as the
    convention rounds (:func:`~.dtypes.output_dtypes`: the kernels' own rule)."""
    acc = acc_dtype(x.dtype)
    shape = x.shape[-1:]
    if convention.is_rms:
        x_hat = F.rms_norm(x.to(acc), shape, None, eps, backend=backend)
    else:
        x_hat = F.layer_norm(x.to(acc), shape, None, None, eps, backend=backend)
    y_dtype, x_hat_dtype = output_dtypes(
        x.dtype, x.dtype, None if weight is None else weight.dtype, convention.casting
    )
    if x_hat_dtype is not None:
        x_hat = x_hat.to(x_hat_dtype).to(acc)
    y = x_hat if weight is None else x_hat * (weight.to(acc) + convention.weight_offset)
    if bias is not None:
        y = y + bias.to(acc)
    return y.to(y_dtype)
