"""RESULTS-curves.md from a `python -m bench.curves` run: tables, fitted slopes, the plots' links."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from .report import MB, _by_repeat, _cols, _num, _table, _values, paired
from .runner import Results
from .stats import Summary, summarize


def median(results: Results, key: str, name: str = "per_second") -> float:
    summary = summarize(_values(results, key, name))
    return summary.median if summary else math.nan


def lengths_of(results: Results, model: str) -> list[int]:
    found = {int(k.split("/")[2][1:]) for k in results.samples if k.startswith(f"rest/{model}/t")}
    return sorted(found)


def clients_of(results: Results, model: str) -> list[int]:
    return sorted(int(k.rsplit("/", 1)[1]) for k in results.samples if k.startswith(f"rest/{model}/clients/"))


def raw_best(results: Results, base: str) -> dict[int, float]:
    """Per repeat, the better of the two raw configurations (batch and one sequence per worker)."""
    batch, seq = _by_repeat(results, f"raw/{base}/batch", "per_second"), _by_repeat(results, f"raw/{base}/seq", "per_second")
    return {r: max(batch.get(r, 0.0), seq.get(r, 0.0)) for r in set(batch) | set(seq)}


def _pair(a: dict[int, float], b: dict[int, float], op: Callable[[float, float], float] = lambda x, y: x / y
          ) -> Summary | None:
    return summarize(op(a[r], b[r]) for r in a if r in b and b[r])


def fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares line y = intercept + slope * x over the finite points."""
    points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    if len(points) < 2:
        return None
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return float(intercept), float(slope)


def slopes(results: Results, model: str) -> dict[str, tuple[float, float] | None]:
    """Fitted lines against tokens: CPU cost per embedding (ms, raw and REST batches: the whole
    machine's time per embedding) and the single-input request's p50 (ms)."""
    lengths = lengths_of(results, model)
    raw = [summarize(raw_best(results, f"{model}/t{n}").values()) for n in lengths]
    return {
        "raw_ms": fit(lengths, [1000 / s.median if s else math.nan for s in raw]),
        "batch_ms": fit(lengths, [1000 / median(results, f"rest/{model}/t{n}/batch") for n in lengths]),
        "single_p50_ms": fit(lengths, [median(results, f"rest/{model}/t{n}/single", "p50_ms") for n in lengths]),
    }


def _tokens_section(results: Results, model: str) -> list[str]:
    rows = []
    for n in lengths_of(results, model):
        base = f"{model}/t{n}"
        raw = raw_best(results, base)
        row = [str(n), _num(summarize(raw.values()) and summarize(raw.values()).median)]
        for kind in ("batch", "single"):
            served = _by_repeat(results, f"rest/{base}/{kind}", "per_second")
            ratio = _pair(served, raw)
            row += [_num(median(results, f"rest/{base}/{kind}")), ratio.fmt(2) if ratio else "–",
                    _num(median(results, f"rest/{base}/{kind}", "p50_ms"), 1),
                    _num(median(results, f"rest/{base}/{kind}", "p99_ms"), 1)]
        rows.append(row)
    return _table(["tokens", "raw emb/s", "REST batch emb/s", "x raw", "batch p50 ms", "batch p99 ms",
                   "REST single emb/s", "x raw", "single p50 ms", "single p99 ms"], rows)


def _slope_lines(results: Results, model: str) -> list[str]:
    fitted = slopes(results, model)
    out = []
    labels = {"raw_ms": "raw engine, CPU time of the whole machine per embedding",
              "batch_ms": "REST batches, machine time per embedding (1 / emb/s)",
              "single_p50_ms": "REST single-input request p50 latency"}
    for key, line in fitted.items():
        if line:
            intercept, slope = line
            out.append(f"- {labels[key]}: **{slope * 1000:.1f} µs per extra token** "
                       f"({slope * 100:.2f} ms per 100 tokens), {intercept:.2f} ms at 0 tokens")
    return out


