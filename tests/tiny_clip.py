"""A tiny randomly initialised CLIP (two towers) saved the way transformers saves a real one, and
exported by the real pipeline.

No pretrained weights can be fetched here, so the model is random, but everything around the
weights is real: the CLIP BPE vocabulary (from the `open-clip-torch` wheel, installed without its
dependencies), a CLIPTokenizerFast with a tokenizer.json, a CLIPImageProcessor with its
preprocessor_config.json (224 px, bicubic shortest-edge resize, centre crop, CLIP mean/std), 77
text positions and a patch-32 ViT at 224 px: the real ViT-B/32 geometry, only narrow and shallow.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path

# ViT-B/32 as OpenAI trained it is hidden 512/768, 12 layers; this keeps the shapes (77 tokens,
# 224 px, 32 px patches) and shrinks the widths so an export takes seconds.
TINY_CLIP = {"text_hidden": 32, "vision_hidden": 32, "layers": 2, "heads": 4, "intermediate": 64, "projection": 24}
# openai/clip-vit-base-patch32's shape (151 M parameters), for a one-off measurement with random weights.
VIT_B32 = {"text_hidden": 512, "text_heads": 8, "text_intermediate": 2048, "vision_hidden": 768, "layers": 12,
           "heads": 12, "intermediate": 3072, "projection": 512}
# The first 48,894 merges of the BPE file make CLIP's 49,408-token vocabulary.
_MERGES = 49152 - 256 - 2


def clip_bpe_file() -> Path:
    """open_clip's BPE merges file, found without importing open_clip (its dependencies are absent)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open-clip-torch is not installed (pip install --no-deps open-clip-torch)")
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which CLIP's BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_clip_vocabulary(folder: Path) -> tuple[Path, Path]:
    """vocab.json and merges.txt of OpenAI's CLIP tokenizer, built from the BPE file."""
    lines = gzip.open(clip_bpe_file()).read().decode("utf-8").split("\n")
    merges = lines[1:_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def build_tiny_clip(folder: Path, *, seed: int = 0, image_processor: dict | None = None,
                    shape: dict[str, int] = TINY_CLIP) -> Path:
    """Save a seeded random CLIPModel, its CLIPTokenizerFast and CLIPImageProcessor in `folder`.

    `image_processor` overrides CLIPImageProcessor's arguments (e.g. another crop size); `shape`
    is TINY_CLIP or VIT_B32."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizerFast

    vision = {"num_hidden_layers": shape["layers"], "num_attention_heads": shape["heads"],
              "intermediate_size": shape["intermediate"]}
    text = {**vision, "num_attention_heads": shape.get("text_heads", shape["heads"]),
            "intermediate_size": shape.get("text_intermediate", shape["intermediate"])}
    config = CLIPConfig(
        text_config={"hidden_size": shape["text_hidden"], "max_position_embeddings": 77, "vocab_size": 49408, **text},
        vision_config={"hidden_size": shape["vision_hidden"], "image_size": 224, "patch_size": 32, **vision},
        projection_dim=shape["projection"],
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPModel(config).eval().save_pretrained(folder)
    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as tmp:
        vocab_file, merges_file = write_clip_vocabulary(Path(tmp))
        tokenizer = CLIPTokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file), model_max_length=77)
        tokenizer.save_pretrained(folder)
    CLIPImageProcessor(**(image_processor or {})).save_pretrained(folder)
    return folder


def export_tiny_clip(models_dir: Path, name: str, *, seed: int = 0, recipe: str = "fp32",
                     vision_recipe: str = "fp32", source_dir: Path | None = None, **kwargs: object) -> Path:
    """Build a tiny CLIP and export it into models_dir/name with the real pipeline (what
    `python -m export <folder> --name <name>` runs). The source is built in a temporary folder,
    or in `source_dir` (kept, for tests that compare with the torch model)."""
    from export.pipeline import export_model

    with tempfile.TemporaryDirectory(prefix="tiny-clip-src-") as tmp:
        source = build_tiny_clip(source_dir or Path(tmp) / name, seed=seed)
        return export_model(source, name, models_dir, recipe=recipe, vision_recipe=vision_recipe, force=True,
                            **kwargs)  # type: ignore[arg-type]
