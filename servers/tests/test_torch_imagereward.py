"""ImageReward: the released key layout loads strictly, and the score equals a forward written here by hand
from the released tensors (timm's ViT, BLIP's med.py BERT with cross-attention, the linear head and the
standardisation), row by row and without padding."""

from __future__ import annotations

import json
import math
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from noisesearch_server.backend import ConfigError, RequestError
from noisesearch_server.torchmodels.common import RowCondition
from noisesearch_server.torchmodels.imagereward import load_imagereward, save_tiny_imagereward

torch.set_num_threads(1)

CPU = torch.device("cpu")
# The tiny ViT written here independently of the module: width 128 (two 64-wide heads), 2 blocks, 16-pixel
# patches on 32-pixel images, MLP 256.
VIT_WIDTH, VIT_HEADS, VIT_DEPTH, VIT_PATCH, VIT_IMAGE, VIT_MLP = 128, 2, 2, 16, 32, 256
MEAN, STD = 0.16717362830052426, 1.0333394966054072
CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def released_shapes(med: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of ImageReward.pt, by the names BLIP's vit.py / med.py and ImageReward's MLP give them."""
    D, H, I, L = med["hidden_size"], VIT_WIDTH, med["intermediate_size"], med["num_hidden_layers"]
    grid = VIT_IMAGE // VIT_PATCH
    shapes = {
        "blip.visual_encoder.cls_token": (1, 1, H),
        "blip.visual_encoder.pos_embed": (1, 1 + grid * grid, H),
        "blip.visual_encoder.patch_embed.proj.weight": (H, 3, VIT_PATCH, VIT_PATCH),
        "blip.visual_encoder.patch_embed.proj.bias": (H,),
        "blip.visual_encoder.norm.weight": (H,),
        "blip.visual_encoder.norm.bias": (H,),
        "blip.text_encoder.embeddings.word_embeddings.weight": (med["vocab_size"], D),
        "blip.text_encoder.embeddings.position_embeddings.weight": (med["max_position_embeddings"], D),
        "blip.text_encoder.embeddings.LayerNorm.weight": (D,),
        "blip.text_encoder.embeddings.LayerNorm.bias": (D,),
        "blip.text_encoder.embeddings.position_ids": (1, med["max_position_embeddings"]),
        "blip.vision_proj.weight": (256, H),
        "blip.vision_proj.bias": (256,),
        "blip.text_proj.weight": (256, D),
        "blip.text_proj.bias": (256,),
    }
    for i in range(VIT_DEPTH):
        b = f"blip.visual_encoder.blocks.{i}."
        shapes.update({
            b + "norm1.weight": (H,), b + "norm1.bias": (H,),
            b + "attn.qkv.weight": (3 * H, H), b + "attn.qkv.bias": (3 * H,),
            b + "attn.proj.weight": (H, H), b + "attn.proj.bias": (H,),
            b + "norm2.weight": (H,), b + "norm2.bias": (H,),
            b + "mlp.fc1.weight": (VIT_MLP, H), b + "mlp.fc1.bias": (VIT_MLP,),
            b + "mlp.fc2.weight": (H, VIT_MLP), b + "mlp.fc2.bias": (H,),
        })
    for i in range(L):
        b = f"blip.text_encoder.encoder.layer.{i}."
        for attention, source in (("attention", D), ("crossattention", H)):
            shapes.update({
                f"{b}{attention}.self.query.weight": (D, D), f"{b}{attention}.self.query.bias": (D,),
                f"{b}{attention}.self.key.weight": (D, source), f"{b}{attention}.self.key.bias": (D,),
                f"{b}{attention}.self.value.weight": (D, source), f"{b}{attention}.self.value.bias": (D,),
                f"{b}{attention}.output.dense.weight": (D, D), f"{b}{attention}.output.dense.bias": (D,),
                f"{b}{attention}.output.LayerNorm.weight": (D,), f"{b}{attention}.output.LayerNorm.bias": (D,),
            })
        shapes.update({
            b + "intermediate.dense.weight": (I, D), b + "intermediate.dense.bias": (I,),
            b + "output.dense.weight": (D, I), b + "output.dense.bias": (D,),
            b + "output.LayerNorm.weight": (D,), b + "output.LayerNorm.bias": (D,),
        })
    widths = (D, 1024, 128, 64, 16, 1)
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), zip(widths, widths[1:])):
        shapes[f"mlp.layers.{index}.weight"] = (fan_out, fan_in)
        shapes[f"mlp.layers.{index}.bias"] = (fan_out,)
    return shapes


def released_state_dict(med: dict, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in released_shapes(med).items():
        if name.endswith("position_ids"):
            state[name] = torch.arange(shape[1]).expand(shape).clone()
        elif name.endswith("weight") and len(shape) == 1:
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            state[name] = 0.2 * torch.randn(shape, generator=generator)
    return state


def layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[prefix + "weight"], state[prefix + "bias"], eps)


def linear(x, state, prefix):
    return F.linear(x, state[prefix + "weight"], state[prefix + "bias"])


def attend(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v over `heads` heads, for [N, width] tokens of one row."""
    split = lambda t: t.view(t.shape[0], heads, -1).transpose(0, 1)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ v).transpose(0, 1).reshape(q.shape[1], -1)


