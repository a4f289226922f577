"""SEW (Squeezed and Efficient Wav2vec) in plain PyTorch, leaf modules first, then the encoder and SEWModel.

Module and parameter names mirror the transformers implementation so that `asapp/sew-*` state dicts load
without renaming (checkpoint.py handles the two weight-norm spellings). Shapes: B batch, S samples,
T feature frames (one per `config.total_stride` samples), T' = T // squeeze_factor squeezed frames, H hidden.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sew_pipeline.models.checkpoint import PretrainedMixin
from sew_pipeline.models.config import SEWConfig

_ACT = {
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "selu": nn.SELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    return _ACT[name]()


# ---------------------------------------------------------------------------------------------------------------
# feature encoder: raw samples -> frames
# ---------------------------------------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """Conv1d + optional norm + activation. `norm` is "group" (per-channel over time), "layer" or None."""

    def __init__(self, config: SEWConfig, layer_id: int, norm: str | None):
        super().__init__()
        c_in = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        c_out = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(c_in, c_out, config.conv_kernel[layer_id], config.conv_stride[layer_id],
                              bias=config.conv_bias)
        self.norm_kind = norm
        if norm == "group":
            self.layer_norm = nn.GroupNorm(c_out, c_out, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(c_out, elementwise_affine=True)
        self.activation = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C_in, S] -> [B, C_out, S']
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.layer_norm(x)
        elif self.norm_kind == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        return self.activation(x)


class FeatureEncoder(nn.Module):
    def __init__(self, config: SEWConfig):
        super().__init__()
        if config.feat_extract_norm == "group":  # group norm on the first layer only, as in wav2vec 2.0 base
            norms = ["group"] + [None] * (config.num_feat_extract_layers - 1)
        else:
            norms = ["layer"] * config.num_feat_extract_layers
        self.conv_layers = nn.ModuleList(ConvLayer(config, i, n) for i, n in enumerate(norms))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:  # [B, S] -> [B, C, T]
        x = input_values[:, None]
        for layer in self.conv_layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------------------------
# encoder pieces
# ---------------------------------------------------------------------------------------------------------------
class WeightNormConv1d(nn.Module):
    """Grouped, strided Conv1d with weight normalisation over dim 2 (the kernel axis), held as g and v.

    Stored as plain parameters `weight_g` [1, 1, K] and `weight_v` [C, C/groups, K] so both checkpoint spellings
    (legacy weight_g/weight_v and parametrizations.weight.original0/1) map onto it by renaming alone.
    """

    def __init__(self, channels: int, kernel: int, groups: int, stride: int):
        super().__init__()
        self.kernel, self.groups, self.stride, self.padding = kernel, groups, stride, kernel // 2
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.bias = nn.Parameter(torch.zeros(channels))

    @property
    def weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)


class PositionalConvEmbedding(nn.Module):
    """Relative positions from a strided convolution; its stride performs the squeeze."""

    def __init__(self, config: SEWConfig):
        super().__init__()
        self.conv = WeightNormConv1d(config.hidden_size, config.num_conv_pos_embeddings,
                                     config.num_conv_pos_embedding_groups, config.squeeze_factor)
        self.trim = 1 if config.num_conv_pos_embeddings % 2 == 0 else 0  # "same" padding for even kernels
        self.activation = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, H, T] -> [B, H, ~T/squeeze]
        x = self.conv(x)
        if self.trim:
            x = x[:, :, : -self.trim]
        return self.activation(x)


class Attention(nn.Module):
    def __init__(self, config: SEWConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = h // self.num_heads
        self.dropout = config.attention_dropout
        self.q_proj, self.k_proj = nn.Linear(h, h), nn.Linear(h, h)
        self.v_proj, self.out_proj = nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # x [B, T', H]; key_mask [B, T'] bool (True = real frame) or None
        B, T, H = x.shape
        q, k, v = (p(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # [B, nh, T', hd]
        mask = None if key_mask is None else key_mask[:, None, None, :]  # broadcast over heads and queries
        p_drop = self.dropout if self.training else 0.0
        if need_weights:  # explicit softmax only when the caller asks for attention maps
            scores = (q @ k.transpose(-2, -1)) * self.head_dim ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = F.dropout(scores.softmax(-1), p_drop, self.training)
            y = weights @ v
        else:
            weights = None
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        y = y.transpose(1, 2).reshape(B, T, H)
        return self.out_proj(y), weights


class FeedForward(nn.Module):
    def __init__(self, config: SEWConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intermediate_dropout(self.intermediate_act_fn(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """Post-LN transformer block (as in wav2vec 2.0 base / SEW)."""

    def __init__(self, config: SEWConfig):
        super().__init__()
        self.attention = Attention(config)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attention(x, key_mask, need_weights)
        x = self.layer_norm(x + self.dropout(a))
        x = self.final_layer_norm(x + self.feed_forward(x))
        return x, weights


class Upsampling(nn.Module):
    """Undo the squeeze: project each squeezed frame to `squeeze_factor` frames."""

    def __init__(self, config: SEWConfig):
        super().__init__()
        self.squeeze = config.squeeze_factor
        self.projection = nn.Linear(config.hidden_size, config.hidden_size * self.squeeze)
        self.activation = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T', H] -> [B, T' * s, H]
        x = self.activation(self.projection(x))
        B, T, Hs = x.shape
        return x.reshape(B, T * self.squeeze, Hs // self.squeeze)


@dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor                 # [B, T, H], full frame rate
    hidden_states: tuple[torch.Tensor, ...] | None  # num_layers + 1 entries, squeezed rate [B, T', H]
    attentions: tuple[torch.Tensor, ...] | None     # [B, heads, T', T'] per layer


class Encoder(nn.Module):
    def __init__(self, config: SEWConfig):
        super().__init__()
        self.config = config
        self.pos_conv_embed = PositionalConvEmbedding(config)
        self.pool = nn.AvgPool1d(config.squeeze_factor, config.squeeze_factor)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.upsample = Upsampling(config)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> EncoderOutput:
        # x [B, T, H]; frame_mask [B, T] bool or None
        T = x.shape[1]
        squeezed_mask = None
        if frame_mask is not None:
            x = x * frame_mask[..., None].to(x.dtype)  # padded frames must not leak through the pos conv
            # A squeezed frame is real when any of its frames is real (max-pool): the transformers 5.x rule,
            # i.e. ceil(len / s) squeezed frames; 4.x floored instead.
            s = self.config.squeeze_factor
            squeezed_mask = F.max_pool1d(frame_mask[:, None].float(), s, s)[:, 0].bool()
        x = x.transpose(1, 2)                                  # [B, H, T]
        pos = self.pos_conv_embed(x)
        pooled = self.pool(x)
        n = min(pos.shape[-1], pooled.shape[-1])
        x = (pooled[..., :n] + pos[..., :n]).transpose(1, 2)  # [B, T', H]
        if squeezed_mask is not None:
            squeezed_mask = squeezed_mask[:, :n]
        x = self.dropout(self.layer_norm(x))

        hidden_states = [x] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for layer in self.layers:
            if self.training and self.config.layerdrop > 0 and torch.rand(()) < self.config.layerdrop:
                continue  # LayerDrop
            x, weights = layer(x, squeezed_mask, output_attentions)
            if hidden_states is not None:
                hidden_states.append(x)
            if attentions is not None:
                attentions.append(weights)

        x = self.upsample(x)
        if x.shape[1] < T:  # squeeze dropped a remainder frame: pad back to the feature frame count
            x = F.pad(x, (0, 0, 0, T - x.shape[1]))
        return EncoderOutput(x, tuple(hidden_states) if hidden_states else None,
                             tuple(attentions) if attentions else None)


# ---------------------------------------------------------------------------------------------------------------
# SEWModel
# ---------------------------------------------------------------------------------------------------------------
def conv_output_length(num_samples: torch.Tensor | int, config: SEWConfig) -> torch.Tensor | int:
    """Frames the feature encoder emits for `num_samples` samples (valid convolutions, no padding)."""
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        if isinstance(num_samples, torch.Tensor):
            num_samples = torch.div(num_samples - kernel, stride, rounding_mode="floor") + 1
        else:
            num_samples = (num_samples - kernel) // stride + 1
    return num_samples


def spec_augment_mask(batch: int, length: int, prob: float, span: int, min_masks: int,
                      lengths: list[int] | None = None, rng: np.random.Generator | None = None) -> np.ndarray:
    """Random SpecAugment spans: about prob * length / span spans of `span` frames per row, within each row's length."""
    rng = rng or np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))  # follows torch's seed
    mask = np.zeros((batch, length), dtype=bool)
    for row, n in enumerate(lengths or [length] * batch):
        starts_available = n - span + 1
        if starts_available <= 0:
            continue
        count = max(min_masks, int(prob * n / span + rng.random()))
        count = min(count, starts_available)
        for start in rng.choice(starts_available, count, replace=False):
            mask[row, start:start + span] = True
    return mask


