"""SiT: the network's parameter names and shapes are the released SiT-XL/2 checkpoint's, a saved folder loads
back strictly from either checkpoint format, the engine-coordinate Heun loop equals a Heun integration in
SiT's own time, guidance follows SiT's released sampler, and broken folders fail at load with one ConfigError."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from noisesearch_server.backend import ConfigError  # noqa: E402
from noisesearch_server.engine import to_d  # noqa: E402
from noisesearch_server.schedules import solve_sigmas  # noqa: E402
from noisesearch_server.torchmodels import sit  # noqa: E402
from noisesearch_server.torchmodels.common import RowCondition  # noqa: E402

torch.set_num_threads(1)
CPU = torch.device("cpu")


def released_xl2_keys() -> dict[str, tuple[int, ...]]:
    """SiT-XL/2 at 256 (Ma et al. 2024, Table 1: depth 28, width 1152, 16 heads, patch 2) on 32x32x4 latents,
    spelled out by hand: 16x16 = 256 tokens; qkv 3*1152; MLP 4*1152; adaLN 6*1152 in a block and 2*1152 in the
    final layer; the final linear writes 2*2 pixels of 2*4 channels (velocity and learned variance); 1000
    classes and the null class. LayerNorms carry no parameters (their affine is the adaLN modulation)."""
    d = 1152
    keys = {
        "pos_embed": (1, 256, d),
        "x_embedder.proj.weight": (d, 4, 2, 2),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
    }
    for i in range(28):
        keys |= {
            f"blocks.{i}.attn.qkv.weight": (3 * d, d),
            f"blocks.{i}.attn.qkv.bias": (3 * d,),
            f"blocks.{i}.attn.proj.weight": (d, d),
            f"blocks.{i}.attn.proj.bias": (d,),
            f"blocks.{i}.mlp.fc1.weight": (4 * d, d),
            f"blocks.{i}.mlp.fc1.bias": (4 * d,),
            f"blocks.{i}.mlp.fc2.weight": (d, 4 * d),
            f"blocks.{i}.mlp.fc2.bias": (d,),
            f"blocks.{i}.adaLN_modulation.1.weight": (6 * d, d),
            f"blocks.{i}.adaLN_modulation.1.bias": (6 * d,),
        }
    keys |= {
        "final_layer.linear.weight": (2 * 2 * 8, d),
        "final_layer.linear.bias": (2 * 2 * 8,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    return keys


def test_xl2_state_dict_is_the_released_layout():
    with torch.device("meta"):
        net = sit.SiT(sit.SiTConfig())
    found = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    assert found == released_xl2_keys()
    # The paper's 675M parameters (pos_embed is a fixed table, not counted).
    assert round(sum(p.numel() for p in net.parameters()) / 1e6) == 675
    assert net.config.name == "sit-xl"


def test_position_and_time_embeddings_by_hand():
    # dim 8, grid 2: a quarter of 2 frequencies, 1 and 1/100; channels (sin, sin, cos, cos) of the column,
    # then of the row; token 1 is (row 0, column 1), token 2 is (row 1, column 0).
    table = sit.sincos_position_embedding(8, 2)
    s1, c1, s2, c2 = math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)
    torch.testing.assert_close(table[1], torch.tensor([s1, s2, c1, c2, 0, 0, 1, 1]))
    torch.testing.assert_close(table[2], torch.tensor([0, 0, 1, 1, s1, s2, c1, c2]))
    # t = 0.5 at frequencies exp(-ln(1e4) * k / 128): cos first, then sin.
    freqs = sit.timestep_frequencies(torch.tensor([0.5]))[0]
    assert freqs.shape == (256,)
    assert freqs[0].item() == pytest.approx(math.cos(0.5)) and freqs[128].item() == pytest.approx(math.sin(0.5))
    assert freqs[1].item() == pytest.approx(math.cos(0.5 * 1e4 ** (-1 / 128)))


def test_block_and_unpatchify_by_hand():
    """The layouts a released checkpoint depends on: qkv's rows are (q | k | v), each split into consecutive
    heads; adaLN's six chunks are (shift, scale, gate) for attention, then for the MLP; a token's output
    channels are (row in patch, column in patch, channel) and tokens run row by row."""
    torch.manual_seed(0)
    d, heads, tokens = 8, 2, 3
    block = sit.Block(d, heads)
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter)
    x, c = torch.randn(1, tokens, d), torch.randn(1, d)
    mod = torch.nn.functional.silu(c) @ block.adaLN_modulation[1].weight.T + block.adaLN_modulation[1].bias
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod[0, i * d : (i + 1) * d] for i in range(6))

    def norm(v):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False, keepdim=True) + 1e-6)

    h = norm(x[0]) * (1 + scale_a) + shift_a
    w, b = block.attn.qkv.weight, block.attn.qkv.bias
    q, k, v = (h @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i in range(3))
    hd = d // heads
    attended = torch.cat([
        torch.softmax(q[:, j * hd : (j + 1) * hd] @ k[:, j * hd : (j + 1) * hd].T / math.sqrt(hd), dim=-1)
        @ v[:, j * hd : (j + 1) * hd] for j in range(heads)], dim=1)
    y = x[0] + gate_a * block.attn.proj(attended)
    hidden = block.mlp.fc1(norm(y) * (1 + scale_m) + shift_m)
    gelu = 0.5 * hidden * (1 + torch.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden**3)))
    expected = y + gate_m * block.mlp.fc2(gelu)
    with torch.no_grad():
        torch.testing.assert_close(block(x, c)[0], expected)

    net = sit.SiT(sit.SiTConfig(depth=1, hidden_size=8, patch_size=2, num_heads=2, input_size=4, num_classes=2,
                                learn_sigma=False))
    # Token (r, col) of a 2x2 grid, its channel (i, j, ch) -> 1000 r + 100 col + 10 (2 i + j) + ch.
    code = torch.tensor([[1000 * r + 100 * col + 10 * (2 * i + j) + ch for i in range(2) for j in range(2)
                          for ch in range(4)] for r in range(2) for col in range(2)], dtype=torch.float32)
    image = net.unpatchify(code[None])[0]
    assert image[2, 3, 0].item() == 1000 * 1 + 100 * 0 + 10 * (2 * 1 + 0) + 2  # pixel row 3, column 0, channel 2
    assert image[1, 0, 3].item() == 1000 * 0 + 100 * 1 + 10 * (2 * 0 + 1) + 1  # pixel row 0, column 3, channel 1


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sit")
    sit.save_tiny(root / "pt", seed=3)
    sit.save_tiny(root / "st", seed=3, checkpoint="model.safetensors")
    return root


@pytest.fixture(scope="module")
def model(folders):
    return sit.load(folders / "pt", CPU, torch.float32)


def test_both_checkpoint_formats_load_strictly_to_the_saved_weights(folders, model):
    saved = torch.load(folders / "pt" / "SiT-XL-2-256x256.pt", weights_only=True)
    loaded = model.net.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)
    other = sit.load(folders / "st", CPU, torch.float32)
    assert all(torch.equal(other.net.state_dict()[key], saved[key]) for key in saved)
    x = torch.randn(2, *model.spec.latent_shape, generator=torch.Generator().manual_seed(0))
    rows = [RowCondition(1, guidance=1.5), RowCondition(None, guidance=1.5)]
    assert torch.equal(model.x0(x, 0.3, rows), other.x0(x, 0.3, rows))


def test_spec(model):
    spec = model.spec
    assert (spec.process, spec.schedule, spec.schedule_shift, spec.sigma_max, spec.sigma_min) == (
        "flow", "shifted", 1.0, 1.0, 1e-3)
    assert (spec.default_solver, spec.default_steps, spec.default_guidance_scale) == ("heun", 125, 1.5)
    assert (spec.latent_shape, spec.image_shape, spec.num_classes, spec.takes_prompts) == (
        (4, 8, 8), (3, 16, 16), 10, False)
    assert spec.name == "sit"


def sit_velocity(net, x: torch.Tensor, t: float, label: int, scale: float, channels: int = 3) -> torch.Tensor:
    """SiT's released sampler for one class: the class and the null class in one doubled batch, guided on the
    first `channels` channels, the rest keeping the class's output."""
    null = net.config.num_classes
    out = net(torch.cat([x, x]), torch.full((2 * len(x),), t), torch.tensor([label] * len(x) + [null] * len(x)))
    cond, uncond = out.chunk(2)
    guided = cond.clone()
    guided[:, :channels] = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return guided