def reference_vit(state, pixels):
    """timm's VisionTransformer as BLIP's vit.py runs it, for one image [3, S, S] -> [1 + patches, width]."""
    p = "blip.visual_encoder."
    patches = F.conv2d(pixels[None], state[p + "patch_embed.proj.weight"], state[p + "patch_embed.proj.bias"],
                       stride=VIT_PATCH)[0].flatten(1).T
    x = torch.cat([state[p + "cls_token"][0], patches]) + state[p + "pos_embed"][0]
    for i in range(VIT_DEPTH):
        b = f"{p}blocks.{i}."
        h = layer_norm(x, state, b + "norm1.", 1e-6)
        q, k, v = linear(h, state, b + "attn.qkv.").chunk(3, dim=-1)
        x = x + linear(attend(q, k, v, VIT_HEADS), state, b + "attn.proj.")
        h = layer_norm(x, state, b + "norm2.", 1e-6)
        x = x + linear(F.gelu(linear(h, state, b + "mlp.fc1.")), state, b + "mlp.fc2.")
    return layer_norm(x, state, p + "norm.", 1e-6)


def reference_text_cls(state, med, ids, image_tokens):
    """med.py's BertModel in multimodal mode for one unpadded prompt: the [CLS] output."""
    p = "blip.text_encoder."
    heads, eps = med["num_attention_heads"], med["layer_norm_eps"]
    x = state[p + "embeddings.word_embeddings.weight"][ids] + \
        state[p + "embeddings.position_embeddings.weight"][: len(ids)]
    x = layer_norm(x, state, p + "embeddings.LayerNorm.", eps)
    for i in range(med["num_hidden_layers"]):
        b = f"{p}encoder.layer.{i}."
        for attention, source in (("attention", None), ("crossattention", image_tokens)):
            a = f"{b}{attention}."
            keys_from = x if source is None else source
            context = attend(linear(x, state, a + "self.query."), linear(keys_from, state, a + "self.key."),
                             linear(keys_from, state, a + "self.value."), heads)
            x = layer_norm(linear(context, state, a + "output.dense.") + x, state, a + "output.LayerNorm.", eps)
        h = F.gelu(linear(x, state, b + "intermediate.dense."))
        x = layer_norm(linear(h, state, b + "output.dense.") + x, state, b + "output.LayerNorm.", eps)
    return x[0]


