"""A recording drawn as PNGs and one self-contained HTML page (images inlined).

- ``rank-load.png``: load per rank × layer before the first rollout and after the last
  (:func:`eplb_operator.report.heatmaps.plot_rank_loads`);
- ``imbalance.png``: each layer's imbalance over time, with the rollouts marked;
- ``moves.png``: expert slots moved per rollout, aborted ones in red;
- ``report.html``: the three, plus a table of the rollouts.
"""

from __future__ import annotations

import base64
import html
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import numpy as np
import torch

from eplb_core.errors import InvalidInputError
from eplb_operator.placement.views import rank_imbalance
from eplb_operator.report.heatmaps import plot_rank_loads
from eplb_operator.report.recording import Recording

RESULT_COLOURS = {"completed": "tab:green", "aborted": "tab:red", "in-progress": "tab:orange"}


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    images: list[Path]


def imbalance_series(
    recording: Recording, smooth_seconds: float = 3.0
) -> tuple[np.ndarray, np.ndarray]:
    """Times ``[T]`` (seconds since the first sample) and imbalance ``[T, L]``, each point over
    the samples of the last ``smooth_seconds`` (one-second samples of a small demo are noisy)."""
    samples = recording.samples
    if not samples:
        raise InvalidInputError("the recording has no load samples yet")
    start = samples[0].time - samples[0].seconds
    times, values = [], []
    for sample in samples:
        window = recording.window(sample.time - smooth_seconds, sample.time)
        assert window is not None  # the sample itself is in it
        times.append(sample.time - start)
        values.append(rank_imbalance(window).numpy())
    return np.array(times), np.stack(values)


def render(recording: Recording, directory: Path) -> ReportFiles:
    """Write the PNGs and ``report.html`` into ``directory``; raise InvalidInputError when the
    recording holds nothing to draw."""
    directory.mkdir(parents=True, exist_ok=True)
    images = [_imbalance_png(recording, directory / "imbalance.png")]
    windows = recording.before_and_after()
    if windows is not None:
        path = directory / "rank-load.png"
        plot_rank_loads(*windows, f"{recording.title}: rank load before and after", path)
        images.insert(0, path)
    if recording.rollouts:
        images.append(_moves_png(recording, directory / "moves.png"))
    page = directory / "report.html"
    page.write_text(_html(recording, images, windows))
    return ReportFiles(page, images)


def _imbalance_png(recording: Recording, path: Path) -> Path:
    times, values = imbalance_series(recording)
    start = recording.samples[0].time - recording.samples[0].seconds
    figure, (lines, heat) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, constrained_layout=True,
        gridspec_kw={"height_ratios": [3, 2]},
    )  # fmt: skip
    if values.shape[1] <= 12:
        for layer in range(values.shape[1]):
            lines.plot(times, values[:, layer], linewidth=1, alpha=0.8, label=f"layer {layer}")
        lines.legend(loc="upper right", fontsize="small", ncol=2)
    lines.plot(times, values.mean(axis=1), color="black", linewidth=2, label="mean")
    lines.axhline(1.0, color="grey", linewidth=0.8)
    for rollout in recording.rollouts:
        begin = (rollout.started or rollout.finished or start) - start
        end = (rollout.finished or recording.samples[-1].time) - start
        colour = RESULT_COLOURS[rollout.result]
        lines.axvspan(begin, max(end, begin + 0.3), color=colour, alpha=0.25)
        lines.annotate(rollout.revision, (begin, 1.0), fontsize="small", color=colour)
    lines.set_ylabel("imbalance (max / mean rank load)")
    lines.set_title(f"{recording.title}: imbalance per layer (green: rollout, red: aborted)")
    extent = (float(times[0]), float(times[-1]), values.shape[1] - 0.5, -0.5)
    image = heat.imshow(values.T, aspect="auto", cmap="magma_r", extent=extent,
                        interpolation="nearest", vmin=1.0)  # fmt: skip
    figure.colorbar(image, ax=heat, label="imbalance")
    heat.set_ylabel("MoE layer")
    heat.set_xlabel("seconds")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _moves_png(recording: Recording, path: Path) -> Path:
    rollouts = recording.rollouts
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(rollouts) + 2), 4),
                                constrained_layout=True)  # fmt: skip
    names = [r.revision for r in rollouts]
    bars = axis.bar(names, [r.moves for r in rollouts],
                    color=[RESULT_COLOURS[r.result] for r in rollouts])  # fmt: skip
    for bar, rollout in zip(bars, rollouts, strict=True):
        seconds = rollout.seconds
        label = f"{rollout.layers} layers" + (f"\n{seconds:.1f} s" if seconds is not None else "")
        if rollout.result == "aborted":
            label = f"aborted\n{rollout.reason or ''}"
        axis.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize="small")  # fmt: skip
    axis.set_ylabel("expert slots moved")
    axis.set_title("moves per rollout")
    axis.margins(y=0.3)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _html(
    recording: Recording, images: list[Path], windows: tuple[torch.Tensor, torch.Tensor] | None
) -> str:
    esc = html.escape
    figures = "\n".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(p.name)}</figcaption>'
        "</figure>"
        for p in images
    )
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{esc(str(cell))}</td>" for cell in (
            r.revision, r.result, r.reason or "", r.moves, r.layers, r.batches,
            "" if r.seconds is None else f"{r.seconds:.2f}",
            f"{r.prepare_seconds:.3f}", f"{r.commit_seconds:.3f}",
        )) + "</tr>"
        for r in recording.rollouts
    )  # fmt: skip
    summary = ""
    if windows is not None:
        before, after = (float(rank_imbalance(w).mean()) for w in windows)
        summary = (
            f"<p>Imbalance (max / mean rank load, mean over layers): <b>{before:.3f}</b> before "
            f"the first rollout, <b>{after:.3f}</b> after the last.</p>"
        )
    written = esc(time.strftime("%Y-%m-%d %H:%M:%S"))
    span = recording.samples[-1].time - recording.samples[0].time if recording.samples else 0
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(recording.title)}: EPLB report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}
img{{max-width:100%}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
th{{background:#f3f3f3}}</style></head><body>
<h1>{esc(recording.title)}</h1>
<p>{recording.layers} MoE layers on {recording.ranks} ranks; {len(recording.samples)} load samples
over {span:.0f} s; {len(recording.rollouts)} rollouts. Written {written}.</p>
{summary}
<h2>Rollouts</h2>
<table><tr><th>revision</th><th>result</th><th>reason</th><th>moves</th><th>layers</th>
<th>batches</th><th>seconds</th><th>prepare s</th><th>commit s</th></tr>
{rows}
</table>
<h2>Figures</h2>
{figures}
</body></html>
"""
