"""The PNG curves of `python -m bench.curves` (matplotlib, Agg: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .curves_report import clients_of, lengths_of, median, raw_best  # noqa: E402
from .runner import Results  # noqa: E402
from .stats import summarize  # noqa: E402

_STYLES = ("-", "--", ":")


def _raw_median(results: Results, base: str) -> float:
    summary = summarize(raw_best(results, base).values())
    return summary.median if summary else float("nan")


def _log_axes(axis, xs: list[int], xlabel: str, ylabel: str, title: str) -> None:
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xticks(xs, [str(x) for x in xs])
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def tokens(results: Results, models: list[str], path: Path) -> Path | None:
    if not any(lengths_of(results, m) for m in models):
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    every: set[int] = set()
    for style, model in zip(_STYLES, models):
        xs = lengths_of(results, model)
        every.update(xs)
        left.plot(xs, [_raw_median(results, f"{model}/t{n}") for n in xs], "k" + style, marker="o", label=f"{model} raw ORT")
        for kind, color in (("batch", "tab:blue"), ("single", "tab:orange")):
            left.plot(xs, [median(results, f"rest/{model}/t{n}/{kind}") for n in xs], style, color=color, marker="o",
                      label=f"{model} REST {kind}")
        for stat, color in (("p50_ms", "tab:green"), ("p99_ms", "tab:red")):
            right.plot(xs, [median(results, f"rest/{model}/t{n}/single", stat) for n in xs], style, color=color,
                       marker="o", label=f"{model} single {stat[:3]}")
    ticks = sorted(every)
    _log_axes(left, ticks, "tokens per input", "embeddings/s", "Throughput against input length")
    _log_axes(right, ticks, "tokens per input", "ms per request", "Single-input request latency")
    return _save(figure, path)


def clients(results: Results, model: str, path: Path) -> Path | None:
    xs = clients_of(results, model)
    if not xs:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    left.plot(xs, [median(results, f"rest/{model}/clients/{c}") for c in xs], "o-", color="tab:blue", label="REST emb/s")
    for stat, color in (("p50_ms", "tab:green"), ("p99_ms", "tab:red")):
        right.plot(xs, [median(results, f"rest/{model}/clients/{c}", stat) for c in xs], "o-", color=color,
                   label=stat[:3])
    _log_axes(left, xs, "concurrent single-sentence clients", "embeddings/s", f"Throughput against clients ({model})")
    _log_axes(right, xs, "concurrent single-sentence clients", "ms per request", f"Latency against clients ({model})")
    return _save(figure, path)


def model_size(results: Results, models: list[str], path: Path) -> Path | None:
    if len(models) < 2:
        return None
    small, large = models[:2]
    xs = sorted(set(lengths_of(results, small)) & set(lengths_of(results, large)))
    if not xs:
        return None
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for style, model in zip(_STYLES, (small, large)):
        left.plot(xs, [1000 / _raw_median(results, f"{model}/t{n}") for n in xs], "k" + style, marker="o",
                  label=f"{model} raw ORT")
        left.plot(xs, [1000 / median(results, f"rest/{model}/t{n}/batch") for n in xs], style, color="tab:blue",
                  marker="o", label=f"{model} REST batch")
    right.plot(xs, [_raw_median(results, f"{small}/t{n}") / _raw_median(results, f"{large}/t{n}") for n in xs],
               "ko-", label="raw ORT")
    right.plot(xs, [median(results, f"rest/{small}/t{n}/batch") / median(results, f"rest/{large}/t{n}/batch")
                    for n in xs], "o-", color="tab:blue", label="REST batch")
    _log_axes(left, xs, "tokens per input", "ms of the machine per embedding", "Cost per embedding by model")
    _log_axes(right, xs, "tokens per input", f"cost {large} / {small}", "How much more the larger model costs")
    right.set_yscale("linear")
    return _save(figure, path)


def plot_all(results: Results, folder: Path) -> list[Path]:
    """The PNGs written into `folder` (next to the report)."""
    models = list(results.meta.get("models", {}))
    made = [tokens(results, models, folder / "curves-tokens.png"),
            clients(results, models[0], folder / "curves-clients.png") if models else None,
            model_size(results, models, folder / "curves-models.png")]
    return [p for p in made if p is not None]
