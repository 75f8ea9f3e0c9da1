"""The diffusion U-Net of FedDiff (OpenAI guided-diffusion layout) with frequency conditioning.

Layout for an 8×8 input: input conv → level 0 (C channels, 8×8) → strided-conv downsample → level 1
(2C, 4×4) → middle block ResBlock → self-attention → ResBlock (2C at 4×4: the features FedDiff
extracts) → mirrored decoder with skip connections → zero-initialised output conv. Time enters
every ResBlock through a sinusoidal embedding and an MLP of width 4C.

After every encoder block a frequency conditioning block runs: FFT2 over space → 1×1 conv →
inverse FFT2 (real part) → 3×3 conv → a residual block of two conv-GroupNorm-SiLU units. The skip
connection keeps the features *before* it; the main path continues *after* it. ``complex_fft``
(default) passes real and imaginary parts through the 1×1 conv; ``complex_fft=False`` reproduces
the authors' code, which casts the spectrum to float and so keeps only its real part.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedrs.config import from_mapping
from fedrs.models.norms import group_norm


@dataclass(frozen=True)
class UNetSpec:
    in_channels: int
    base_channels: int = 32           # C (paper: 128)
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_heads: int = 4
    dropout: float = 0.0
    complex_fft: bool = True
    frequency_block: bool = True
    size: int = 8                     # input side: patches are resized to size × size
    steps: int = 500                  # the DDPM schedule this U-Net is trained for (T, linear β)
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def to_dict(self) -> dict:
        return {**asdict(self), "channel_mult": list(self.channel_mult)}

    @classmethod
    def from_dict(cls, d: dict) -> UNetSpec:
        return from_mapping(cls, d, tuples=("channel_mult",))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int, emb_channels: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)))
        self.skip = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))
        q, k, v = qkv.reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h * w)).reshape(b, c, h, w)


class FrequencyBlock(nn.Module):
    """FFT2 → 1×1 conv → inverse FFT2 (real part) → 3×3 conv → residual of two conv-GN-SiLU units."""

    def __init__(self, channels: int, complex_fft: bool = True):
        super().__init__()
        self.complex_fft = complex_fft
        width = 2 * channels if complex_fft else channels
        self.spectral = nn.Conv2d(width, width, 1)
        self.spatial = nn.Conv2d(channels, channels, 3, padding=1)
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), group_norm(channels), nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # FFTs run in fp32 even under bf16 autocast (complex bf16 does not exist)
        spectrum = torch.fft.fft2(x.float(), norm="ortho")
        if self.complex_fft:
            mixed = self.spectral(torch.cat([spectrum.real, spectrum.imag], dim=1)).float()
            real, imag = mixed.chunk(2, dim=1)
            y = torch.fft.ifft2(torch.complex(real, imag), norm="ortho").real
        else:  # the authors' code: the complex spectrum cast to float keeps only its real part
            y = torch.fft.ifft2(self.spectral(spectrum.real).float(), norm="ortho").real
        y = self.spatial(y.to(x.dtype))
        return y + self.refine(y)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DiffusionUNet(nn.Module):
    def __init__(self, spec: UNetSpec):
        super().__init__()
        self.spec = spec
        c = spec.base_channels
        emb = 4 * c
        self.time_embed = nn.Sequential(nn.Linear(c, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_conv = nn.Conv2d(spec.in_channels, c, 3, padding=1)
        self.encoder = nn.ModuleList()
        self.frequency = nn.ModuleList()
        skips = [c]
        ch = c
        for level, mult in enumerate(spec.channel_mult):
            for _ in range(spec.num_res_blocks):
                self.encoder.append(ResBlock(ch, mult * c, emb, spec.dropout))
                ch = mult * c
                self.frequency.append(FrequencyBlock(ch, spec.complex_fft) if spec.frequency_block else nn.Identity())
                skips.append(ch)
            if level != len(spec.channel_mult) - 1:
                self.encoder.append(Downsample(ch))
                self.frequency.append(FrequencyBlock(ch, spec.complex_fft) if spec.frequency_block else nn.Identity())
                skips.append(ch)
        self.middle = nn.ModuleList([ResBlock(ch, ch, emb, spec.dropout), AttentionBlock(ch, spec.attention_heads),
                                     ResBlock(ch, ch, emb, spec.dropout)])
        self.middle_channels = ch
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(spec.channel_mult))):
            for i in range(spec.num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(ch + skips.pop(), mult * c, emb, spec.dropout)])
                ch = mult * c
                if level and i == spec.num_res_blocks:
                    block.append(Upsample(ch))
                self.decoder.append(block)
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, spec.in_channels, 3, padding=1)))

    def _embed(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t, self.spec.base_channels))

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.input_conv(x)
        skips = [h]
        for block, frequency in zip(self.encoder, self.frequency, strict=False):
            h = block(h, emb)
            skips.append(h)          # the skip keeps the features before frequency conditioning
            h = frequency(h)
        for block in self.middle:
            h = block(h, emb)
        return h, skips

    def middle_features(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Encoder + middle block only: the diffusion features (2C channels at 4×4 for 8×8 input)."""
        return self._encode(x, self._embed(t))[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self._embed(t)
        h, skips = self._encode(x, emb)
        for block in self.decoder:
            assert isinstance(block, nn.ModuleList)
            h = block[0](torch.cat([h, skips.pop()], dim=1), emb)
            for layer in block[1:]:
                h = layer(h, emb)
        return self.out(h)
