"""The CLIP and DINOv2 verifiers on tiny random-weight folders written by save_tiny_* and loaded through the
same loaders a real folder goes through. Expected scores come from transformers' own processors and models
(get_image_features, Dinov2ForImageClassification, ...) with each formula written out by hand here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from noisesearch_server.backend import ConfigError  # noqa: E402
from noisesearch_server.torchmodels import clip_verifiers as cv  # noqa: E402
from noisesearch_server.torchmodels import dino_verifiers as dv  # noqa: E402
from noisesearch_server.torchmodels.common import RowCondition  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTokenizer,
    Dinov2ForImageClassification,
    Dinov2Model,
)

torch.set_num_threads(1)
CPU = torch.device("cpu")
PROMPTS = ("a photo of a cat", "a red dog", "the shark", "a photo of the hen")
# The verifier's features against the independent computation's, in float32.
ATOL = 1e-5

LOADERS = {
    "clip-score": (cv.save_tiny_clip_score, cv.load_clip_score, {}),
    "pickscore": (cv.save_tiny_pickscore, cv.load_pickscore, {}),
    "clip-imagenet": (cv.save_tiny_clip_imagenet, cv.load_clip_imagenet, {}),
    "aesthetic": (cv.save_tiny_aesthetic, cv.load_aesthetic, {}),
    "dino-imagenet": (dv.save_tiny_dino_imagenet, dv.load_dino_imagenet, {}),
    "selfsup": (dv.save_tiny_selfsup, dv.load_selfsup, {"xpred_sigma": 0.4}),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verifiers")
    made = {}
    for seed, (name, (save, _, _)) in enumerate(LOADERS.items()):
        save(root / name, seed=seed)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def verifiers(folders):
    return {name: load(folders[name], CPU, torch.float32, **options) for name, (_, load, options) in LOADERS.items()}


def smooth_images(count: int, height: int = 40, width: int = 52, seed: int = 0) -> torch.Tensor:
    """Natural-looking images: bilinear upsampling of coarse noise, within [0.2, 0.8] so that no resize
    overshoots [0, 1] and the transformers processor's unclamped float path is comparable exactly."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False) * 0.6 + 0.2


def conditions(count: int) -> list[RowCondition]:
    return [RowCondition(class_label=(3 * row) % 10, prompt=PROMPTS[row % len(PROMPTS)]) for row in range(count)]


def processed(folder: Path, images: torch.Tensor) -> torch.Tensor:
    """transformers' own preprocessing of [0, 1] float images (its torch path; do_rescale off since the
    images are already in [0, 1])."""
    processor = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    return processor(images=list(images), do_rescale=False, return_tensors="pt")["pixel_values"]


def clip_reference(folder: Path, images: torch.Tensor, texts: list[str]):
    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=processed(folder, images)).pooler_output
        tokens = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        text = model.get_text_features(**tokens).pooler_output
    return model, image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)


