"""`python -m bench.images`: the image benchmark of issue 10, written to bench/RESULTS-images.md.

    python -m bench.images             # 3 repeats, round-robin (the lead's run)
    python -m bench.images --quick     # 1 repeat, fewer images: checks the harness (noisy)

On a seeded random CLIP at ViT-B/32 geometry (image_setup.py) and generated photo-like images:
the raw vision-tower limit, the decoding cost per image, images/s served with decoding included
over REST (Elasticsearch and OpenAI dialects) and gRPC, text on the same model while images
stream, and the server's RSS. See bench/README.md ("Images").
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .__main__ import _Formatter, _ints, save
from .corpus import DEFAULT_CORPUS, REPO_ROOT

SERVED = [  # (transport, kind, images per request, clients, server)
    ("es", "jpeg640", 8, 4, "default"), ("openai", "jpeg640", 8, 4, "default"), ("grpc", "jpeg640", 8, 4, "default"),
    ("es", "jpeg640", 1, 16, "default"), ("grpc", "jpeg640", 1, 16, "default"),
    ("es", "jpeg4000", 1, 4, "default"), ("es", "jpeg4000", 1, 4, "draft"), ("es", "png640", 8, 4, "default"),
]
MIXED_TEXT_CLIENTS = 4  # one query per request
MIXED_IMAGE = (8, 4)  # images per request, clients (ES dialect, 640x480 JPEG)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.images", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--quick", action="store_true", help="1 repeat and fewer images; report marked noisy")
    parser.add_argument("--repeats", type=int, default=None, help="round-robin repeats (default 3; 1 with --quick)")
    parser.add_argument("--batch-sizes", type=_ints, default=[1, 4, 8, 16],
                        help="raw limit: batch sizes on one session with every CPU (the server's --max-image-batch "
                             "is added, and its own layout)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per served 640x480 measurement (default 128; 32 with --quick)")
    parser.add_argument("--big-images", type=int, default=None,
                        help="images per served 4000x3000 measurement (default 24; 8 with --quick)")
    parser.add_argument("--window", type=float, default=None,
                        help="seconds of each text-while-images measurement (default 10; 4 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="CPUs (default: those usable by the process)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="texts for the text tower (its queries)")
    parser.add_argument("--server-args", default="",
                        help="extra flags for both servers, e.g. \"--max-image-batch 1\"")
    parser.add_argument("--rebuild-model", action="store_true", help="build and export the CLIP again")
    parser.add_argument("--unit-timeout", type=float, default=300.0, help="seconds one measurement may take")
    parser.add_argument("--out", type=Path, default=None,
                        help="report (default bench/RESULTS-images.md; bench/out/RESULTS-images-quick.md with --quick)")
    parser.add_argument("--json", type=Path, default=None,
                        help="raw samples (default bench/out/images-<time>.json)")
    return parser


def _check_vectors(server: Any, model: str, image: bytes, raw: Any, pixels: Any, cpus: int) -> float:
    """Cosine between the served vector of one image (ES dialect) and the raw session's."""
    import http.client

    import numpy as np
    import orjson

    from .image_load import data_uri

    body = orjson.dumps({"input": [{"content": {"type": "image", "value": data_uri(image, "image/jpeg")}}]})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request("POST", f"/_inference/embedding/{model}", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {answer[:300]!r}")
    served = np.asarray(orjson.loads(answer)["embeddings"][0]["embedding"], dtype=np.float64)
    expected = raw.run(raw.session(cpus), pixels[None])[0].astype(np.float64)
    return float(served @ expected / (np.linalg.norm(served) * np.linalg.norm(expected)))


def run(args: argparse.Namespace, command: str) -> Any:
    from service.config import Settings
    from service.engine.cpus import available_cpus

    from . import image_load as il
    from . import image_raw, image_setup
    from .grpc_load import GrpcUnavailable, probe
    from .machine import cpu_info, versions
    from .runner import Results, Unit, log, run_repeats
    from .server_proc import BenchServer, RssSampler

    quick = args.quick
    repeats = max(1, args.repeats if args.repeats is not None else (1 if quick else 3))
    cpus = args.threads or available_cpus()
    served_images = args.images or (32 if quick else 128)
    big_images = args.big_images or (8 if quick else 24)
    window = args.window or (4.0 if quick else 10.0)
    extra = shlex.split(args.server_args)
    max_image_batch = Settings().max_image_batch
    if "--max-image-batch" in extra[:-1]:
        max_image_batch = int(extra[extra.index("--max-image-batch") + 1])

    folder = image_setup.ensure_clip(args.rebuild_model)
    info = image_setup.model_info(folder)
    model, dims = info["name"], int(info["dimensions"])
    graph = image_raw.VisionGraph.read(folder)
    raw = image_raw.RawVision(graph)
    log(f"model {model}: text {info['text_recipe']}, vision {info['vision_recipe']}; generating images")
    distinct = {"jpeg640": 8, "png640": 8, "jpeg4000": 2 if quick else 4}
    photos = {key: image_setup.photos(kind, distinct[key]) for key, kind in image_setup.KINDS.items()}
    pixels = graph.pixels(photos["jpeg640"])
    raw_tensors = image_setup.cycle(pixels, 32 if quick else 64)
    texts, texts_source = image_setup.texts(args.corpus)

    results = Results()
    results.meta = {
        "command": command, "quick": quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_info(), "versions": versions(), "model": info,
        "images": {key: {"label": kind.label, "distinct": len(photos[key]),
                         "kb_mean": sum(map(len, photos[key])) / len(photos[key]) / 1024}
                   for key, kind in image_setup.KINDS.items()},
        "settings": {"repeats": repeats, "cpus": cpus, "max_image_batch": max_image_batch,
                     "raw_images": len(raw_tensors), "served_images": served_images, "big_images": big_images,
                     "window": window, "texts": texts_source, "mixed_text_clients": MIXED_TEXT_CLIENTS,
                     "mixed_image": MIXED_IMAGE, "unit_timeout": args.unit_timeout},
    }
    units: list[Unit] = []
    for key, batch, workers in image_raw.raw_configurations(args.batch_sizes, max_image_batch, cpus):
        units.append(Unit(key, lambda b=batch, w=workers: raw.measure(raw_tensors, b, w, cpus)))
    for kind in image_setup.KINDS:
        for draft in (False, True):
            units.append(Unit(f"decode/{kind}/{'draft' if draft else 'exact'}",
                              lambda k=kind, d=draft: image_raw.decode_sample(graph, photos[k], d, 0.5 if quick else 2.0)))

    work_dir = Path(tempfile.mkdtemp(prefix="ortembed-bench-images-"))
    sampler = RssSampler().start()
    servers: dict[str, BenchServer] = {}
    try:
        for label, flags in (("default", extra), ("draft", [*extra, "--image-draft", "true"])):
            server = BenchServer(label, folder.parent, folder.name, work_dir / f"data-{label}", flags, grpc=True)
            log(f"starting server [{label}]: {shlex.join(server.cmd[1:])}")
            server.start()
            servers[label] = server
            sampler.servers.append(server)
            results.servers[label] = {"args": flags, "pid": server.pid, "first_ready_seconds": server.ready_seconds,
                                      "rss_at_ready": server.rss_at_ready,
                                      "min_cosine_vs_raw": _check_vectors(server, model, photos["jpeg640"][0], raw,
                                                                          pixels[0], cpus)}
        call = None
        try:
            call = probe(servers["default"].grpc_port, model, dims)
            results.servers["default"]["grpc"] = call.description
        except GrpcUnavailable as exc:
            results.notes.append(f"gRPC scenarios skipped: {exc}")
        for transport, kind, per_request, clients, label in SERVED:
            if transport == "grpc" and call is None:
                continue
            load = il.ImageLoad(transport, kind, per_request, clients)
            count = big_images if kind == "jpeg4000" else served_images
            bodies = il.image_bodies(transport, model, photos[kind], image_setup.KINDS[kind].media, per_request,
                                     max(1, count // per_request), call)
            units.append(Unit(f"{load.name}/{label}", lambda s=servers[label], ld=load, b=bodies: il.image_unit(
                s, ld, b, model, dims, cpus, args.unit_timeout, call)))
        server = servers["default"]
        text = il.text_bodies(model, texts, 20_000)
        images = il.image_bodies("es", model, photos["jpeg640"], "image/jpeg", MIXED_IMAGE[0], 20_000)
        units += [
            Unit("mixed/text", lambda: il.mixed_unit(server, model, dims, window, text, MIXED_TEXT_CLIENTS, None, 0)),
            Unit("mixed/image", lambda: il.mixed_unit(server, model, dims, window, None, 0, images, MIXED_IMAGE[1])),
            Unit("mixed/both", lambda: il.mixed_unit(server, model, dims, window, text, MIXED_TEXT_CLIENTS, images,
                                                     MIXED_IMAGE[1])),
        ]
        run_repeats(units, repeats, results, unit="img/s")
    finally:
        sampler.stop()
        for label, server in servers.items():
            server.sample()
            results.servers[label].update(peak_rss_sampled=server.peak_rss, peak_rss_kernel=server.peak_rss_kernel())
            server.stop()
        results.meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        results.meta["logs_tail"] = {p.name: p.read_text(errors="replace")[-2000:] for p in work_dir.rglob("*.log")}
        shutil.rmtree(work_dir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .image_report import render

    results = run(args, "python -m bench.images" + (" " + shlex.join(argv) if argv else ""))
    text = render(results)
    out = args.out or REPO_ROOT / "bench" / ("out/RESULTS-images-quick.md" if args.quick else "RESULTS-images.md")
    json_path = args.json or REPO_ROOT / "bench" / "out" / f"images-{time.strftime('%Y%m%d-%H%M%S')}.json"
    save(results, text, out, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