def _models_section(results: Results, models: list[str]) -> list[str]:
    small, large = models[0], models[1]
    rows = []
    for n in sorted(set(lengths_of(results, small)) & set(lengths_of(results, large))):
        raw = _pair(raw_best(results, f"{small}/t{n}"), raw_best(results, f"{large}/t{n}"))
        batch = paired(results, f"rest/{small}/t{n}/batch", f"rest/{large}/t{n}/batch")
        p50 = paired(results, f"rest/{large}/t{n}/single", f"rest/{small}/t{n}/single", "p50_ms")
        rows.append([str(n), _num(median(results, f"rest/{small}/t{n}/batch")),
                     _num(median(results, f"rest/{large}/t{n}/batch")),
                     raw.fmt(2) if raw else "–", batch.fmt(2) if batch else "–", p50.fmt(2) if p50 else "–"])
    return _table(["tokens", f"{small} REST batch emb/s", f"{large} REST batch emb/s",
                   f"cost {large} / {small}, raw", "cost ratio, REST batch", "single p50 ratio"], rows)


def _clients_section(results: Results, model: str) -> list[str]:
    rows = []
    for c in clients_of(results, model):
        key = f"rest/{model}/clients/{c}"
        rows.append([str(c), *_cols(summarize(_values(results, key, "per_second"))),
                     _num(median(results, key, "p50_ms"), 1), _num(median(results, key, "p99_ms"), 1),
                     _num(median(results, key, "server_cores"), 2), _num(median(results, key, "client_cores"), 2),
                     _num(median(results, key, "seqs_per_call"), 1)])
    return _table(["clients", "emb/s", "min", "max", "p50 ms", "p99 ms", "server cores", "client cores",
                   "seqs/call"], rows)


def _memory_section(results: Results) -> list[str]:
    none = results.meta.get("rss_no_model")
    rows = [["no model (`/health`)", _mb(none), "–", "–", "–"]] if none else []
    for label, info in results.servers.items():
        if label == "no model":
            continue
        rss = info.get("rss_at_ready")
        peak = max(filter(None, (info.get("peak_rss_sampled"), info.get("peak_rss_kernel"))), default=None)
        rows.append([f"{label} ({', '.join(info.get('models', []))})", _mb(rss),
                     _mb(rss - none) if rss and none else "–", _mb(peak), str(info.get("threads_at_ready", "–"))])
    return _table(["server", "RSS at /ready MB", "over no model MB", "peak under load MB", "threads at ready"], rows)


def both_share(results: Results) -> Summary | None:
    """Both models busy: each one's emb/s over its own alone speed (same repeat), summed; 1.0 =
    the CPUs split between them without loss."""
    alone_a = _by_repeat(results, "share/a_alone", "per_second")
    alone_b = _by_repeat(results, "share/b_alone", "per_second") or alone_a  # B is a copy of A
    return summarize(s["each_per_second"][0] / alone_a[s["repeat"]] + s["each_per_second"][1] / alone_b[s["repeat"]]
                     for s in results.samples.get("share/both_busy", [])
                     if len(s.get("each_per_second") or []) == 2 and s["repeat"] in alone_a and s["repeat"] in alone_b)


def _share_section(results: Results) -> list[str]:
    labels = {"a_alone": "A alone (one-model server)", "a_busy_b_idle": "A busy, B idle (two-model server)",
              "b_busy_a_idle": "B busy, A idle (two-model server)", "both_busy": "A and B busy at once (two-model server)",
              "b_alone": "B alone (one-model server)"}
    alone = {"a": _by_repeat(results, "share/a_alone", "per_second"),
             "b": _by_repeat(results, "share/b_alone", "per_second")}
    rows = []
    for key, label in labels.items():
        samples = results.samples.get(f"share/{key}", [])
        if not samples:
            continue
        each = [s.get("each_per_second") or [] for s in samples]
        reference = alone["b"] if key.startswith("b_") and alone["b"] else alone["a"]
        ratio = _pair(_by_repeat(results, f"share/{key}", "per_second"), reference) if not key.endswith("alone") else None
        if key == "both_busy":
            ratio = both_share(results)
        split = " + ".join(_num(summarize(e[i] for e in each if len(e) > i).median) for i in range(max(map(len, each))))
        rows.append([label, _num(median(results, f"share/{key}")), split if key == "both_busy" else "–",
                     ratio.fmt(2) if ratio else "–", _num(median(results, f"share/{key}", "p50_ms"), 1),
                     _num(median(results, f"share/{key}", "p99_ms"), 1),
                     _num(median(results, f"share/{key}", "server_cores"), 2),
                     _num(median(results, f"share/{key}", "threads"), 0),
                     _num(median(results, f"share/{key}", "worker_threads"), 0)])
    return _table(["load", "emb/s", "A + B", "x alone", "p50 ms", "p99 ms", "server cores", "threads",
                   "ortembed-w* threads"], rows)