def test_engine_heun_equals_heun_in_sits_time(model):
    """SiT's fixed-step Heun in its own time (t: 0 -> 1 on a uniform grid, dx/dt = v, the last step Euler as
    the engine's step to sigma = 0) against the engine's Heun in sigma over solve_sigmas with our x0."""
    steps = 6
    rows = [(2, 1.5), (7, 4.0)]
    noise = torch.randn(len(rows), *model.spec.latent_shape, generator=torch.Generator().manual_seed(1))

    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    expected = []
    with torch.no_grad():
        for row, (label, scale) in enumerate(rows):
            x = noise[row : row + 1].clone()
            for i in range(steps):
                t, t_next = float(ts[i]), float(ts[i + 1])
                v = sit_velocity(model.net, x, t, label, scale)
                x_euler = x + (t_next - t) * v
                if i == steps - 1:
                    x = x_euler
                else:
                    x = x + (t_next - t) * (v + sit_velocity(model.net, x_euler, t_next, label, scale)) / 2
            expected.append(x[0])

    sigmas = solve_sigmas(model.spec, model.spec.sigma_max, 0.0, steps)
    np.testing.assert_allclose(sigmas, 1.0 - ts.numpy(), atol=1e-15)
    conditions = [RowCondition(label, guidance=scale) for label, scale in rows]

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        return model.x0(torch.from_numpy(x).float(), float(sigma), conditions).double().numpy()

    x = model.spec.sigma_max * noise.double().numpy()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = to_d(x, sigma, denoise(x, sigma))
        if sigma_next > 0:
            x_euler = x + d * (sigma_next - sigma)
            x = x + (d + to_d(x_euler, sigma_next, denoise(x_euler, sigma_next))) / 2 * (sigma_next - sigma)
        else:
            x = x + d * (sigma_next - sigma)
    np.testing.assert_allclose(x, torch.stack(expected).double().numpy(), rtol=1e-4, atol=1e-4)


