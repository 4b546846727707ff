"""Denoiser throughput through the model server versus a bare torch loop, for full-size FLUX.1-dev and SiT-XL/2
with random weights (nothing is downloaded), plus one CLIP ViT-L/14 verifier's images per second.

    python scripts/bench_gpu.py            # CUDA, bf16, full-size models; under 5 minutes on one H200
    python scripts/bench_gpu.py --smoke    # CPU, float32, the project's tiny models: checks the whole flow

It needs the servers' torch extra (torch, diffusers, transformers; servers/requirements-torch.txt) and finds
noisesearch_server in servers/ itself. --flux-batches 1,4 keeps FLUX's largest batch out if time is short.

For each model and batch: candidate-NFE/s through DiffusionBackend.evaluate (a short Euler solve per candidate:
numpy float64 states, TorchModel's host<->device copies, the engine's batching) and through a bare loop calling
the same network on device-resident tensors; their ratio (the server's overhead; target >= 0.9); the server
run's peak device memory (the resident CLIP verifier's 0.8 GB included); and clip-score's images/s on random
pictures of the model's image size (what the VAE would decode; the VAE is not built). FLUX's text encoders are
not built either: its prompt cache holds random embeddings of the released shapes (T5 512 x 4096, pooled CLIP
768), so every x0 runs the real path. The networks are built in memory around the project's denoiser classes
(flux.FluxDenoiser, sit.SiTDenoiser); with --smoke their configs come from tiny folders written by
registry.save_tiny, and each in-memory spec is checked against the one the module's own loader builds from that
folder. The CLIP verifier loads through load_clip_score from a folder: a random ViT-L/14 written to a temp folder
(0.8 GB) or the tiny one.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "servers"))

import torch  # noqa: E402

from noisesearch_server.backend import EvaluateRequest, ModelSpec, RequestError, RowCondition, Rows  # noqa: E402
from noisesearch_server.diffusion_backend import DiffusionBackend  # noqa: E402
from noisesearch_server.lineage import Candidate, Condition, Lineage, NoiseRecipe, Solve  # noqa: E402
from noisesearch_server.schedules import solve_sigmas  # noqa: E402
from noisesearch_server.torchmodels import clip_verifiers, flux, registry, sit  # noqa: E402
from noisesearch_server.torchmodels.adapter import TorchModel, TorchVerifierAdapter  # noqa: E402

PROMPT = "a photo of a red car"
# black-forest-labs/FLUX.1-dev transformer/config.json and scheduler/scheduler_config.json.
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_DEV_SCHEDULER = dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15, shift=3.0,
                          use_dynamic_shifting=True)
FLUX_VAE_FACTOR = 8
SIT_VAE_FACTOR = 8


@dataclass(frozen=True)
class Mode:
    device: torch.device
    dtype: torch.dtype
    flux_resolution: int
    flux_steps: int
    sit_steps: int
    min_seconds: float


FULL = Mode(torch.device("cuda"), torch.bfloat16, 1024, flux_steps=4, sit_steps=25, min_seconds=3.0)
SMOKE = Mode(torch.device("cpu"), torch.float32, 32, flux_steps=4, sit_steps=4, min_seconds=0.5)


@dataclass
class Subject:
    label: str
    model: TorchModel
    steps: int
    condition: Callable[[int], Condition]
    # (batch, steps) -> NFEs: an Euler solve from sigma_max to 0 calling the network directly on device tensors.
    bare: Callable[[int, int], int]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_environment(smoke: bool) -> str:
    """Prints what the driver and torch say; a CUDA run that cannot work stops here, saying why."""
    smi = shutil.which("nvidia-smi")
    output = subprocess.run([smi], capture_output=True, text=True, timeout=60).stdout if smi else ""
    print(output or "nvidia-smi: not found")
    available = torch.cuda.is_available()
    print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}; torch.cuda.is_available() = {available}")
    if smoke:
        return "CPU (smoke run)"
    driver_cuda = re.search(r"CUDA Version:\s*([\d.]+)", output)
    if not available:
        driver = (f"the driver supports CUDA up to {driver_cuda.group(1)}" if driver_cuda
                  else "nvidia-smi found no driver")
        sys.exit(f"bench_gpu: torch {torch.__version__} (built for CUDA {torch.version.cuda}) cannot use the GPU: "
                 f"{driver}; use a torch build for a CUDA version the driver supports")
    try:
        (torch.ones(2, device="cuda", dtype=torch.bfloat16) @ torch.ones(2, device="cuda", dtype=torch.bfloat16)).item()
    except RuntimeError as error:
        sys.exit(f"bench_gpu: CUDA is visible but a bf16 product failed: {error}")
    return torch.cuda.get_device_name()


def count(module: torch.nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def flux_subject(title: str, config: dict, mode: Mode) -> Subject:
    """The FLUX transformer from `config` with random weights, wrapped in the project's FluxDenoiser; no text
    encoders or VAE: the one prompt's embeddings are random tensors put into the denoiser's prompt cache."""
    device, dtype = mode.device, mode.dtype
    with device:
        transformer = flux.FluxTransformer2DModel.from_config(config)
    transformer = transformer.to(dtype).eval().requires_grad_(False)
    channels, side = transformer.config.in_channels // 4, mode.flux_resolution // FLUX_VAE_FACTOR
    spec = ModelSpec(
        name=flux.WHAT, latent_shape=(channels, side, side), sigma_min=flux.SIGMA_MIN, sigma_max=1.0, rho=1.0,
        num_classes=0, default_solver="euler", default_steps=flux.DEFAULT_STEPS,
        default_guidance_scale=flux.DEFAULT_GUIDANCE, identity=f"bench-flux-{mode.flux_resolution}", process="flow",
        schedule="shifted", schedule_shift=flux.schedule_shift(FLUX_DEV_SCHEDULER, (side // 2) ** 2),
        takes_prompts=True, image_shape=(3, mode.flux_resolution, mode.flux_resolution))
    length = flux.DEFAULT_MAX_SEQUENCE_LENGTH
    denoiser = flux.FluxDenoiser(
        transformer=transformer, vae=None, clip_tokenizer=None, clip=None, t5_tokenizer=None, t5=None, spec=spec,
        device=device, dtype=dtype, max_sequence_length=length, prompt_cache_bytes=flux.DEFAULT_PROMPT_CACHE_BYTES)
    tokens = torch.randn(length, transformer.config.joint_attention_dim, device=device, dtype=dtype)
    pooled = torch.randn(transformer.config.pooled_projection_dim, device=device, dtype=dtype)
    denoiser.prompts.get_or_make(PROMPT, lambda: (tokens, pooled))
    img_ids = flux.image_ids(side, side).to(device, dtype)
    txt_ids = torch.zeros(length, 3, device=device, dtype=dtype)

    @torch.inference_mode()
    def bare(batch: int, steps: int) -> int:
        x = flux.pack(torch.randn(batch, *spec.latent_shape, device=device))
        guidance = torch.full((batch,), flux.DEFAULT_GUIDANCE, device=device)
        for sigma, sigma_next in itertools.pairwise(solve_sigmas(spec, 1.0, 0.0, steps).tolist()):
            velocity = transformer(
                hidden_states=x.to(dtype), timestep=torch.full((batch,), sigma, device=device, dtype=dtype),
                guidance=guidance, pooled_projections=pooled.expand(batch, -1),
                encoder_hidden_states=tokens.expand(batch, -1, -1), txt_ids=txt_ids, img_ids=img_ids,
                return_dict=False)[0]
            x = x + (sigma_next - sigma) * velocity.float()
        return batch * steps

    return Subject(f"{title} ({count(transformer)}), {mode.flux_resolution} px", TorchModel(denoiser),
                   mode.flux_steps, lambda seed: Condition(prompt=PROMPT), bare)


def sit_subject(title: str, config: sit.SiTConfig, vae_factor: int, mode: Mode) -> Subject:
    """SiT from `config` with random weights in the project's SiTDenoiser (no VAE), sampled with the model's
    default guidance (1.5), so each NFE is one forward over twice the batch, as the server runs it."""
    device, dtype = mode.device, mode.dtype
    with device:
        net = sit.SiT(config)
    net = net.to(dtype).eval().requires_grad_(False)
    side = config.input_size
    spec = ModelSpec(
        name=config.name, latent_shape=(sit.LATENT_CHANNELS, side, side), sigma_min=1e-3, sigma_max=1.0, rho=1.0,
        num_classes=config.num_classes, default_solver="heun", default_steps=125, default_guidance_scale=1.5,
        identity=f"bench-{config.name}", process="flow", schedule="shifted", schedule_shift=1.0,
        takes_prompts=False, image_shape=(3, side * vae_factor, side * vae_factor))
    denoiser = sit.SiTDenoiser(net, None, spec, device, dtype, guide_all_channels=False)
    null = config.num_classes

    @torch.inference_mode()
    def bare(batch: int, steps: int) -> int:
        x = torch.randn(batch, *spec.latent_shape, device=device)
        labels = torch.tensor([i % null for i in range(batch)] + [null] * batch, device=device)
        for sigma, sigma_next in itertools.pairwise(solve_sigmas(spec, 1.0, 0.0, steps).tolist()):
            times = torch.full((2 * batch,), 1.0 - sigma, device=device)
            v_class, v_null = net(torch.cat([x, x]).to(dtype), times, labels).float().chunk(2)
            velocity = v_null + spec.default_guidance_scale * (v_class - v_null)
            # Engine coordinates: x0 = x + sigma v, so the Euler direction (x - x0) / sigma is -v.
            x = x - (sigma_next - sigma) * velocity
        return batch * steps

    return Subject(f"{title} ({count(net)}), {side * vae_factor} px",
                   TorchModel(denoiser), mode.sit_steps, lambda seed: Condition(class_label=seed % null), bare)


def save_clip_vit_l14(folder: Path, device: torch.device) -> None:
    """A random CLIP ViT-L/14 (openai/clip-vit-large-patch14's sizes) in a CLIP folder's layout, in bf16. Its
    tokenizer is the tests' tiny BPE: the prompt is encoded once and cached, so only the image tower is timed."""
    vocab = clip_verifiers.tiny_tokenizer_files(folder)
    config = clip_verifiers.CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1),
        vision_config=dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                           num_hidden_layers=24, num_attention_heads=16),
        projection_dim=768)
    with device:
        model = clip_verifiers.CLIPModel(config)
    model.to(torch.bfloat16).save_pretrained(str(folder))
    # The released processor: shortest edge 224, 224 center crop, bicubic, CLIP's mean and std.
    clip_verifiers.CLIPImageProcessor().save_pretrained(str(folder))


