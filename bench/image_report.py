"""RESULTS-images.md from an image run's samples (bench/images.py): medians with min and max over
repeats, ratios taken within a repeat, the issue-10 target printed as met or not (never asserted)."""
from __future__ import annotations

from .image_raw import raw_label
from .image_setup import KINDS
from .report import (_cols, _errors, _mb, _met, _num, _table, _values, limit_key, machine_lines, notes_lines,
                     paired, section)
from .runner import Results
from .stats import Summary, summarize

TARGET_SERVED = 0.8  # served images/s with decoding >= 0.8 x the raw vision-tower limit (640x480 JPEG)


def _served_label(key: str) -> str:
    transport, kind, shape, server = key.split("/")
    per_request, clients = shape[1:].split("_c")
    name = {"es": "REST Elasticsearch", "openai": "REST OpenAI", "grpc": "gRPC"}[transport]
    draft = " (--image-draft)" if server == "draft" else ""
    return f"{name}, {KINDS[kind].label}{draft}, {per_request} image(s)/request x {clients} clients"


def _served_keys(results: Results) -> list[str]:
    return [k for k in results.samples if k.split("/")[0] in ("es", "openai", "grpc")]


def _fmt(summary: Summary | None, digits: int = 1) -> str:
    return summary.fmt(digits) if summary else "–"


