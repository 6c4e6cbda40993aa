"""RESULTS.md from a run's samples: medians with min and max, paired ratios, targets."""
from __future__ import annotations

import math
from typing import Any, Callable

from .corpus import shown
from .runner import Results
from .stats import Summary, summarize

MB = 1024 * 1024

# (label, threshold, direction) of each target; the ratios are printed, never asserted.
TARGET_REST_BATCH = 0.9
TARGET_REST_SINGLE = 0.7
TARGET_GRPC_SINGLE = 0.8
TARGET_VS_REFERENCE = 2.5
TARGET_LATENCY_MS = 1.5
TARGET_RSS_MB = 300
TARGET_READY_S = 3.0


def _values(results: Results, key: str, name: str) -> list[float]:
    return [s[name] for s in results.samples.get(key, []) if isinstance(s.get(name), (int, float))
            and not math.isnan(s[name])]


def _by_repeat(results: Results, key: str, name: str) -> dict[int, float]:
    return {s["repeat"]: s[name] for s in results.samples.get(key, [])
            if isinstance(s.get(name), (int, float)) and not math.isnan(s[name])}


def paired(results: Results, key_a: str, key_b: str, name_a: str = "per_second", name_b: str | None = None,
           op: Callable[[float, float], float] = lambda a, b: a / b) -> Summary | None:
    """op(a, b) per repeat where both were measured (same minute), summarized over repeats."""
    a = _by_repeat(results, key_a, name_a)
    b = _by_repeat(results, key_b, name_b or name_a)
    return summarize(op(a[r], b[r]) for r in a if r in b and b[r])


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _cols(summary: Summary | None, digits: int = 1) -> list[str]:
    if summary is None:
        return ["–", "–", "–"]
    return [_num(summary.median, digits), _num(summary.low, digits), _num(summary.high, digits)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def _met(value: float | None, threshold: float, at_least: bool = True) -> str:
    if value is None or math.isnan(value):
        return "–"
    ok = value >= threshold if at_least else value <= threshold
    return "yes" if ok else "**no**"


def _as_list(value: int | list[int]) -> list[int]:
    """Older result files hold one number of single-sentence clients, newer ones a list."""
    return [value] if isinstance(value, int) else list(value)


def limit_key(results: Results) -> str | None:
    best, best_value = None, -1.0
    for key in results.samples:
        if key.startswith(("raw/batch/", "raw/workers/")):
            summary = summarize(_values(results, key, "per_second"))
            if summary and summary.median > best_value:
                best, best_value = key, summary.median
    return best


def _raw_label(key: str, results: Results) -> str:
    _, kind, value = key.split("/")
    cpus = results.meta["settings"]["cpus"]
    if kind == "batch":
        return f"batch {value}, length-sorted, 1 worker x {cpus} threads"
    workers, _, batch = value.partition("x")
    threads = max(1, cpus // int(workers))
    if batch:
        return f"{workers} workers x {threads} thread(s), length-sorted batches of {batch}"
    return f"{workers} worker(s) x {threads} thread(s), 1 sequence per call"


def _scenario_label(key: str) -> str:
    transport, policy, name = key.split("/")
    if name.startswith("batch"):
        size, clients = name[len("batch"):].split("_c")
        return f"{transport.upper()} batches of {size}, concurrency {clients}"
    if name.startswith("single_c"):
        return f"{transport.upper()} {name[len('single_c'):]} concurrent clients x 1 sentence"
    return f"{transport.upper()} {name}"


def machine_lines(meta: dict[str, Any]) -> list[str]:
    """The report's "Machine" section: CPU and its flags, usable CPUs, load, versions."""
    cpu = meta["cpu"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    load = cpu.get("load_average")
    return ["## Machine", "",
            f"- CPU: {cpu['model']} — {flags}",
            f"- CPUs usable by the process: {cpu['usable_cpus']} (host: {cpu['host_cpus']})"
            + (f"; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""),
            "- Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()), ""]


def render(results: Results) -> str:
    meta = results.meta
    settings = meta["settings"]
    corpus = meta["corpus"]
    out: list[str] = ["# ortembed benchmark results", ""]
    if meta.get("quick"):
        out += ["> **QUICK RUN — NOISY.** A subset of the corpus and few repeats, on a shared machine: for",
                "> checking the harness, not for quoting. `make bench` produces the real numbers.", ""]
    out += [f"`{meta['command']}` — started {meta['started']}, finished {meta.get('finished', '?')}, "
            f"measuring took {_num(meta.get('run_seconds'), 0)} s.", "",
            "Every number is the **median of the repeats, with min and max**. Repeats of different scenarios",
            "were taken round-robin (repeat r of every scenario before repeat r+1 of any), and each ratio is",
            "taken between measurements of the same repeat, then summarized over repeats.", ""]

    out += machine_lines(meta)

    # -- settings --------------------------------------------------------------------------------
    model = meta["model"]
    out += ["## Settings", "",
            f"- Corpus: `{shown(corpus['path'])}`, {corpus['texts']} texts ({corpus['queries']} short queries); tokens "
            f"median {_num(corpus['tokens_median'], 0)}, p90 {_num(corpus['tokens_p90'], 0)}, max {corpus['tokens_max']} "
            f"(after truncation to {model['max_tokens']}); query tokens median {_num(corpus.get('query_tokens_median'), 0)}",
            f"- Model: `{shown(model['folder'])}` ({model['name']}, {model['recipe']}, {model['bytes'] / MB:.1f} MB, "
            f"{model['dimensions']} dims, {model['pooling']} pooling, normalize {model['normalize']})",
            f"- Threads: {settings['cpus']} in total for the raw engine and each server; repeats: {settings['repeats']}",
            f"- Servers: policies {', '.join(settings['policies'])}; extra flags: "
            f"`{' '.join(settings['server_args']) or '(none)'}`",
            f"- REST batches of {settings['rest_batch']} at concurrency {', '.join(map(str, settings['rest_concurrency']))}; "
            f"single-sentence clients: {', '.join(map(str, _as_list(settings['single_clients'])))}; "
            f"{settings['latency_requests']} latency requests per repeat",
            ""]
    for label, info in results.servers.items():
        cos = info.get("min_cosine_vs_raw")
        out.append(f"- Server [{label}]: flags `{' '.join(info['args']) or '(defaults)'}`; min cosine of 8 served "
                   f"vectors vs the raw engine's batch-1 vectors {_num(cos, 4)}; gRPC: {info.get('grpc', 'not probed')}")
    out.append("")

    limit = limit_key(results)
    limit_summary = summarize(_values(results, limit, "per_second")) if limit else None
    reference = summarize(_values(results, "reference", "per_second"))
    policies = settings["policies"]
    batch_key = f"batch{settings['rest_batch']}_c4"
    single_clients = max(_as_list(settings["single_clients"]))
    single_key = f"single_c{single_clients}"
    raw_latency = "raw/latency/" + str(settings["cpus"])

    # -- targets ---------------------------------------------------------------------------------
    rows: list[list[str]] = []

    def ratio_row(label: str, key: str, threshold: float, against: str | None, what: str) -> None:
        if against is None or key not in results.samples:
            return
        value = summarize(_values(results, key, "per_second"))
        ratio = paired(results, key, against)
        rows.append([label, f"{_num(value and value.median)} emb/s", ratio.fmt(2) if ratio else "–",
                     f">= {threshold} x {what}", _met(ratio and ratio.median, threshold)])

    for policy in policies:
        ratio_row(f"REST batch {settings['rest_batch']} c=4 [{policy}]", f"rest/{policy}/{batch_key}",
                  TARGET_REST_BATCH, limit, "limit")
    for policy in policies:
        ratio_row(f"REST {single_clients} x 1 sentence [{policy}]", f"rest/{policy}/{single_key}",
                  TARGET_REST_SINGLE, limit, "limit")
    for policy in policies:
        ratio_row(f"gRPC {single_clients} x 1 sentence [{policy}]", f"grpc/{policy}/{single_key}",
                  TARGET_GRPC_SINGLE, limit, "limit")
    if reference:
        for policy in policies:
            ratio_row(f"REST batch {settings['rest_batch']} c=4 [{policy}] vs sentence-transformers",
                      f"rest/{policy}/{batch_key}", TARGET_VS_REFERENCE, "reference", "sentence-transformers")
        if limit:
            ratio_row("raw limit vs sentence-transformers", limit, TARGET_VS_REFERENCE, "reference",
                      "sentence-transformers")
    for transport in ("rest", "grpc"):
        for policy in policies:
            key = f"{transport}/{policy}/latency"
            if key not in results.samples or raw_latency not in results.samples:
                continue
            diff = paired(results, key, raw_latency, "p50_ms", op=lambda a, b: a - b)
            p50 = summarize(_values(results, key, "p50_ms"))
            rows.append([f"{transport.upper()} single short query p50 [{policy}]", f"{_num(p50 and p50.median, 2)} ms",
                         f"+{diff.fmt(2)} ms" if diff else "–", f"<= raw batch-1 p50 + {TARGET_LATENCY_MS} ms"
                         + ("" if transport == "rest" else " (informative)"),
                         _met(diff and diff.median, TARGET_LATENCY_MS, at_least=False)])
    for label, info in results.servers.items():
        peak = max(filter(None, (info.get("peak_rss_sampled"), info.get("peak_rss_kernel"))), default=None)
        if peak:
            rows.append([f"server RSS peak under load [{label}]", f"{peak / MB:.0f} MB", "–",
                         f"<= {TARGET_RSS_MB} MB", _met(peak / MB, TARGET_RSS_MB, at_least=False)])
    ready = summarize(_values(results, "startup", "seconds"))
    if ready:
        rows.append(["process start to /ready 200", f"{ready.fmt(2)} s", "–", f"<= {TARGET_READY_S} s",
                     _met(ready.median, TARGET_READY_S, at_least=False)])
    out += ["## Targets (issue 5)", "",
            "Printed, not asserted. *Ratio* is the per-repeat ratio (or difference) to the reference measured "
            "in the same repeat: median (min-max).", ""]
    out += _table(["target", "measured (median)", "ratio", "target", "met"], rows) + [""]

    # -- raw engine ------------------------------------------------------------------------------
    raw_keys = [k for k in results.samples if k.startswith(("raw/batch/", "raw/workers/"))]
    if raw_keys:
        raw_rows = []
        padding = meta.get("raw_padding", {})
        for key in raw_keys:
            summary = summarize(_values(results, key, "per_second"))
            pad = padding.get(key.split("/")[2]) if key.startswith("raw/batch/") else padding.get(key.split("/")[2], 1.0)
            raw_rows.append([_raw_label(key, results) + (" **(limit)**" if key == limit else ""), *_cols(summary),
                             _num(pad, 2), _errors(results, key)])
        out += section("Raw engine: bare onnxruntime session (the limit)",
                       "The served `model.onnx` in a plain `InferenceSession`, pre-tokenized, mean pooling and "
                       "normalization in numpy included. Padding = computed tokens / real tokens.",
                       ["configuration", "emb/s median", "min", "max", "padding", "errors"], raw_rows,
                       ["", f"**Limit: {limit_summary.median:.1f} emb/s** ({_raw_label(limit, results)})."]
                       if limit_summary else [])

    # -- servers ---------------------------------------------------------------------------------
    server_keys = [k for k in results.samples if k.startswith(("rest/", "grpc/")) and not _is_latency(results, k)]
    if server_keys:
        rows = []
        def order(key: str) -> tuple:
            transport, policy, name = key.split("/")
            kind, _, clients = name.rpartition("_c")
            return (kind.startswith("single"), int(clients or 0), transport,
                    policies.index(policy) if policy in policies else 99)
        for key in sorted(server_keys, key=order):
            summary = summarize(_values(results, key, "per_second"))
            ratio = paired(results, key, limit) if limit else None
            extra = [summarize(_values(results, key, n)) for n in ("server_cores", "client_cores", "seqs_per_call", "padding")]
            rows.append([_scenario_label(key), key.split("/")[1], *_cols(summary),
                         ratio.fmt(2) if ratio else "–", *[_num(e and e.median, 2) for e in extra],
                         _errors(results, key)])
        out += ["## Server throughput", "",
                "Closed-loop clients on 127.0.0.1, each request's JSON (or protobuf) response parsed and checked. "
                "x limit: per-repeat ratio to the raw limit. Cores: CPU seconds per wall second of the server "
                "process and of the load generator (which shares the machine). Seqs/call and padding come from "
                "the server's /metrics.", ""]
        out += _table(["scenario", "policy", "emb/s median", "min", "max", "x limit", "server cores",
                       "client cores", "seqs/call", "padding", "errors"], rows) + [""]

    # -- latency ---------------------------------------------------------------------------------
    latency_keys = [k for k in results.samples if _is_latency(results, k)]
    if latency_keys:
        rows = []
        for key in latency_keys:
            if key.startswith("raw/"):
                intra = int(key.split("/")[2])
                label, policy = f"raw session, batch 1, {intra} intra-op thread(s)", "–"
            elif key.endswith("/health"):
                label, policy = "REST GET /health round trip (the HTTP floor)", key.split("/")[1]
            else:
                label, policy = f"{key.split('/')[0].upper()}, 1 query per request, concurrency 1", key.split("/")[1]
            p50 = summarize(_values(results, key, "p50_ms"))
            p99 = summarize(_values(results, key, "p99_ms"))
            diff = (paired(results, key, raw_latency, "p50_ms", op=lambda a, b: a - b)
                    if key != raw_latency and not key.endswith("/health") else None)
            rows.append([label, policy, *_cols(p50, 2), *_cols(p99, 2), diff.fmt(2) if diff else "–",
                         _errors(results, key)])
        out += ["## Single short query latency", "",
                "Short queries (kind `query`) one at a time. Raw: tokenize + one batch-1 run + pooling. "
                "Server: full request round trip from the client. Δp50: per-repeat difference to the raw "
                f"session with {settings['cpus']} thread(s).", ""]
        out += _table(["path", "policy", "p50 ms", "min", "max", "p99 ms", "min", "max", "Δp50 vs raw ms", "errors"],
                      rows) + [""]

    # -- reference -------------------------------------------------------------------------------
    if reference:
        info = meta.get("reference", {})
        out += ["## Reference: sentence-transformers, torch fp32", "",
                f"`SentenceTransformer('{shown(info.get('folder', '?'))}', device='cpu')`, batch 32, "
                f"torch threads {info.get('torch_threads', '?')}, max_seq_length {info.get('max_seq_length', '?')}, "
                "in its own process.", ""]
        rows = [["sentence-transformers fp32", *_cols(reference)]]
        out += _table(["", "emb/s median", "min", "max"], rows) + [""]

    # -- memory and start-up ---------------------------------------------------------------------
    startup = results.samples.get("startup", [])
    if results.servers or startup:
        rows = []
        for label, info in results.servers.items():
            rows.append([f"load server [{label}]", _num(info.get("first_ready_seconds"), 2),
                         _mb(info.get("rss_at_ready")), _mb(info.get("peak_rss_sampled")), _mb(info.get("peak_rss_kernel"))])
        fresh = [s for s in startup if s.get("label", "").startswith("fresh")]
        if fresh:
            seconds = summarize(s["seconds"] for s in fresh if s.get("seconds"))
            rss = summarize(s["rss_at_ready"] / MB for s in fresh if s.get("rss_at_ready"))
            flags = " ".join(settings["server_args"]) or "default flags"
            rows.append([f"fresh server, {flags} ({len(fresh)} starts)", seconds.fmt(2) if seconds else "–",
                         rss.fmt(0) if rss else "–", "–", "–"])
        out += ["## Memory and start-up", "",
                "Start to ready: from `Popen` to the first `/ready` 200 (interpreter start, imports, model load, "
                "warm-up). RSS sampled with psutil every 50 ms during the load scenarios; VmHWM is the kernel's "
                "own peak.", ""]
        out += _table(["server", "start to ready s", "RSS at ready MB", "peak RSS sampled MB", "peak RSS VmHWM MB"],
                      rows) + [""]

    out += notes_lines(results)
    return "\n".join(out)


def section(title: str, intro: str, header: list[str], rows: list[list[str]], after: list[str]) -> list[str]:
    """A report section: title, one paragraph, a table, what follows it."""
    return [f"## {title}", "", intro, ""] + _table(header, rows) + after + [""]


def notes_lines(results: Results) -> list[str]:
    """The "Notes" section: the run's notes and the first errors of its samples (none: nothing)."""
    errors = [(k, s) for k, samples in results.samples.items() for s in samples if s.get("error") or s.get("first_error")]
    if not (results.notes or errors):
        return []
    return (["## Notes", ""] + [f"- {note}" for note in results.notes]
            + [f"- {k} (repeat {s['repeat']}): {s.get('error') or s.get('first_error')}" for k, s in errors[:20]]
            + [""])


def _is_latency(results: Results, key: str) -> bool:
    return any("p50_ms" in s for s in results.samples.get(key, []))


def _mb(value: Any) -> str:
    return f"{value / MB:.0f}" if isinstance(value, (int, float)) and value else "–"


def _errors(results: Results, key: str) -> str:
    samples = results.samples.get(key, [])
    failed = sum(1 for s in samples if s.get("error"))
    request_errors = sum(int(s.get("errors", 0)) for s in samples)
    timed_out = sum(1 for s in samples if s.get("timed_out"))
    parts = []
    if failed:
        parts.append(f"{failed} failed")
    if request_errors:
        parts.append(f"{request_errors} requests")
    if timed_out:
        parts.append(f"{timed_out} timed out")
    return ", ".join(parts) or "0"