def rate(run: Callable[[], int], warmup: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Items per second of `run` (which returns how many it did), repeated for at least min_seconds."""
    warmup()
    synchronize(device)
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < min_seconds or not done:
        done += run()
        synchronize(device)
    return done / elapsed


def measure(subject: Subject, verifier: TorchVerifierAdapter, batch: int, mode: Mode,
            seeds: itertools.count) -> dict:
    spec, device = subject.model.spec, mode.device
    backend = DiffusionBackend(subject.model, [], max_batch=batch, max_concurrency=1, cache_bytes=0)

    def server(steps: int) -> int:
        solve = Solve(spec.sigma_max, 0.0, "euler", steps, spec.schedule)
        candidates = tuple(Candidate(str(seed), Lineage(NoiseRecipe(seed), (solve,)), subject.condition(seed))
                           for seed in itertools.islice(seeds, batch))
        [response] = backend.evaluate([EvaluateRequest(spec.name, candidates, ())])
        if isinstance(response, RequestError):
            sys.exit(f"bench_gpu: the server refused the request: {response.message}")
        failed = [result.error for result in response.results if result.error]
        if failed:
            sys.exit(f"bench_gpu: a candidate failed: {failed[0].message}")
        return sum(result.nfe_executed for result in response.results)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    served = rate(lambda: server(subject.steps), lambda: server(1), device, mode.min_seconds)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    bare = rate(lambda: subject.bare(batch, subject.steps), lambda: subject.bare(batch, 1), device, mode.min_seconds)
    images = torch.rand(batch, *spec.image_shape, device=device)
    rows = Rows([RowCondition(prompt=PROMPT)] * batch)
    scored = rate(lambda: len(verifier.score(images, rows, None)), lambda: verifier.score(images, rows, None),
                  device, mode.min_seconds / 2)
    return dict(model=subject.label, steps=subject.steps, batch=batch, server=served, bare=bare, peak=peak,
                verifier=scored)


def table(rows: list[dict]) -> str:
    lines = ["| model | Euler steps | batch | server NFE/s | bare loop NFE/s | server / bare | peak GiB "
             "| clip-score img/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        peak = "-" if row["peak"] is None else f"{row['peak']:.1f}"
        lines.append(f"| {row['model']} | {row['steps']} | {row['batch']} | {row['server']:.2f} | "
                     f"{row['bare']:.2f} | {row['server'] / row['bare']:.2f} | {peak} | {row['verifier']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, float32, tiny models from save_tiny folders")
    parser.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes (default 1,4,16)")
    parser.add_argument("--flux-batches", help="FLUX's batch sizes, when they must differ (default: --batches)")
    args = parser.parse_args()
    mode = SMOKE if args.smoke else FULL
    if args.smoke:
        # The smoke run shares a small CI-sized machine: one thread keeps it polite and its timing steady.
        torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    flux_batches = [int(b) for b in args.flux_batches.split(",")] if args.flux_batches else batches
    started = time.perf_counter()
    device_name = check_environment(args.smoke)
    print(f"device: {device_name}; dtype {str(mode.dtype).removeprefix('torch.')}; random weights; "
          f"FLUX text encoders and both VAEs not built (random prompt embeddings of the released shapes)", flush=True)
    rows: list[dict] = []
    seeds = itertools.count()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as scratch:
        root = Path(scratch)
        if args.smoke:
            for name in ("flux", "sit", "clip-score"):
                registry.save_tiny(name, root / name)
            flux_config = dict(flux.FluxTransformer2DModel.load_config(str(root / "flux" / "transformer")))
            sit_config = sit.SiTConfig.read(root / "sit")
            sit_vae = json.loads((root / "sit" / "vae" / "config.json").read_text())
            sit_factor = 2 ** (len(sit_vae["block_out_channels"]) - 1)
        else:
            save_clip_vit_l14(root / "clip-score", mode.device)
            flux_config, sit_config, sit_factor = FLUX_DEV, sit.SiTConfig(), SIT_VAE_FACTOR
        verifier = TorchVerifierAdapter(
            clip_verifiers.load_clip_score(root / "clip-score", mode.device, mode.dtype), "prompt")
        print(f"clip-score verifier loaded ({time.perf_counter() - started:.0f} s)", flush=True)

        flux_title, sit_title = ("tiny FLUX", "tiny SiT") if args.smoke else ("FLUX.1-dev", "SiT-XL/2")
        builders = [("flux", lambda: flux_subject(flux_title, flux_config, mode), flux_batches),
                    ("sit", lambda: sit_subject(sit_title, sit_config, sit_factor, mode), batches)]
        for name, build, sizes in builders:
            subject = build()
            if args.smoke:
                # The hand-built spec must be what the module's loader makes of the same architecture.
                resolution = mode.flux_resolution if name == "flux" else None
                loaded = registry.load_model(name, root / name, "cpu", "float32", resolution)
                if replace(loaded.spec, identity="") != replace(subject.model.spec, identity=""):
                    sys.exit(f"bench_gpu: in-memory spec {subject.model.spec} differs from the loader's {loaded.spec}")
            print(f"{subject.label}: built ({time.perf_counter() - started:.0f} s)", flush=True)
            for batch in sizes:
                rows.append(measure(subject, verifier, batch, mode, seeds))
                row = rows[-1]
                print(f"  batch {batch}: server {row['server']:.2f} NFE/s, bare {row['bare']:.2f} NFE/s, ratio "
                      f"{row['server'] / row['bare']:.2f}, clip-score {row['verifier']:.1f} img/s "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
            del subject
            gc.collect()
            if mode.device.type == "cuda":
                torch.cuda.empty_cache()
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