# --- Preprocessing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip-score", "dino-imagenet"])
@pytest.mark.parametrize("size", [(40, 52), (96, 80), (20, 24)])
def test_torch_preprocessing_equals_the_transformers_processor(folders, name, size):
    images = smooth_images(2, *size)
    mine = cv.TorchImageTransform(name, folders[name])(images)
    expected = processed(folders[name], images)
    assert mine.shape == expected.shape
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(40, 52), (20, 24), (256, 300)])
def test_torch_preprocessing_is_within_one_uint8_level_of_pil(folders, size):
    """White noise, where bicubic overshoots most: PIL's resize clamps to uint8 between its horizontal and
    vertical passes and rounds to uint8, and so does ours (in float): one uint8 level after normalisation is
    1/255/std ~ 0.015. A one-pass float resize differs here by up to 0.2."""
    noise = torch.randint(0, 256, (3, *size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    folder = folders["clip-score"]
    pil = CLIPImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    expected = pil(images=[Image.fromarray(noise.permute(1, 2, 0).numpy())], return_tensors="pt")["pixel_values"]
    mine = cv.TorchImageTransform("clip-score", folder)(noise[None].float() / 255)
    torch.testing.assert_close(mine, expected, atol=1.01 / 255 / min(cv.CLIPImageProcessor.image_std), rtol=0)


def test_tokenizer_json_and_vocab_merges_tokenize_alike(folders, tmp_path):
    """The tiny tokenizer is real BPE: whole words come out as single merged tokens, and the fast
    tokenizer.json and the vocab.json + merges.txt pair of the same folder give the same ids."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(folders["clip-score"] / name, tmp_path / name)
    from_json = CLIPTokenizer.from_pretrained(str(folders["clip-score"]), local_files_only=True)
    from_pair = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    text = "A photo depicts a red dog, 3 cats!"
    assert from_json(text)["input_ids"] == from_pair(text)["input_ids"]
    assert from_json.tokenize("photo depicts") == ["photo</w>", "depicts</w>"]


# --- Scores against independent computations -------------------------------------------------------------------


def test_clip_score_is_hessels_formula(tmp_path):
    """Random tiny CLIPs put all images on one side of a text: seed 0 gives negative cosines, seed 3 positive
    ones, so between them both sides of the max(., 0) are checked."""
    images = smooth_images(8)
    rows = conditions(8)
    every = []
    for seed in (0, 3):
        cv.save_tiny_clip_score(tmp_path / str(seed), seed=seed)
        texts = [cv.HESSEL_PREFIX + row.prompt for row in rows]
        _, image, text = clip_reference(tmp_path / str(seed), images, texts)
        expected = 2.5 * (image * text).sum(dim=-1).clamp(min=0)
        verifier = cv.load_clip_score(tmp_path / str(seed), CPU, torch.float32)
        torch.testing.assert_close(verifier.score(images, rows, None), expected, atol=ATOL, rtol=0)
        every.append(expected)
    assert (torch.cat(every) > 0).any() and (torch.cat(every) == 0).any()


def test_pickscore_is_scaled_cosine(folders, verifiers):
    images = smooth_images(8)
    rows = conditions(8)
    model, image, text = clip_reference(folders["pickscore"], images, [row.prompt for row in rows])
    expected = model.logit_scale.exp() * (image * text).sum(dim=-1)
    torch.testing.assert_close(verifiers["pickscore"].score(images, rows, None), expected.detach(), atol=ATOL, rtol=0)


def test_clip_imagenet_is_zero_shot_log_probability(folders, verifiers):
    assert len(cv.OPENAI_IMAGENET_TEMPLATES) == 80 == len(set(cv.OPENAI_IMAGENET_TEMPLATES))
    assert "a photo of a {}." in cv.OPENAI_IMAGENET_TEMPLATES
    folder = folders["clip-imagenet"]
    names = (folder / cv.CLASS_LIST).read_text().splitlines()
    images = smooth_images(6)
    rows = conditions(6)
    texts = [template.format(name) for name in names for template in cv.OPENAI_IMAGENET_TEMPLATES]
    model, image, text = clip_reference(folder, images, texts)
    mean = text.view(len(names), 80, -1).mean(dim=1)
    weights = mean / mean.norm(dim=-1, keepdim=True)
    log_probs = torch.log_softmax(model.logit_scale.exp() * image @ weights.T, dim=-1)
    expected = log_probs[range(6), [row.class_label for row in rows]].detach()
    torch.testing.assert_close(verifiers["clip-imagenet"].score(images, rows, None), expected, atol=ATOL, rtol=0)


def test_aesthetic_is_the_mlp_over_the_normalised_embedding(folders, verifiers):
    folder = folders["aesthetic"]
    state = torch.load(folder / "sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
    images = smooth_images(5)
    _, x, _ = clip_reference(folder, images, ["unused"])
    for index in (0, 2, 4, 6, 7):  # no activations between the layers, as released
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    scores = verifiers["aesthetic"].score(images, [RowCondition()] * 5, None)
    torch.testing.assert_close(scores, x[:, 0], atol=ATOL, rtol=0)


def test_aesthetic_mlp_loads_the_released_key_names_strictly():
    generator = torch.Generator().manual_seed(2)
    shapes = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128), "layers.6": (16, 64),
              "layers.7": (1, 16)}
    state = {}
    for key, (rows, cols) in shapes.items():
        state[f"{key}.weight"] = torch.randn(rows, cols, generator=generator) / cols**0.5
        state[f"{key}.bias"] = torch.randn(rows, generator=generator)
    mlp = cv.AestheticMLP()
    mlp.load_state_dict(state, strict=True)
    mlp.eval()
    x = torch.randn(3, 768, generator=generator)
    expected = x
    for key in shapes:
        expected = expected @ state[f"{key}.weight"].T + state[f"{key}.bias"]
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, atol=1e-4, rtol=1e-5)


def test_aesthetic_reads_a_safetensors_mlp_alike(folders, verifiers, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "aesthetic"
    shutil.copytree(folders["aesthetic"], folder)
    pth = folder / "sac+logos+ava1-l14-linearMSE.pth"
    save_file(torch.load(pth, weights_only=True), str(folder / "aesthetic_mlp.safetensors"))
    pth.unlink()
    images = smooth_images(3)
    again = cv.load_aesthetic(folder, CPU, torch.float32).score(images, [RowCondition()] * 3, None)
    torch.testing.assert_close(again, verifiers["aesthetic"].score(images, [RowCondition()] * 3, None))


def test_dino_imagenet_is_transformers_linear_classifier(folders, verifiers):
    """Dinov2ForImageClassification is transformers' port of DINOv2's one-layer linear evaluation."""
    from safetensors.torch import load_file

    folder = folders["dino-imagenet"]
    head = load_file(str(folder / "linear_head.safetensors"))
    classifier = Dinov2ForImageClassification.from_pretrained(str(folder), local_files_only=True, num_labels=10).eval()
    classifier.classifier.load_state_dict(head)
    images = smooth_images(6)
    rows = conditions(6)
    with torch.no_grad():
        log_probs = classifier(pixel_values=processed(folder, images)).logits.log_softmax(dim=-1)
    expected = log_probs[range(6), [row.class_label for row in rows]]
    torch.testing.assert_close(verifiers["dino-imagenet"].score(images, rows, None), expected, atol=ATOL, rtol=0)


def test_dino_imagenet_reads_the_released_pth_head(folders, verifiers, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "dino"
    shutil.copytree(folders["dino-imagenet"], folder)
    head = folder / "linear_head.safetensors"
    torch.save(dict(load_file(str(head))), folder / "dinov2_vitl14_linear_head.pth")
    head.unlink()
    images, rows = smooth_images(3), conditions(3)
    again = dv.load_dino_imagenet(folder, CPU, torch.float32).score(images, rows, None)
    torch.testing.assert_close(again, verifiers["dino-imagenet"].score(images, rows, None))


def test_selfsup_is_cosine_of_dino_cls_features(folders, verifiers):
    folder = folders["selfsup"]
    model = Dinov2Model.from_pretrained(str(folder), local_files_only=True).eval()
    images, probes = smooth_images(4, seed=3), smooth_images(4, seed=4)
    with torch.no_grad():
        final = model(pixel_values=processed(folder, images)).pooler_output
        probe = model(pixel_values=processed(folder, probes)).pooler_output
    expected = (final * probe).sum(-1) / (final.norm(dim=-1) * probe.norm(dim=-1))
    selfsup = verifiers["selfsup"]
    assert selfsup.spec.kind == "self-supervised" and not selfsup.spec.needs_condition
    assert selfsup.spec.xpred_sigma == 0.4
    torch.testing.assert_close(selfsup.score(images, [RowCondition()] * 4, probes), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(selfsup.score(images, [RowCondition()] * 4, images), torch.ones(4), atol=ATOL, rtol=0)


# --- Batch behaviour -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LOADERS))
def test_scores_are_finite_deterministic_and_row_independent(verifiers, name):
    verifier = verifiers[name]
    images = torch.rand(5, 3, 48, 40, generator=torch.Generator().manual_seed(5))
    probes = torch.rand(5, 3, 48, 40, generator=torch.Generator().manual_seed(6)) if name == "selfsup" else None
    rows = conditions(5)
    scores = verifier.score(images, rows, probes)
    assert scores.shape == (5,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert torch.equal(verifier.score(images, rows, probes), scores)
    for row in range(5):
        probe = None if probes is None else probes[row : row + 1]
        alone = verifier.score(images[row : row + 1], rows[row : row + 1], probe)
        torch.testing.assert_close(alone, scores[row : row + 1], atol=ATOL, rtol=0)
    assert verifier.spec.name == name and verifier.spec.needs_condition == (name not in ("aesthetic", "selfsup"))


def test_a_prompt_is_encoded_once(folders):
    verifier = cv.load_clip_score(folders["clip-score"], CPU, torch.float32)
    images = smooth_images(8)
    verifier.score(images, conditions(8), None)
    assert verifier.prompts.misses == len(PROMPTS)
    verifier.score(images, conditions(8), None)
    assert verifier.prompts.misses == len(PROMPTS) and len(verifier.prompts) == len(PROMPTS)


# --- Failures --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "condition", "message"),
    [
        ("clip-score", RowCondition(class_label=1), "row 1 has no prompt"),
        ("pickscore", RowCondition(), "row 1 has no prompt"),
        ("clip-imagenet", RowCondition(prompt="a cat"), "row 1 has no class label"),
        ("clip-imagenet", RowCondition(class_label=10), "row 1 has class 10, outside the verifier's 10 classes"),
        ("clip-imagenet", RowCondition(class_label=-1), "row 1 has class -1"),
        ("dino-imagenet", RowCondition(), "row 1 has no class label"),
        ("dino-imagenet", RowCondition(class_label=10), "row 1 has class 10"),
    ],
)
def test_a_row_without_what_its_verifier_needs_is_named(verifiers, name, condition, message):
    rows = [RowCondition(class_label=0, prompt="a cat"), condition]
    with pytest.raises(ValueError, match=message):
        verifiers[name].score(smooth_images(2), rows, None)


def test_selfsup_needs_a_probe_per_row(verifiers):
    with pytest.raises(ValueError, match="one decoded x-prediction"):
        verifiers["selfsup"].score(smooth_images(2), [RowCondition()] * 2, None)
    with pytest.raises(ValueError, match="got 1 for 2 images"):
        verifiers["selfsup"].score(smooth_images(2), [RowCondition()] * 2, smooth_images(1))


@pytest.mark.parametrize("name", list(LOADERS))
def test_missing_folder_is_a_config_error(tmp_path, name):
    _, load, options = LOADERS[name]
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "absent", CPU, torch.float32, **options)


@pytest.mark.parametrize(
    ("name", "removed", "named"),
    [
        ("clip-score", ["model.safetensors", "tokenizer.json", "merges.txt"],
         "missing model.safetensors or model.safetensors.index.json or pytorch_model.bin, tokenizer.json or merges.txt"),
        ("pickscore", ["preprocessor_config.json"], "missing preprocessor_config.json"),
        ("clip-imagenet", ["imagenet_classes.txt"], "missing imagenet_classes.txt"),
        ("aesthetic", ["sac+logos+ava1-l14-linearMSE.pth"],
         "missing sac\\+logos\\+ava1-l14-linearMSE.pth or aesthetic_mlp.safetensors"),
        ("dino-imagenet", ["linear_head.safetensors", "config.json"], "missing config.json, linear_head.safetensors"),
        ("selfsup", ["model.safetensors"], "missing model.safetensors"),
    ],
)
def test_incomplete_folder_names_everything_missing(folders, tmp_path, name, removed, named):
    folder = tmp_path / name
    shutil.copytree(folders[name], folder)
    for file in removed:
        (folder / file).unlink()
    _, load, options = LOADERS[name]
    with pytest.raises(ConfigError, match=named):
        load(folder, CPU, torch.float32, **options)


def test_mismatched_heads_and_options_are_config_errors(folders, tmp_path):
    from safetensors.torch import save_file

    aesthetic = tmp_path / "aesthetic"
    shutil.copytree(folders["aesthetic"], aesthetic)
    torch.save(cv.AestheticMLP(768).state_dict(), aesthetic / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(ConfigError, match="takes 768-d embeddings but the CLIP model .* makes 32-d"):
        cv.load_aesthetic(aesthetic, CPU, torch.float32)
    torch.save({"linear.weight": torch.zeros(1, 768)}, aesthetic / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(ConfigError, match="not an aesthetic-predictor state dict"):
        cv.load_aesthetic(aesthetic, CPU, torch.float32)

    dino = tmp_path / "dino"
    shutil.copytree(folders["dino-imagenet"], dino)
    # A four-layer head ("linear4"): (1 + 4) * hidden inputs.
    save_file({"weight": torch.zeros(10, 5 * 32), "bias": torch.zeros(10)}, str(dino / "linear_head.safetensors"))
    with pytest.raises(ConfigError, match=r"needs weight \[classes, 64\]"):
        dv.load_dino_imagenet(dino, CPU, torch.float32)

    with pytest.raises(ConfigError, match="templates 'many'"):
        cv.load_clip_imagenet(folders["clip-imagenet"], CPU, torch.float32, templates="many")
    with pytest.raises(ConfigError, match="xpred_sigma must be positive"):
        dv.load_selfsup(folders["selfsup"], CPU, torch.float32, xpred_sigma=0.0)
    with pytest.raises(ConfigError, match="holds a 'clip' model"):
        dv.load_selfsup(folders["clip-score"].parent / "clip-score", CPU, torch.float32, xpred_sigma=0.4)