def render(results: Results) -> str:
    meta, settings, model = results.meta, results.meta["settings"], results.meta["model"]
    cpus = settings["cpus"]
    out = ["# ortembed image benchmark results (issue 10)", ""]
    if meta.get("quick"):
        out += ["> **QUICK RUN — NOISY.** One repeat and few images on a shared machine: for checking the",
                "> harness, not for quoting. `python -m bench.images` produces the real numbers.", ""]
    out += [f"`{meta['command']}` — started {meta['started']}, finished {meta.get('finished', '?')}, "
            f"measuring took {_num(meta.get('run_seconds'), 0)} s.", "",
            "Every number is the **median of the repeats, with min and max**. Repeats were taken round-robin "
            "(repeat r of every scenario before repeat r+1 of any), and every ratio is taken between two "
            "measurements of the same repeat, then summarized.", ""]
    out += machine_lines(meta)
    out += ["## Settings", "",
            f"- Model: `{model['folder']}`: a seeded, randomly initialised `CLIPModel` at ViT-B/32 geometry "
            "(tests/tiny_clip.py `VIT_B32`; no pretrained weights can be downloaded here, so the speed is the "
            "real model's and the vectors mean nothing), exported by `export.pipeline.export_model` with its "
            "default recipes",
            f"- Towers (from manifest.json): text `{model['text_recipe']}` ({model['text_mb']:.0f} MB), vision "
            f"`{model['vision_recipe']}` ({model['vision_file']}, {model['vision_mb']:.0f} MB); "
            f"{model['dimensions']} dimensions",
            "- Images (generated: gradient, shapes and noise, so they compress like photos): "
            + "; ".join(f"{v['label']}: {v['distinct']} distinct, {v['kb_mean']:.0f} KB on average"
                        for v in meta["images"].values()),
            f"- Threads: {cpus} for the raw session and each server; repeats: {settings['repeats']}; "
            f"{settings['raw_images']} tensors per raw measurement, {settings['served_images']} images per served "
            f"640x480 measurement, {settings['big_images']} per 4000x3000 one",
            f"- Texts for the text tower: {settings['texts']}", ""]
    for label, info in results.servers.items():
        out.append(f"- Server [{label}]: flags `{' '.join(info['args']) or '(defaults)'}` (images per call: "
                   f"--max-image-batch {settings['max_image_batch']}); cosine of one served image vector vs the raw session's "
                   f"{_num(info.get('min_cosine_vs_raw'), 5)}" + (f"; gRPC: {info['grpc']}" if info.get("grpc") else ""))
    out.append("")

    limit = limit_key(results)
    limit_summary = summarize(_values(results, limit, "per_second")) if limit else None

    # -- target ----------------------------------------------------------------------------------
    rows = []
    for key in _served_keys(results):
        if "/jpeg640/" in key and key.endswith("/default") and limit:
            value = summarize(_values(results, key, "per_second"))
            ratio = paired(results, key, limit)
            rows.append([_served_label(key), f"{_num(value and value.median)} img/s", _fmt(ratio, 2),
                         f">= {TARGET_SERVED} x limit", _met(ratio and ratio.median, TARGET_SERVED)])
    out += ["## Target (issue 10): served images/s with decoding >= 0.8 x the raw vision-tower limit", "",
            "640x480 JPEGs, the server with default flags. Printed, not asserted. Ratio: per repeat, to the raw "
            "limit measured in the same repeat.", ""]
    out += _table(["scenario", "served (median)", "x limit", "target", "met"], rows) + [""]

    # -- raw -------------------------------------------------------------------------------------
    raw_rows = [[raw_label(k, cpus) + (" **(limit)**" if k == limit else ""),
                 *_cols(summarize(_values(results, k, "per_second"))),
                 _num(1000 * cpus / s.median if (s := summarize(_values(results, k, "per_second"))) else None, 1),
                 _errors(results, k)]
                for k in results.samples if k.startswith("raw/")]
    out += section("Raw vision tower: a bare onnxruntime session (the limit)",
                   "The exported vision graph in a plain `InferenceSession`, on pixel tensors prepared before the "
                   "clock (the server's preprocessing of the 640x480 JPEGs), stacking and L2 normalisation included.",
                   ["configuration", "img/s median", "min", "max", "core-ms per image", "errors"], raw_rows,
                   ["", f"**Limit: {limit_summary.median:.1f} images/s** ({raw_label(limit, cpus)})."]
                   if limit_summary and limit else [])

    # -- decode vs model -------------------------------------------------------------------------
    rows = []
    core_ms = (lambda d, lim: d / (1000 * cpus / lim))
    ceiling = (lambda d, lim: (1000 * cpus / lim) / (1000 * cpus / lim + d))
    for kind, about in KINDS.items():
        exact, draft = f"decode/{kind}/exact", f"decode/{kind}/draft"
        if exact not in results.samples:
            continue
        cells = [about.label, _num(meta["images"][kind]["kb_mean"], 0)]
        for key in (exact, draft):
            cells.append(_fmt(summarize(_values(results, key, "ms_per_image")), 2))
        for key in (exact, draft):
            cells.append(_fmt(paired(results, key, limit, "ms_per_image", "per_second", core_ms), 2) if limit else "–")
        cells.append(_fmt(paired(results, exact, limit, "ms_per_image", "per_second", ceiling), 2) if limit else "–")
        rows.append(cells)
    model_ms = summarize(1000 * cpus / v for v in _values(results, limit, "per_second")) if limit else None
    out += ["## Decoding vs model time per image", "",
            "Decode = the server's own preprocessing (`service/engine/images.py` `preprocess`: header checks, "
            "decode, EXIF, RGB, bicubic resize, crop, normalise) on one thread, ms per image, without and with "
            "JPEG draft mode (`--image-draft`). Model = core-milliseconds per image at the raw limit "
            f"({_fmt(model_ms, 1)} ms = {cpus} cores / limit). The server decodes in the worker that runs the "
            "session call, under the same CPU budget, so decode / model is what decoding costs, and model / "
            "(model + decode) is the most a server can serve as a share of the limit.", ""]
    out += _table(["images", "KB", "decode ms", "decode ms (draft)", "decode / model", "(draft) decode / model",
                   "ceiling x limit"], rows) + [""]

    # -- served ----------------------------------------------------------------------------------
    rows = []
    for key in _served_keys(results):
        samples = results.samples[key]
        rows.append([_served_label(key), *_cols(summarize(_values(results, key, "per_second"))),
                     _fmt(paired(results, key, limit), 2) if limit else "–",
                     *[_num(s and s.median, 2) for s in (summarize(_values(results, key, n)) for n in
                                                         ("server_cores", "client_cores", "seqs_per_call"))],
                     _num(max((s.get("rss_peak_mb") or 0 for s in samples), default=None), 0), _errors(results, key)])
    out += ["## Served images/s, decoding included", "",
            "Closed-loop clients on 127.0.0.1, request bodies built before the clock (base64 and JSON for REST, "
            "raw bytes for gRPC), every answer parsed and its vectors counted. x limit: per-repeat ratio to the "
            "raw limit. Cores: CPU seconds per wall second of the server and of the load generator (which shares "
            "the machine). Images/call from the server's /metrics. RSS: the server's peak during the measurement.",
            ""]
    out += _table(["scenario", "img/s median", "min", "max", "x limit", "server cores", "client cores",
                   "images/call", "peak RSS MB", "errors"], rows) + [""]

    # -- text while images stream ----------------------------------------------------------------
    if "mixed/both" in results.samples:
        text_c, (per_request, image_c) = settings["mixed_text_clients"], settings["mixed_image"]

        def side(key: str, name: str) -> list[str]:
            return [_fmt(summarize(_values(results, key, name)), 1)]
        rows = [
            ["text alone", *side("mixed/text", "text_per_second"), *side("mixed/text", "text_p50_ms"),
             *side("mixed/text", "text_p99_ms"), "–"],
            ["text while images stream", *side("mixed/both", "text_per_second"), *side("mixed/both", "text_p50_ms"),
             *side("mixed/both", "text_p99_ms"),
             _fmt(paired(results, "mixed/both", "mixed/text", "text_per_second"), 2)],
            ["images alone", *side("mixed/image", "image_per_second"), "–", "–", "–"],
            ["images while text streams", *side("mixed/both", "image_per_second"), "–", "–",
             _fmt(paired(results, "mixed/both", "mixed/image", "image_per_second"), 2)],
        ]
        out += ["## Text while images stream (same model, both towers)", "",
                f"{settings['window']:.0f} s windows on the default server: {text_c} clients sending one query each "
                f"(OpenAI dialect, text tower) and/or {image_c} clients sending {per_request} 640x480 JPEGs each "
                "(Elasticsearch dialect, vision tower); both at once in the last rows. Both towers share one "
                "worker pool, by worker time (service/engine/workers.py); a running call is never interrupted, "
                "so a text can wait for an image call to end. Ratio: with / alone, per repeat.", ""]
        out += _table(["load", "per second", "p50 ms", "p99 ms", "ratio to alone"], rows) + [""]

    # -- memory ----------------------------------------------------------------------------------
    rows = [[label, _num(info.get("first_ready_seconds"), 2), _mb(info.get("rss_at_ready")),
             _mb(info.get("peak_rss_sampled")), _mb(info.get("peak_rss_kernel"))]
            for label, info in results.servers.items()]
    out += ["## Server memory", "", "RSS sampled with psutil every 50 ms over the whole run; VmHWM is the kernel's "
            "own peak.", ""]
    out += _table(["server", "start to ready s", "RSS at ready MB", "peak RSS sampled MB", "VmHWM MB"], rows) + [""]

    out += notes_lines(results)
    return "\n".join(out)
