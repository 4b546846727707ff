"""SiT (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable Interpolant
Transformers"): a class-conditional latent transformer on the linear interpolant, wrapped as the engine's
denoiser D(x, sigma, condition) -> x0.

SiT's own time runs from noise (t = 0) to data (t = 1): x_t = t * x_data + (1 - t) * noise, and the network
predicts the velocity v = x_data - noise. The engine's "flow" coordinates are the same path with
sigma = 1 - t, so one network call gives x0 = x + sigma * v(x, 1 - sigma, y).

The network is written here from the architecture (DiT's adaLN-Zero transformer, which SiT reuses unchanged);
its parameter names are those of the released checkpoint `SiT-XL-2-256x256.pt`, so that file loads strictly.

A folder holds:
  config.json                  optional; {"depth", "hidden_size", "patch_size", "num_heads", "input_size",
                               "num_classes", "learn_sigma"}; absent means SiT-XL/2 at 256x256
  SiT-XL-2-256x256.pt          the released plain state dict, or
  model.safetensors            the same tensors as safetensors (exactly one of the two)
  vae/                         a diffusers AutoencoderKL (stabilityai/sd-vae-ft-ema for the release)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..backend import ConfigError, ModelSpec
from .common import RowCondition, TorchDenoiser, require_files

CHECKPOINT_NAMES = ("SiT-XL-2-256x256.pt", "model.safetensors")
# SiT was trained on sd-vae latents multiplied by this constant (a property of SiT's training data, not of
# the VAE folder, so it is not read from the VAE's config).
LATENT_SCALE = 0.18215
LATENT_CHANNELS = 4
FREQUENCY_DIM = 256
MLP_RATIO = 4

# The sizes of the SiT paper's Table 1, for the model's name: the `sit-imagenet` preset asks for "sit-xl".
_SIZE_NAMES = {(12, 384, 6): "s", (12, 768, 12): "b", (24, 1024, 16): "l", (28, 1152, 16): "xl"}


@dataclass(frozen=True)
class SiTConfig:
    depth: int = 28
    hidden_size: int = 1152
    patch_size: int = 2
    num_heads: int = 16
    input_size: int = 32
    num_classes: int = 1000
    learn_sigma: bool = True

    @classmethod
    def read(cls, folder: Path) -> SiTConfig:
        path = folder / "config.json"
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"SiT: cannot read {str(path)!r}: {error}") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) - known:
            unknown = sorted(set(raw) - known) if isinstance(raw, dict) else raw
            raise ConfigError(f"SiT: {str(path)!r} has unknown keys {unknown}; want a subset of {sorted(known)}")
        config = cls(**raw)
        config.check(str(path))
        return config

    def check(self, where: str) -> None:
        problems = [f"{f.name} must be a positive integer, got {getattr(self, f.name)!r}"
                    for f in fields(self) if f.name != "learn_sigma"
                    and (type(getattr(self, f.name)) is not int or getattr(self, f.name) < 1)]
        if not isinstance(self.learn_sigma, bool):
            problems.append(f"learn_sigma must be true or false, got {self.learn_sigma!r}")
        if not problems:
            if self.input_size % self.patch_size:
                problems.append(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
            if self.hidden_size % self.num_heads or self.hidden_size % 4:
                problems.append(f"hidden_size {self.hidden_size} must divide by num_heads {self.num_heads} and by 4 "
                                "(the 2-D sin-cos position embedding)")
        if problems:
            raise ConfigError(f"SiT: {where}: " + "; ".join(problems))

    @property
    def name(self) -> str:
        size = _SIZE_NAMES.get((self.depth, self.hidden_size, self.num_heads))
        return f"sit-{size}" if size else "sit"


def timestep_frequencies(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10_000.0) -> torch.Tensor:
    """[cos | sin] of t at dim/2 geometric frequencies from 1 down to 1/max_period (the transformer's sinusoid,
    as DiT embeds its timesteps). SiT feeds its t in [0, 1] unscaled."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """[grid * grid, dim] for tokens in row-major order: the first half of the channels encodes a token's column,
    the second half its row, each as [sin | cos] at dim/4 frequencies 1 / 10000^(k / (dim/4)) (MAE's table)."""
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class PatchEmbedding(nn.Module):
    def __init__(self, patch_size: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(LATENT_CHANNELS, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedding(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t).to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """num_classes + 1 rows: the last is the null class that training dropped labels to, for guidance."""

    def __init__(self, num_classes: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        # qkv's output channels are (q | k | v), each split into heads: [3, B, heads, T, head_dim].
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class MLP(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, MLP_RATIO * hidden_size)
        self.fc2 = nn.Linear(MLP_RATIO * hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """adaLN-Zero: the condition sets a shift, scale and gate for the attention branch and for the MLP branch."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """forward(x [B, 4, H, W], t [B] in [0, 1], labels [B] with num_classes as the null class) -> the velocity
    [B, 4, H, W] (the learned-variance half of a learn_sigma output is dropped: SiT's ODE never uses it)."""

    def __init__(self, config: SiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden, patch = config.hidden_size, config.patch_size
        self.out_channels = 2 * LATENT_CHANNELS if config.learn_sigma else LATENT_CHANNELS
        self.x_embedder = PatchEmbedding(patch, hidden)
        self.t_embedder = TimestepEmbedding(hidden)
        self.y_embedder = LabelEmbedding(config.num_classes, hidden)
        grid = config.input_size // patch
        # Fixed, but saved in the released checkpoint, so it is a persistent buffer that loading overwrites.
        self.register_buffer("pos_embed", sincos_position_embedding(hidden, grid)[None])
        self.blocks = nn.ModuleList(Block(hidden, config.num_heads) for _ in range(config.depth))
        self.final_layer = FinalLayer(hidden, patch, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tokens = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(labels)
        for block in self.blocks:
            tokens = block(tokens, c)
        return self.unpatchify(self.final_layer(tokens, c))[:, :LATENT_CHANNELS]

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, h*w, p*p*C] (each token's channels ordered (row in patch, column in patch, C)) -> [B, C, h*p, w*p]."""
        batch, p, c = tokens.shape[0], self.config.patch_size, self.out_channels
        side = self.config.input_size // p
        patches = tokens.reshape(batch, side, side, p, p, c)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(batch, c, side * p, side * p)


def _checkpoint_path(folder: Path) -> Path:
    present = [folder / name for name in CHECKPOINT_NAMES if (folder / name).exists()]
    if len(present) > 1:
        raise ConfigError(f"SiT: folder {str(folder)!r} has both {' and '.join(CHECKPOINT_NAMES)}; keep one")
    return present[0]


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise several types for a truncated or foreign file
        raise ConfigError(f"SiT: cannot read {str(path)!r} as a state dict: {error}") from None
    # A training checkpoint ({"model", "ema", "opt", "args"}) samples from its EMA weights, as SiT's sample.py.
    if isinstance(state, dict) and isinstance(state.get("ema"), dict):
        state = state["ema"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        found = sorted(state)[:5] if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"SiT: {str(path)!r} does not hold a state dict of tensors (found {found})")
    return state


def check_state_dict(state: dict[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """One ConfigError naming the first mismatching keys, before load_state_dict's longer message."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    shapes = [f"{key} {found[key]} (config wants {expected[key]})"
              for key in expected if key in found and found[key] != expected[key]]
    problems = [f"{label} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)} in all)"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise ConfigError(f"SiT: {where} does not match the folder's config: " + "; ".join(problems)
                          + "; make config.json give the checkpoint's sizes")


class SiTDenoiser(TorchDenoiser):
    def __init__(self, net: SiT, vae, spec: ModelSpec, device: torch.device, dtype: torch.dtype,
                 guide_all_channels: bool) -> None:
        self.net = net
        self.vae = vae
        self.spec = spec
        self.device = device
        self.dtype = dtype
        self.guide_all_channels = guide_all_channels

    def velocity(self, x: torch.Tensor, t: float, labels: Sequence[int]) -> torch.Tensor:
        """SiT's v(x, t, y) in float32 for the given rows (label num_classes is the null class)."""
        label_tensor = torch.tensor(list(labels), dtype=torch.long, device=self.device)
        times = torch.full((x.shape[0],), t, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            return self.net(x.to(self.dtype), times, label_tensor).float()

    def x0(self, x: torch.Tensor, sigma: float, conditions: Sequence[RowCondition]) -> torch.Tensor:
        """Classifier-free guidance doubles the batch inside this one call, for only the rows that need it:
        guidance 0 (or no class) is the null class alone, guidance 1 the class alone, any other scale both,
        combined as v_null + g * (v_class - v_null)."""
        null = self.spec.num_classes
        labels, guided = [], []
        for row, condition in enumerate(conditions):
            label = condition.class_label
            if label is not None and not 0 <= label < null:
                raise ValueError(f"SiT: class label {label} is outside [0, {null})")
            labels.append(null if label is None or condition.guidance == 0 else label)
            if labels[-1] != null and condition.guidance != 1:
                guided.append(row)
        batch = torch.cat([x, x[guided]]) if guided else x
        v = self.velocity(batch, 1.0 - sigma, labels + [null] * len(guided))
        v, v_null = v[: len(conditions)], v[len(conditions):]
        if guided:
            scale = torch.tensor([conditions[row].guidance for row in guided], device=self.device)[:, None, None, None]
            # SiT's released sampling (and its reported FIDs) guides only the first three of the four latent
            # channels, the fourth keeping the class's velocity; guide_all_channels is the textbook form.
            channels = slice(None) if self.guide_all_channels else slice(0, 3)
            v_class = v[guided]
            v_class[:, channels] = v_null[:, channels] + scale * (v_class[:, channels] - v_null[:, channels])
            v[guided] = v_class
        return x + sigma * v

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            images = self.vae.decode(latents.float() / LATENT_SCALE).sample
        return ((images + 1) / 2).clamp(0, 1)


def _vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load(folder: str | Path, device: torch.device, dtype: torch.dtype, *, guide_all_channels: bool = False,
         **options) -> SiTDenoiser:
    """The SiT in `folder` (layout: this module's docstring) on `device`: the transformer in `dtype`, the VAE in
    float32 (it runs once per sample, and its decode is what verifiers see)."""
    if options:
        raise ConfigError(f"SiT: unknown options {sorted(options)}; it takes guide_all_channels")
    root = require_files("SiT", folder, ["|".join(CHECKPOINT_NAMES), "vae/config.json",
                                         "vae/diffusion_pytorch_model.safetensors|vae/diffusion_pytorch_model.bin"])
    config = SiTConfig.read(root)
    checkpoint = _checkpoint_path(root)
    with torch.device("meta"):
        net = SiT(config)
    state = _read_state_dict(checkpoint)
    check_state_dict(state, net, repr(str(checkpoint)))
    net.load_state_dict(state, strict=True, assign=True)
    net = net.to(device=device, dtype=dtype).eval().requires_grad_(False)

    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(root / "vae", local_files_only=True, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise ConfigError(f"SiT: cannot load the VAE in {str(root / 'vae')!r}: {error}") from None
    vae = vae.to(device).eval().requires_grad_(False)
    if vae.config.latent_channels != LATENT_CHANNELS:
        raise ConfigError(f"SiT: the VAE has {vae.config.latent_channels} latent channels; SiT takes {LATENT_CHANNELS}")

    stat = checkpoint.stat()
    side = config.input_size * _vae_factor(vae)
    spec = ModelSpec(
        name=config.name,
        latent_shape=(LATENT_CHANNELS, config.input_size, config.input_size),
        # SiT's velocity model was trained on t in [0, 1] and x0 = x + sigma * v has no singularity, so the
        # floor only bounds the levels a request may name: 1e-3 is SiT's sampling epsilon for the paths that need
        # one, and far below the smallest step of any preset (1/125).
        sigma_min=1e-3,
        sigma_max=1.0,
        rho=1.0,
        num_classes=config.num_classes,
        default_solver="heun",
        # The sit-imagenet preset's final generation: 125 Heun steps to 0 are 249 NFEs, the 250 of SiT's ODE
        # setting and of Ma et al. 2025, Sec. 4.
        default_steps=125,
        # SiT-XL's reported guided FIDs (ODE and SDE) use a scale of 1.5; 1 turns guidance off.
        default_guidance_scale=1.5,
        identity=(f"sit:{checkpoint.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{json.dumps(asdict(config))}:"
                  f"{dtype}:{'cfg-all' if guide_all_channels else 'cfg-3'}"),
        process="flow",
        # Uniform in t, as SiT's fixed-step ODE samplers step.
        schedule="shifted",
        schedule_shift=1.0,
        takes_prompts=False,
        image_shape=(3, side, side),
    )
    return SiTDenoiser(net, vae, spec, device, dtype, guide_all_channels)


TINY = SiTConfig(depth=2, hidden_size=64, patch_size=2, num_heads=4, input_size=8, num_classes=10, learn_sigma=True)


def save_tiny(folder: str | Path, seed: int = 0, *, checkpoint: str = CHECKPOINT_NAMES[0]) -> None:
    """A random-weight SiT (TINY) and a 2-level AutoencoderKL in a real folder's layout; `checkpoint` picks the
    released .pt name or model.safetensors. Every weight is random (none zeroed as SiT's initialisation does),
    so that guidance and every block change the output."""
    if checkpoint not in CHECKPOINT_NAMES:
        raise ValueError(f"checkpoint must be one of {CHECKPOINT_NAMES}, got {checkpoint!r}")
    from diffusers import AutoencoderKL

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = SiT(TINY)
    for name, parameter in net.named_parameters():
        with torch.no_grad():
            parameter.normal_(0.0, 0.02 if name.endswith("bias") else 1.0 / math.sqrt(parameter[0].numel()))
    (root / "config.json").write_text(json.dumps(asdict(TINY), indent=2))
    state = {key: value.contiguous() for key, value in net.state_dict().items()}
    if checkpoint.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(root / checkpoint))
    else:
        torch.save(state, root / checkpoint)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16,
    )
    vae.save_pretrained(root / "vae")