def test_guidance_rows_and_determinism(folders, model):
    net, sigma, null = model.net, 0.4, model.spec.num_classes
    x = torch.randn(5, *model.spec.latent_shape, generator=torch.Generator().manual_seed(2))
    t = torch.full((1,), 1 - sigma)

    def direct(row: int, label: int) -> torch.Tensor:
        with torch.no_grad():
            return x[row] + sigma * net(x[row : row + 1], t, torch.tensor([label]))[0]

    rows = [RowCondition(4, guidance=1.0), RowCondition(4, guidance=0.0), RowCondition(None, guidance=2.0),
            RowCondition(5, guidance=2.5), RowCondition(0, guidance=1.5)]
    out = model.x0(x, sigma, rows)
    torch.testing.assert_close(out[0], direct(0, 4))  # guidance 1: the class's own prediction
    torch.testing.assert_close(out[1], direct(1, null))  # guidance 0: the null class on every channel
    torch.testing.assert_close(out[2], direct(2, null))  # no class: the null class
    with torch.no_grad():
        guided = x[3] + sigma * sit_velocity(net, x[3:4], 1 - sigma, 5, 2.5)[0]
    torch.testing.assert_close(out[3], guided)
    assert not torch.allclose(out[3], direct(3, 5)) and torch.allclose(out[3][3], direct(3, 5)[3])
    # A row does not depend on its batch.
    torch.testing.assert_close(model.x0(x[3:4], sigma, rows[3:4])[0], out[3])
    # Same call, same numbers; a second load of the same folder too.
    assert torch.equal(model.x0(x, sigma, rows), out)
    assert torch.equal(sit.load(folders / "pt", CPU, torch.float32).x0(x, sigma, rows), out)
    with pytest.raises(ValueError, match="outside"):
        model.x0(x[:1], sigma, [RowCondition(null, guidance=1.0)])