@torch.no_grad()
def init_weights(module: nn.Module, config: SEWConfig) -> None:
    """Fresh-model initialisation (the transformers scheme; loading a checkpoint overwrites it)."""
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, config.initializer_range)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        module.weight.fill_(1.0)
        module.bias.zero_()
    elif isinstance(module, nn.Conv1d):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            k = (module.in_channels // module.groups) * module.kernel_size[0]
            nn.init.uniform_(module.bias, -k ** -0.5, k ** -0.5)
    elif isinstance(module, WeightNormConv1d):
        fan_in = module.kernel * module.weight_v.shape[0]
        module.weight_v.normal_(0.0, 2 * (1 / fan_in) ** 0.5)
        module.weight_g.copy_(module.weight_v.norm(dim=(0, 1), keepdim=True))  # so weight == v at start
        module.bias.zero_()


@dataclass
class ModelOutput:
    last_hidden_state: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class SEWModel(PretrainedMixin, nn.Module):

    def __init__(self, config: SEWConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = FeatureEncoder(config)
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.project_features = config.conv_dim[-1] != config.hidden_size
        if self.project_features:
            self.feature_projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.feature_dropout = nn.Dropout(config.feat_proj_dropout)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.rand(config.hidden_size))
        self.encoder = Encoder(config)
        self.apply(lambda m: init_weights(m, config))

    def output_lengths(self, num_samples: torch.Tensor | int) -> torch.Tensor | int:
        """Number of output frames for inputs of `num_samples` valid samples."""
        return conv_output_length(num_samples, self.config)

    def frame_mask(self, attention_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
        """[B, S] sample mask -> [B, num_frames] bool frame mask from each row's valid sample count."""
        lengths = self.output_lengths(attention_mask.sum(-1)).long()
        return torch.arange(num_frames, device=attention_mask.device)[None, :] < lengths[:, None]

    def freeze_feature_encoder(self) -> None:
        for p in self.feature_extractor.parameters():
            p.requires_grad = False

    def _spec_augment(self, x: torch.Tensor, frame_mask: torch.Tensor | None,
                      mask_time_indices: torch.Tensor | None) -> torch.Tensor:
        cfg = self.config
        if not cfg.apply_spec_augment:
            return x
        B, T, H = x.shape
        if mask_time_indices is None and cfg.mask_time_prob > 0 and self.training:
            lengths = frame_mask.sum(-1).tolist() if frame_mask is not None else None
            mask_time_indices = torch.from_numpy(spec_augment_mask(
                B, T, cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_time_min_masks, lengths)).to(x.device)
        if mask_time_indices is not None:
            x = torch.where(mask_time_indices[..., None], self.masked_spec_embed.to(x.dtype), x)
        if cfg.mask_feature_prob > 0 and self.training:
            feats = spec_augment_mask(B, H, cfg.mask_feature_prob, cfg.mask_feature_length, cfg.mask_feature_min_masks)
            x = x.masked_fill(torch.from_numpy(feats).to(x.device)[:, None, :], 0.0)
        return x

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None,
                mask_time_indices: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> ModelOutput:
        if input_values.shape[-1] < self.config.min_input_samples:
            raise ValueError(f"input of {input_values.shape[-1]} samples is shorter than the model's minimum "
                             f"{self.config.min_input_samples} (pad short clips)")
        feats = self.feature_extractor(input_values).transpose(1, 2)  # [B, T, C]
        feats = self.layer_norm(feats)
        if self.project_features:
            feats = self.feature_projection(feats)                   # [B, T, H]
        x = self.feature_dropout(feats)
        frame_mask = None if attention_mask is None else self.frame_mask(attention_mask, x.shape[1])
        x = self._spec_augment(x, frame_mask, mask_time_indices)
        enc = self.encoder(x, frame_mask, output_hidden_states, output_attentions)
        return ModelOutput(enc.last_hidden_state, enc.hidden_states, enc.attentions)
