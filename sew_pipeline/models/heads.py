"""Task heads on top of SEWModel: CTC (character transcription) and sequence classification (keywords, labels)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sew_pipeline.models.checkpoint import PretrainedMixin
from sew_pipeline.models.config import SEWConfig
from sew_pipeline.models.sew import SEWModel, init_weights


@dataclass
class HeadOutput:
    logits: torch.Tensor                            # CTC: [B, T, vocab]; classification: [B, num_labels]
    loss: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class _SEWHead(PretrainedMixin, nn.Module):
    def __init__(self, config: SEWConfig):
        super().__init__()
        self.config = config
        self.sew = SEWModel(config)

    def _init_head(self) -> None:
        for name, child in self.named_children():
            if name != "sew":
                child.apply(lambda m: init_weights(m, self.config))

    def output_lengths(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        return self.sew.output_lengths(num_samples)

    def freeze_feature_encoder(self) -> None:
        """Stop gradients into the convolutional feature encoder (the usual fine-tuning recipe)."""
        self.sew.freeze_feature_encoder()

    def freeze_base_model(self) -> None:
        for p in self.sew.parameters():
            p.requires_grad = False


class SEWForCTC(_SEWHead):
    def __init__(self, config: SEWConfig):
        super().__init__(config)
        self.dropout = nn.Dropout(config.final_dropout)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self._init_head()

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> HeadOutput:
        if labels is not None and labels.max() >= self.config.vocab_size:
            raise ValueError(f"label ids must be < vocab_size ({self.config.vocab_size})")
        out = self.sew(input_values, attention_mask, output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)
        logits = self.lm_head(self.dropout(out.last_hidden_state))  # [B, T, V]
        loss = None
        if labels is not None:
            valid = attention_mask.sum(-1) if attention_mask is not None else torch.full(
                (input_values.shape[0],), input_values.shape[1], device=input_values.device)
            loss = self.ctc_loss(logits, labels, self.output_lengths(valid).long())
        return HeadOutput(logits, loss, out.hidden_states, out.attentions)

    def ctc_loss(self, logits: torch.Tensor, labels: torch.Tensor, logit_lengths: torch.Tensor) -> torch.Tensor:
        """CTC over labels padded with -100 (or the blank id), blank = pad_token_id, fp32 log-probs."""
        blank = self.config.pad_token_id
        keep = (labels != -100) & (labels != blank)
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).transpose(0, 1)  # [T, B, V]
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's CTC has stricter input rules
            return F.ctc_loss(log_probs, labels.masked_select(keep), logit_lengths, keep.sum(-1), blank=blank,
                              reduction=self.config.ctc_loss_reduction, zero_infinity=self.config.ctc_zero_infinity)


class SEWForSequenceClassification(_SEWHead):
    def __init__(self, config: SEWConfig):
        super().__init__(config)
        if config.use_weighted_layer_sum:
            n = config.num_hidden_layers + 1  # transformer layers + their input
            self.layer_weights = nn.Parameter(torch.ones(n) / n)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)
        self._init_head()

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> HeadOutput:
        weighted = self.config.use_weighted_layer_sum
        out = self.sew(input_values, attention_mask, output_hidden_states=output_hidden_states or weighted,
                       output_attentions=output_attentions)
        if weighted:
            stacked = torch.stack(out.hidden_states, dim=1)                     # [B, L+1, T', H]
            w = self.layer_weights.softmax(-1)
            x = (stacked * w.view(-1, 1, 1)).sum(1)                             # [B, T', H]
        else:
            x = out.last_hidden_state                                           # [B, T, H]
        x = self.projector(x)
        if attention_mask is None:
            pooled = x.mean(1)
        else:
            # Mean over valid frames only. The valid count comes from full-rate frame lengths even for the
            # squeezed layer-sum states, exactly as transformers does, so the two agree on padded batches.
            mask = self.sew.frame_mask(attention_mask, x.shape[1])
            pooled = (x * mask[..., None].to(x.dtype)).sum(1) / mask.sum(1, keepdim=True).to(x.dtype)
        logits = self.classifier(pooled)                                        # [B, num_labels]
        loss = None if labels is None else F.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
        return HeadOutput(logits, loss, out.hidden_states, out.attentions)
