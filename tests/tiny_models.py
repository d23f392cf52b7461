"""Tiny models of the real architectures, saved exactly as the production loaders read them.

Random weights, seconds to build, no network. Reuse them in any test that needs a loadable CLIP or
DINOv2 (point CLIP_PRETRAINED / DINO_MODEL at the returned folder).
"""

import json
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# ViT-B-32's layout (QuickGELU like the openai tag), shrunk: 64x64 input, 2x2 patches of 32
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_PREPROCESS = {
    "size": 64, "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD,
    "interpolation": "bicubic", "resize_mode": "shortest",
}


def build_tiny_clip(folder, seed: int = 0) -> Path:
    """An open_clip `CLIP` folder for the `local-dir:` loader: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**TINY_CLIP_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": TINY_CLIP_PREPROCESS}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return folder


def build_tiny_dino(folder, seed: int = 0) -> Path:
    """A `save_pretrained` Dinov2Model folder plus the preprocessor_config.json facebook/dinov2-base ships."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = Path(folder)
    torch.manual_seed(seed)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=518, patch_size=14,  # the real 37x37 position grid, interpolated to 16x16 at 224 px
    )
    Dinov2Model(config).eval().save_pretrained(folder)
    # the same settings as the real repo's BitImageProcessor: shortest edge 256 bicubic, crop 224, ImageNet stats
    BitImageProcessor(
        do_resize=True, size={"shortest_edge": 256}, resample=3, do_center_crop=True,
        crop_size={"height": 224, "width": 224}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True,
    ).save_pretrained(folder)
    return folder


def build_tiny_blip(folder) -> Path:
    """A BLIP captioner of the real architecture (hidden size 32, one layer, 64 px images), random weights.

    Saved exactly as `save_pretrained` lays out Salesforce/blip-image-captioning-*: config.json +
    model.safetensors + processor/tokenizer files. The tokenizer copies the real one's special tokens:
    BERT's [PAD]/[UNK]/[CLS]/[SEP]/[MASK] plus "[DEC]" as bos (generation starts from it) and "[ENC]";
    the text config's bos/sep/pad ids point at them, since BLIP's generate stops at sep_token_id.
    """
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = ("a an the of on in with and at near photo picture man woman person cat dog table street sky "
             "red blue green white black sitting standing holding small large . ,").split()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # transformers 5's BertTokenizer takes the vocabulary as `vocab` (a dict or a vocab.txt path);
    # a `vocab_file=` keyword is silently ignored there and leaves a 5-token vocabulary
    tokenizer = BertTokenizer(vocab=str(vocab), bos_token="[DEC]", additional_special_tokens=["[ENC]"])
    assert tokenizer.convert_tokens_to_ids("cat") == 5 + words.index("cat"), "vocabulary not loaded"
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id,
                sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.sep_token_id, initializer_range=0.2)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=64, patch_size=16, initializer_range=0.2)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32,
                        initializer_range=0.2)  # 0.2, not 0.02: larger random weights give varied, non-empty captions
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_random_person_detector(path) -> Path:
    """torchvision's Faster R-CNN ResNet50-FPN with random weights, its "person" logit biased up so that
    detections exist, saved as the state dict the production loader reads."""
    import torch
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    state["roi_heads.box_predictor.cls_score.bias"][1] = 5.0
    torch.save(state, path)
    return Path(path)