def _mb(value: object) -> str:
    return f"{value / MB:.0f}" if isinstance(value, (int, float)) and value else "–"


def _summary(results: Results, models: list[str]) -> list[str]:
    """The few numbers a user plans with, pulled from the sections below."""
    out = []
    for model in models:
        lengths = lengths_of(results, model)
        fitted = slopes(results, model)
        rates = ", ".join(f"{n} tokens {_rate(median(results, f'rest/{model}/t{n}/batch'))}" for n in lengths)
        line = f"- **{model}**: REST batches, emb/s at {rates}."
        if fitted["batch_ms"]:
            line += f" Each extra 100 tokens per input costs {fitted['batch_ms'][1] * 100:.1f} ms of the machine per embedding"
        if fitted["single_p50_ms"]:
            line += f" and adds {fitted['single_p50_ms'][1] * 100:.1f} ms to a single-input request's p50"
        out.append(line + ".")
    if len(models) > 1:
        ratios = [r for n in sorted(set(lengths_of(results, models[0])) & set(lengths_of(results, models[1])))
                  if (r := paired(results, f"rest/{models[0]}/t{n}/batch", f"rest/{models[1]}/t{n}/batch"))]
        if ratios:
            out.append(f"- **Model size**: {models[1]} costs {min(r.median for r in ratios):.1f}-"
                       f"{max(r.median for r in ratios):.1f}x what {models[0]} costs per embedding (REST batches, "
                       "over the lengths measured).")
    clients = clients_of(results, models[0]) if models else []
    if clients:
        best = max(clients, key=lambda c: median(results, f"rest/{models[0]}/clients/{c}"))
        first, last = clients[0], clients[-1]
        out.append(f"- **Clients** ({models[0]}, corpus sentences): {first} client "
                   f"{_num(median(results, f'rest/{models[0]}/clients/{first}'), 0)} emb/s at p50 "
                   f"{_num(median(results, f'rest/{models[0]}/clients/{first}', 'p50_ms'), 1)} ms; the most, "
                   f"{_num(median(results, f'rest/{models[0]}/clients/{best}'), 0)} emb/s, at {best}; at {last} clients "
                   f"p50 {_num(median(results, f'rest/{models[0]}/clients/{last}', 'p50_ms'), 0)} ms, "
                   f"p99 {_num(median(results, f'rest/{models[0]}/clients/{last}', 'p99_ms'), 0)} ms.")
    none = results.meta.get("rss_no_model")
    added = [f"{label} +{_mb(info['rss_at_ready'] - none)} MB" for label, info in results.servers.items()
             if none and info.get("rss_at_ready") and label != "no model"]
    if added:
        out.append(f"- **Memory** at ready over a server with no model ({_mb(none)} MB): {', '.join(added)}.")
    share = both_share(results)
    if share:
        out.append(f"- **Two models busy at once** on one server: each model's emb/s over its own alone speed, summed: "
                   f"{share.fmt(2)} (1.0 = the machine split without loss), with "
                   f"{_num(median(results, 'share/both_busy', 'worker_threads'), 0)} worker threads "
                   f"({_num(median(results, 'share/a_alone', 'worker_threads'), 0)} for one model alone) and "
                   f"{_num(median(results, 'share/both_busy', 'threads'), 0)} threads in all "
                   f"({_num(median(results, 'share/a_alone', 'threads'), 0)}).")
    return out


def _rate(value: float) -> str:
    return _num(value, 0 if value >= 10 else 1)