def test_guide_all_channels(folders):
    model = sit.load(folders / "pt", CPU, torch.float32, guide_all_channels=True)
    x = torch.randn(1, *model.spec.latent_shape, generator=torch.Generator().manual_seed(4))
    out = model.x0(x, 0.6, [RowCondition(3, guidance=3.0)])
    with torch.no_grad():
        expected = x + 0.6 * sit_velocity(model.net, x, 0.4, 3, 3.0, channels=4)
    torch.testing.assert_close(out, expected)
    assert model.spec.identity != sit.load(folders / "pt", CPU, torch.float32).spec.identity


def test_decode_is_the_vae_of_latents_over_0_18215(folders, model):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folders / "pt" / "vae")
    latents = torch.randn(2, *model.spec.latent_shape, generator=torch.Generator().manual_seed(5))
    images = model.decode(latents)
    with torch.no_grad():
        expected = ((vae.decode(latents / 0.18215).sample + 1) / 2).clamp(0, 1)
    assert images.shape == (2, *model.spec.image_shape)
    torch.testing.assert_close(images, expected)


def copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_broken_folders_fail_at_load(folders, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        sit.load(tmp_path / "nowhere", CPU, torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as empty:
        sit.load(tmp_path / "empty", CPU, torch.float32)
    for name in ("SiT-XL-2-256x256.pt or model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model"):
        assert name in str(empty.value)

    no_vae = copy_folder(folders / "pt", tmp_path / "no_vae")
    (no_vae / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="missing vae/diffusion_pytorch_model.safetensors") as missing:
        sit.load(no_vae, CPU, torch.float32)
    assert "SiT-XL-2" not in str(missing.value)

    deeper = copy_folder(folders / "pt", tmp_path / "deeper")
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps(config | {"depth": 3}))
    with pytest.raises(ConfigError, match=r"missing blocks\.2\.attn\.qkv\.weight"):
        sit.load(deeper, CPU, torch.float32)

    wider = copy_folder(folders / "pt", tmp_path / "wider")
    (wider / "config.json").write_text(json.dumps(config | {"num_classes": 20}))
    wants = r"shape y_embedder\.embedding_table\.weight \(11, 64\) \(config wants \(21, 64\)\)"
    with pytest.raises(ConfigError, match=wants):
        sit.load(wider, CPU, torch.float32)

    xl = copy_folder(folders / "pt", tmp_path / "xl")
    (xl / "config.json").unlink()  # no config: SiT-XL/2, which the tiny checkpoint is not
    with pytest.raises(ConfigError, match="does not match"):
        sit.load(xl, CPU, torch.float32)

    unknown = copy_folder(folders / "pt", tmp_path / "unknown")
    (unknown / "config.json").write_text(json.dumps(config | {"heads": 4}))
    with pytest.raises(ConfigError, match="unknown keys"):
        sit.load(unknown, CPU, torch.float32)

    both = copy_folder(folders / "pt", tmp_path / "both")
    (both / "model.safetensors").write_bytes((folders / "st" / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="keep one"):
        sit.load(both, CPU, torch.float32)

    nested = copy_folder(folders / "pt", tmp_path / "nested")
    torch.save({"model": {}, "args": 1}, nested / "SiT-XL-2-256x256.pt")
    with pytest.raises(ConfigError, match="state dict of tensors"):
        sit.load(nested, CPU, torch.float32)

    garbage = copy_folder(folders / "pt", tmp_path / "garbage")
    (garbage / "SiT-XL-2-256x256.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        sit.load(garbage, CPU, torch.float32)