def reference_score(state, med, image, ids):
    """ImageReward.score: transforms.Resize(224 -> here 32, bicubic) + CenterCrop + normalise, the encoders,
    the head (no activations) and (r - mean) / std."""
    x = TF.resize(image[None], VIT_IMAGE, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, VIT_IMAGE).clamp(0, 1)
    pixels = ((x - CLIP_MEAN) / CLIP_STD)[0]
    features = reference_text_cls(state, med, ids, reference_vit(state, pixels))
    for index in (0, 2, 4, 6, 7):
        features = linear(features, state, f"mlp.layers.{index}.")
    return float((features[0] - MEAN) / STD)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imagereward")
    save_tiny_imagereward(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def med(tiny_folder):
    return json.loads((tiny_folder / "med_config.json").read_text())


def copy_with_state(tiny_folder, destination, state):
    shutil.copytree(tiny_folder, destination)
    torch.save(state, destination / "ImageReward.pt")
    return destination


PROMPTS = ("a photo of cats", "a big red car on the green tree in the sky", "dog", "")


def test_tiny_folder_has_the_released_layout_and_names(tiny_folder, med):
    assert sorted(p.name for p in tiny_folder.iterdir()) == ["ImageReward.pt", "med_config.json", "tokenizer"]
    assert (tiny_folder / "tokenizer" / "vocab.txt").is_file()
    saved = torch.load(tiny_folder / "ImageReward.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in saved.items()} == released_shapes(med)


def test_released_names_load_and_score_as_the_hand_written_forward(tiny_folder, med, tmp_path):
    state = released_state_dict(med, seed=7)
    verifier = load_imagereward(copy_with_state(tiny_folder, tmp_path / "ir", state), CPU, torch.float32)
    vocab = (tiny_folder / "tokenizer" / "vocab.txt").read_text().split("\n")
    # Uncased wordpieces: "cats" -> cat ##s; every prompt gets [CLS] ... [SEP].
    assert verifier.tokenizer(PROMPTS[0])["input_ids"] == [vocab.index(t) for t in
                                                           ("[CLS]", "a", "photo", "of", "cat", "##s", "[SEP]")]
    # 40 x 49 -> 32 x 39 -> a crop at an odd offset, where rounding conventions differ.
    images = torch.rand(len(PROMPTS), 3, 40, 49, generator=torch.Generator().manual_seed(1))
    scores = verifier.score(images, [RowCondition(prompt=p) for p in PROMPTS], None)
    expected = [reference_score(state, med, images[i], torch.tensor(verifier.tokenizer(p)["input_ids"]))
                for i, p in enumerate(PROMPTS)]
    assert scores.shape == (len(PROMPTS),)
    assert torch.allclose(scores, torch.tensor(expected), rtol=1e-4, atol=1e-4), (scores, expected)
    assert len(set(torch.round(scores, decimals=3).tolist())) == len(PROMPTS)


def test_scores_are_deterministic_and_rows_independent(tiny_folder):
    first = load_imagereward(tiny_folder, CPU, torch.float32)
    second = load_imagereward(tiny_folder, CPU, torch.float32)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    conditions = [RowCondition(prompt=p) for p in PROMPTS[:3]]
    batch = first.score(images, conditions, None)
    assert torch.equal(batch, second.score(images, conditions, None))
    alone = torch.cat([first.score(images[i:i + 1], conditions[i:i + 1], None) for i in range(3)])
    assert torch.allclose(batch, alone, rtol=1e-5, atol=1e-4)
    # Tokens are computed once per prompt.
    assert first.tokens.misses == 3 and first.tokens.hits >= 3


def test_a_row_without_a_prompt_is_refused(tiny_folder):
    verifier = load_imagereward(tiny_folder, CPU, torch.float32)
    with pytest.raises(RequestError, match="rows \\[1\\]"):
        verifier.score(torch.rand(2, 3, 32, 32), [RowCondition(prompt="a cat"), RowCondition(class_label=3)], None)


def test_missing_folder_or_files_name_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_imagereward(tmp_path / "nowhere", CPU, torch.float32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="missing ImageReward.pt, med_config.json, tokenizer/vocab.txt"):
        load_imagereward(tmp_path / "empty", CPU, torch.float32)


def test_incomplete_or_foreign_checkpoint_names_the_keys(tiny_folder, med, tmp_path):
    state = released_state_dict(med, seed=3)
    del state["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"]
    state["blip.itm_head.weight"] = torch.zeros(2, med["hidden_size"])
    state["mlp.layers.6.weight"] = torch.zeros(3, 64)
    with pytest.raises(ConfigError) as error:
        load_imagereward(copy_with_state(tiny_folder, tmp_path / "bad", state), CPU, torch.float32)
    message = str(error.value)
    assert "missing blip.text_encoder.encoder.layer.1.crossattention.self.key.weight" in message
    assert "unexpected blip.itm_head.weight" in message
    assert "mlp.layers.6.weight (3, 64) (want (16, 64))" in message


def test_med_config_without_a_required_key_is_named(tiny_folder, med, tmp_path):
    folder = copy_with_state(tiny_folder, tmp_path / "cfg", released_state_dict(med, seed=0))
    (folder / "med_config.json").write_text(json.dumps({k: v for k, v in med.items() if k != "num_attention_heads"}))
    with pytest.raises(ConfigError, match="lacks num_attention_heads"):
        load_imagereward(folder, CPU, torch.float32)