def render(results: Results, pngs: list[Path]) -> str:
    meta, settings = results.meta, results.meta["settings"]
    models = list(meta.get("models", {}))
    out = ["# How cost grows: input length, clients, model size, memory, CPU share", ""]
    if meta.get("quick"):
        out += ["> **QUICK RUN — NOISY.** One repeat, few sizes, short measurements on a shared machine: checks",
                "> the harness. `python -m bench.curves` produces the real numbers.", ""]
    cpu = meta["cpu"]
    out += [f"`{meta['command']}` — started {meta['started']}, finished {meta.get('finished', '?')}, measuring took "
            f"{_num(meta.get('run_seconds'), 0)} s. {cpu['model']}, {cpu['usable_cpus']} usable CPUs. Every number "
            f"is the median of {settings['repeats']} round-robin repeat(s) (min-max where shown); each ratio is taken "
            "within one repeat.", "",
            f"Tokens per input count the special tokens: synthetic inputs are corpus text cut at word boundaries "
            f"to exactly N tokens of the model's own tokenizer. REST batches: {settings['batch']} inputs per "
            f"request, {settings['batch_clients']} clients; REST single: {settings['single_clients']} clients of one "
            "input each. Raw: the better of a bare `onnxruntime` session on batches of "
            f"{settings['batch']} with every thread and {settings['cpus']} workers x 1 thread on one sequence per call "
            "(bench/raw.py). emb/s counts embeddings; p50/p99 are per request.", ""]
    rows = []
    for name, info in meta.get("models", {}).items():
        fidelity = info.get("fidelity") or {}
        params = info.get("parameters")
        rows.append([name, f"{params / 1e6:.1f} M" if params else "–", f"{info['bytes'] / MB:.1f}",
                     str(info["dimensions"]), str(info["max_tokens"]), str(info.get("recipe")),
                     _num(fidelity.get("mean_cosine"), 4), _num(fidelity.get("min_cosine"), 4)])
    out += ["## In short", ""] + _summary(results, models) + [""]
    out += ["## Models", ""] + _table(["model", "weights (graph)", "file MB", "dims", "max tokens", "recipe",
                                       "fidelity mean cos", "min cos"], rows) + [""]
    for png in pngs:
        out += [f"![{png.stem}]({png.as_posix()})", ""]
    for model in models:
        out += [f"## Against tokens per input: {model}", ""] + _tokens_section(results, model) + [""]
        out += ["Fitted lines over the lengths measured (least squares):", ""] + _slope_lines(results, model) + [""]
    if len(models) > 1:
        out += ["## Against model size", "", "Cost ratio = small model's emb/s / large model's emb/s, per repeat. "
                "p50 ratio = large / small single-input request latency.", ""]
        out += _models_section(results, models) + [""]
    if models:
        out += [f"## Against concurrent single-sentence clients: {models[0]}", "",
                "Each client sends one corpus sentence per request, closed loop.", ""]
        out += _clients_section(results, models[0]) + [""]
    out += ["## Resident memory per loaded model", "",
            "RSS (psutil) at the first `/ready` 200 (after warm-up); the peak is the larger of the 50 ms samples and "
            "the kernel's VmHWM.", ""] + _memory_section(results) + [""]
    out += ["## CPU budget share of two models", "",
            f"{settings['single_clients']} single-sentence clients per busy model for {settings['share_seconds']} s. "
            "x alone: per repeat, against the same model alone on a one-model server. Threads are counted halfway "
            "through the load (/proc/<pid>/task). emb/s counts the answers that came before the deadline, over the "
            "load's length, so that two loads are compared while both were busy. For both busy, x alone = A's emb/s / A alone + B's emb/s / B "
            "alone (1.0: the two models split the machine without loss).", ""] + _share_section(results) + [""]
    errors = [(k, s) for k, samples in results.samples.items() for s in samples if s.get("error") or s.get("first_error")]
    if results.notes or errors:
        out += ["## Notes", ""] + [f"- {n}" for n in results.notes]
        out += [f"- {k} (repeat {s['repeat']}): {s.get('error') or s.get('first_error')}" for k, s in errors[:20]]
        out.append("")
    return "\n".join(out)
