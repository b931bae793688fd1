"""The load window ``[L, E]`` of engines whose sidecars export a load source.

Their series are labelled with the engine's layer id (``spec.model.layerIds``) and count
logical experts.  Not every pod reports: SGLang's recorder dumps the whole EP group on rank
0's node, vLLM writes its statistics on rank 0, TensorRT-LLM on every rank its own tokens;
so each group needs one reporting pod or more, and the window sums whatever pods report.
"""

from __future__ import annotations

from typing import Any

import torch

from eplb_core.formats.layers import span
from eplb_operator.api.v1alpha1 import ExpertPlacementSpec
from eplb_operator.controller.endpoints import endpoints
from eplb_operator.controller.loads import (
    MetricsUnavailableError,
    PrometheusSource,
    Sample,
    ScrapeSource,
    window_from_samples,
)


def engine_window(
    samples: list[Sample], groups: dict[str, list[str]], layer_ids: list[int], experts: int
) -> torch.Tensor:
    """``[L, E]`` tokens of ``groups`` (group → its pods) from samples whose ``layer`` is an
    engine layer id, ``layer_ids`` ``[L]`` the spec's; MetricsUnavailableError naming what
    is missing or unknown."""
    index = {layer_id: row for row, layer_id in enumerate(layer_ids)}
    wanted = {pod for pods in groups.values() for pod in pods}
    mapped = []
    for sample in samples:
        if sample.pod not in wanted:
            continue
        if sample.layer not in index:
            raise MetricsUnavailableError(
                f"pod {sample.pod} reports layer {sample.layer}, which is not an MoE layer of "
                f"spec.model.layerIds ({span(layer_ids)}); check its sidecar's --layer-ids"
            )
        mapped.append(Sample(sample.pod, index[sample.layer], sample.expert, sample.value))
    reporting = {sample.pod for sample in mapped}
    silent = sorted(group for group, pods in groups.items() if not reporting & set(pods))
    if silent:
        raise MetricsUnavailableError(
            f"no pod of groups {silent} reports load (is the engine recording, and its "
            "sidecar's --source right?)"
        )
    return window_from_samples(mapped, sorted(reporting), len(layer_ids), experts).load


async def read_engine_window(
    spec: ExpertPlacementSpec,
    namespace: str,
    pods: list[dict[str, Any]],
    groups: dict[str, list[str]],
    scrape: ScrapeSource,
) -> torch.Tensor:
    """The window of ``spec.online`` over ``groups``' pods: from Prometheus when the spec
    names one, else scraped from their sidecars (``scrape`` keeps the history)."""
    assert spec.online is not None
    seconds = spec.online.window_seconds
    names = sorted(pod for members in groups.values() for pod in members)
    if spec.metrics.prometheus_url:
        source = PrometheusSource(
            spec.metrics.prometheus_url, spec.metrics.timeout_seconds, spec.metrics.load_query
        )
        samples = await source.samples(namespace, names, seconds)
    else:
        # Ports as endpoints() finds them (spec, or the pod's annotations); one entry a pod.
        found = endpoints(pods, {"": dict(enumerate(names))}, spec)
        if found.problems or found.not_ready:
            raise MetricsUnavailableError("; ".join(found.problems) or f"pods {found.not_ready} "
                                          "have no IP yet")  # fmt: skip
        urls = {pod.name: pod.metrics_url for pod in found.groups.get("", {}).values()}
        samples = await scrape.samples(urls, seconds)
    return engine_window(samples, groups, spec.model.engine_layer_ids(), spec.model.experts)
