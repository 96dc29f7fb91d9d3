"""Masked autoencoder pre-training of a timm ViT, written from the paper as named steps.

Reference: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022 (arXiv:2111.06377),
section 3 and appendix A.1. Re-implemented on timm building blocks (timm is Apache-2.0; the official MAE code is
CC BY-NC and was not copied). The encoder is a plain timm ``VisionTransformer`` (state-dict names ``cls_token``,
``pos_embed``, ``patch_embed.*``, ``blocks.*``, ``norm.*``), so what it learns loads into fine-tuning as is.

Steps: patchify -> random_masking (shuffle the patch tokens, keep the first ``round(L (1 - ratio))``) ->
forward_encoder (visible tokens + cls token) -> forward_decoder (mask tokens appended, order restored) ->
forward_loss (mean squared error on the masked patches, against per-patch normalised pixels).
"""

from __future__ import annotations

from functools import partial

import timm
import torch
from timm.models.vision_transformer import Block
from torch import nn

_layer_norm = partial(nn.LayerNorm, eps=1e-6)  # ViT / MAE LayerNorm epsilon


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table [1, cls + H*W, dim]: half the channels encode the column, half the row,
    each as sin/cos at frequencies 1 / 10000^(k / (dim/4)) (Vaswani et al. 2017 applied per axis); cls row = 0."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos position table needs a width divisible by 4, got {dim}")
    height, width = grid
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")  # [H, W] each, row-major like the patch order
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [dim/4]
    parts = []
    for coord in (cols.reshape(-1), rows.reshape(-1)):  # [H*W]
        angles = coord[:, None] * freqs[None, :]  # [H*W, dim/4]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)  # [H*W, dim]
    if cls_token:
        table = torch.cat([torch.zeros(1, dim, dtype=table.dtype), table])
    return table.float().unsqueeze(0)


def create_encoder(architecture: str, input_size: int) -> nn.Module:
    """A timm ViT without a head, with a fixed sin-cos position table (not trained) and MAE's initialisation
    (appendix A.1: xavier-uniform Transformer blocks, as ViT's JAX code; the patch projection initialised as a
    linear layer on its flattened kernel; cls token normal with std 0.02). MoCo v3 initialises its ViT alike."""
    encoder = timm.create_model(architecture, pretrained=False, num_classes=0, img_size=input_size,
                                global_pool="token", drop_path_rate=0.0)
    if getattr(encoder, "pos_embed", None) is None or encoder.cls_token is None or encoder.no_embed_class:
        raise ValueError(f"{architecture}: MAE / MoCo v3 pre-training needs a ViT with a cls token and a position "
                         "table covering it (timm's default ViT layout)")
    table = sincos_pos_embed(encoder.embed_dim, tuple(encoder.patch_embed.grid_size), cls_token=True)
    encoder.pos_embed.data.copy_(table)
    encoder.pos_embed.requires_grad_(False)
    weight = encoder.patch_embed.proj.weight
    nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
    nn.init.normal_(encoder.cls_token, std=0.02)
    _xavier_linears(encoder.blocks)
    return encoder


def _xavier_linears(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class MaskedAutoencoder(nn.Module):
    """MAE around a timm ViT encoder: ``forward(images, noise) -> loss``; ``encoder`` is what fine-tuning loads."""

    def __init__(self, encoder: nn.Module, *, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = True):
        super().__init__()
        self.encoder = encoder
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.grid = tuple(int(g) for g in encoder.patch_embed.grid_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.keep = round(self.num_patches * (1.0 - mask_ratio))
        if not 0 < self.keep < self.num_patches:
            raise ValueError(f"mask ratio {mask_ratio} keeps {self.keep} of {self.num_patches} patches; at least one "
                             "must be visible and one masked")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        in_chans = encoder.patch_embed.proj.in_channels
        # decoder names as MAE's released checkpoints (formats.md section 1), so weights.py drops them by prefix
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(decoder_dim, self.grid, cls_token=True),
                                              requires_grad=False)
        self.decoder_blocks = nn.Sequential(*[
            Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=_layer_norm)
            for _ in range(decoder_depth)])
        self.decoder_norm = _layer_norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            _xavier_linears(module)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, L, p*p*C], patches in row-major order, pixels (row, col, channel) inside a patch."""
        n, c, _, _ = images.shape
        p, (h, w) = self.patch, self.grid
        x = images.reshape(n, c, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, h * w, p * p * c)

    def random_masking(self, tokens: torch.Tensor, noise: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random subset of ``self.keep`` tokens per image by sorting per-token noise (a random permutation).

        Returns the visible tokens [N, keep, D], the mask [N, L] (1 = masked, 0 = visible) and the permutation's
        inverse [N, L] that puts shuffled tokens back in patch order.
        """
        n, length, dim = tokens.shape
        if noise is None:
            noise = torch.rand(n, length, device=tokens.device)  # [N, L]
        shuffle = torch.argsort(noise, dim=1)  # [N, L] ascending noise: the first `keep` are visible
        restore = torch.argsort(shuffle, dim=1)  # [N, L]
        visible = shuffle[:, :self.keep]  # [N, keep]
        kept = torch.gather(tokens, 1, visible.unsqueeze(-1).expand(-1, -1, dim))  # [N, keep, D]
        mask = torch.ones(n, length, device=tokens.device)
        mask[:, :self.keep] = 0
        mask = torch.gather(mask, 1, restore)  # [N, L] in patch order
        return kept, mask, restore

    def forward_encoder(self, images: torch.Tensor, noise: torch.Tensor | None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        encoder = self.encoder
        x = encoder.patch_embed(images)  # [N, L, D]
        x = x + encoder.pos_embed[:, 1:, :]
        x, mask, restore = self.random_masking(x, noise)  # [N, keep, D]
        cls = (encoder.cls_token + encoder.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1)  # [N, 1 + keep, D]
        x = encoder.blocks(encoder.norm_pre(x))
        return encoder.norm(x), mask, restore

    def forward_decoder(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)  # [N, 1 + keep, Dd]
        n, length = restore.shape
        masks = self.mask_token.expand(n, length - (x.shape[1] - 1), -1)  # [N, L - keep, Dd]
        shuffled = torch.cat([x[:, 1:, :], masks], dim=1)  # [N, L, Dd] in shuffled order
        unshuffled = torch.gather(shuffled, 1, restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # patch order
        x = torch.cat([x[:, :1, :], unshuffled], dim=1) + self.decoder_pos_embed  # [N, 1 + L, Dd]
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x)[:, 1:, :]  # [N, L, p*p*C], cls token dropped

    def forward_loss(self, images: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the masked patches only; the target is each patch's pixels normalised by their
        own mean and variance when ``norm_pix_loss`` (MAE Table 1d)."""
        target = self.patchify(images)  # [N, L, p*p*C]
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's timm-named tensors, detached copies on the CPU (what encoder.pth holds)."""
        return {key: value.detach().cpu().clone() for key, value in self.encoder.state_dict().items()}

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of one batch [N, C, H, W]; ``noise`` [N, L] fixes the masks (drawn per image by the loader)."""
        latent, mask, restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, restore)
        return self.forward_loss(images, pred, mask)


def build_mae(architecture: str, input_size: int, *, decoder_dim: int, decoder_depth: int, decoder_heads: int,
              mask_ratio: float, norm_pix_loss: bool) -> MaskedAutoencoder:
    return MaskedAutoencoder(create_encoder(architecture, input_size), decoder_dim=decoder_dim,
                             decoder_depth=decoder_depth, decoder_heads=decoder_heads, mask_ratio=mask_ratio,
                             norm_pix_loss=norm_pix_loss)

