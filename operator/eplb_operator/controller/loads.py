"""The load window of a placement's pods, ``[L, E]``: from Prometheus, or scraped directly.

Both sources end in :func:`window_from_samples`, which checks the answer: every target pod
present, every (layer, expert) covered, ids in range, values finite and non-negative.  An
empty, partial, failed or malformed answer raises :class:`MetricsUnavailableError` with a
message for the status; it never becomes zeros (a zero load would plan a bad placement).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
import torch
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_client.parser import text_string_to_metric_families
from urllib3.util.retry import Retry

from eplb_operator.placement.views import rank_imbalance
from eplb_sidecar import metric_names

TOKENS = metric_names.EXPERT_TOKENS.name
# ``{namespace}``, ``{pods}`` and ``{window}`` are filled in (see fill_query); PromQL's own
# braces stay as written, in this query and in a ``spec.metrics.loadQuery``.
DEFAULT_QUERY = (
    "sum by (pod, layer, expert) (increase(" + TOKENS + '{namespace="{namespace}", '
    'pod=~"{pods}"}[{window}]))'
)


class MetricsUnavailableError(RuntimeError):
    """No usable load window; the message says why (for the MetricsUnavailable condition)."""


@dataclass(frozen=True)
class Sample:
    """Tokens of one (pod, layer, logical expert) in the window."""

    pod: str
    layer: int
    expert: int
    value: float


@dataclass
class LoadWindow:
    """``load`` ``[L, E]`` float64 summed over pods; ``pod_load`` pod → ``[L]`` tokens."""

    load: torch.Tensor
    pod_load: dict[str, torch.Tensor]

    def observed_imbalance(self, groups: Iterable[Iterable[str]]) -> torch.Tensor:
        """``[L]``: max / mean of pod loads within each EP group, averaged over groups.

        The pods of a group are its ranks, so this is the imbalance the engines lived with.
        """
        per_group = []
        for members in groups:
            loads = torch.stack([self.pod_load[pod] for pod in members], dim=1)  # [L, R]
            per_group.append(rank_imbalance(loads))
        return torch.stack(per_group).mean(dim=0)


def window_from_samples(
    samples: list[Sample], pods: list[str], layers: int, experts: int
) -> LoadWindow:
    """Check the samples and sum them into a :class:`LoadWindow`."""
    if not samples:
        raise MetricsUnavailableError(f"no {TOKENS} series for pods {sorted(pods)}")
    wanted = set(pods)
    load = torch.zeros(layers, experts, dtype=torch.float64)
    seen = torch.zeros(layers, experts, dtype=torch.bool)
    pod_load = {pod: torch.zeros(layers, dtype=torch.float64) for pod in pods}
    for sample in samples:
        if sample.pod not in wanted:
            continue
        if not (0 <= sample.layer < layers and 0 <= sample.expert < experts):
            raise MetricsUnavailableError(
                f"pod {sample.pod} reports layer {sample.layer}, expert {sample.expert}; the "
                f"placement has {layers} layers of {experts} experts (wrong model?)"
            )
        if not math.isfinite(sample.value) or sample.value < 0:
            raise MetricsUnavailableError(
                f"pod {sample.pod}: layer {sample.layer} expert {sample.expert} has load "
                f"{sample.value}"
            )
        load[sample.layer, sample.expert] += sample.value
        seen[sample.layer, sample.expert] = True
        pod_load[sample.pod][sample.layer] += sample.value
    reported = {s.pod for s in samples}
    missing_pods = sorted(wanted - reported)
    if missing_pods:
        raise MetricsUnavailableError(f"no load series from pods {missing_pods}")
    if not bool(seen.all()):
        layer, expert = (int(v) for v in (~seen).nonzero()[0])
        raise MetricsUnavailableError(
            f"partial answer: {int((~seen).sum())} (layer, expert) pairs have no series, "
            f"e.g. layer {layer} expert {expert}"
        )
    return LoadWindow(load=load, pod_load=pod_load)


def _label_int(labels: dict[str, str], name: str, origin: str) -> int:
    try:
        return int(labels[name])
    except (KeyError, ValueError):
        raise MetricsUnavailableError(
            f"{origin}: a series lacks an integer {name!r} label: {labels}"
        ) from None


def pod_regex(pods: list[str]) -> str:
    """Pod names as one RE2 alternation inside a PromQL string literal: escaped for the
    regex, then for the string."""
    return "|".join(re.escape(pod) for pod in sorted(pods)).replace("\\", "\\\\")


def fill_query(template: str, values: dict[str, str]) -> str:
    """``template`` with each placeholder replaced, in one pass (a value that happens to
    contain a placeholder's text stays as it is); every other brace is PromQL's."""
    pattern = "|".join(re.escape(name) for name in values)
    return re.sub(pattern, lambda match: values[match.group(0)], template)


class PrometheusSource:
    """One PromQL query per call for the whole window, through prometheus-api-client."""

    def __init__(self, url: str, timeout: float, query: str | None = None) -> None:
        self.url = url
        self.timeout = timeout
        self.query_template = query or DEFAULT_QUERY
        # One quick retry: a reconcile comes again soon, and a down Prometheus must not
        # hold it for urllib3's default backoff.
        retry = Retry(total=1, backoff_factor=0.2, status_forcelist=[502, 503, 504])
        self._client = PrometheusConnect(url=url, disable_ssl=True, timeout=timeout, retry=retry)

    def query(self, namespace: str, pods: list[str], window_seconds: int) -> str:
        return fill_query(
            self.query_template,
            {"{namespace}": namespace, "{pods}": pod_regex(pods), "{window}": f"{window_seconds}s"},
        )

    async def window(
        self, namespace: str, pods: list[str], window_seconds: int, layers: int, experts: int
    ) -> LoadWindow:
        samples = await self.samples(namespace, pods, window_seconds)
        return window_from_samples(samples, pods, layers, experts)

    async def samples(self, namespace: str, pods: list[str], window_seconds: int) -> list[Sample]:
        """Tokens per (pod, layer, expert) in the window, as Prometheus answers them."""
        query = self.query(namespace, pods, window_seconds)
        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(self._client.custom_query, query), self.timeout + 1
            )
        except (PrometheusApiClientException, OSError, TimeoutError, ValueError) as error:
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} failed: {type(error).__name__}: {error}"
            ) from error
        except Exception as error:  # requests raises its own hierarchy, JSON errors too
            raise MetricsUnavailableError(
                f"Prometheus at {self.url} answered something unusable: "
                f"{type(error).__name__}: {error}"
            ) from error
        if not isinstance(result, list):
            raise MetricsUnavailableError(
                f"Prometheus returned {type(result).__name__}, not a vector"
            )
        samples = []
        for series in result:
            try:
                labels, (_, value) = series["metric"], series["value"]
                number = float(value)
            except (KeyError, TypeError, ValueError) as error:
                raise MetricsUnavailableError(
                    f"Prometheus returned a malformed series: {series!r:.200}"
                ) from error
            samples.append(
                Sample(
                    pod=str(labels.get("pod", "")),
                    layer=_label_int(labels, "layer", "Prometheus"),
                    expert=_label_int(labels, "expert", "Prometheus"),
                    value=number,
                )
            )
        return samples


Snapshot = dict[tuple[int, int, int], float]  # (layer, expert, slot) → counter value


@dataclass
class ScrapeSource:
    """No Prometheus (the local sandbox): scrape each sidecar's ``/metrics`` directly.

    The increase over the window is computed the way PromQL's ``increase`` treats counters:
    against the newest scrape at least ``window`` old (or zero when there is none yet); a
    series that is new or went down (a slot changed expert) counts from zero.
    """

    timeout: float
    history: dict[str, deque[tuple[float, Snapshot]]] = field(default_factory=dict)

    async def window(
        self, urls: dict[str, str], window_seconds: int, layers: int, experts: int
    ) -> LoadWindow:
        """``urls``: pod → its sidecar's metrics URL."""
        samples = await self.samples(urls, window_seconds)
        return window_from_samples(samples, list(urls), layers, experts)

    async def samples(self, urls: dict[str, str], window_seconds: int) -> list[Sample]:
        """Each pod's increase per (layer, expert) over the window (``urls`` as for window)."""
        now = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            snapshots = await asyncio.gather(
                *(self._scrape(session, pod, url) for pod, url in urls.items())
            )
        samples: list[Sample] = []
        for pod, snapshot in zip(urls, snapshots, strict=True):
            history = self.history.setdefault(pod, deque())
            history.append((now, snapshot))
            while len(history) > 2 and history[1][0] <= now - window_seconds:
                history.popleft()
            base: Snapshot = history[0][1] if history[0][0] <= now - window_seconds else {}
            totals: dict[tuple[int, int], float] = {}
            for (layer, expert, slot), value in snapshot.items():
                before = base.get((layer, expert, slot), 0.0)
                increase = value - before if value >= before else value
                totals[(layer, expert)] = totals.get((layer, expert), 0.0) + increase
            samples += [Sample(pod, layer, expert, v) for (layer, expert), v in totals.items()]
        return samples

    async def _scrape(self, session: aiohttp.ClientSession, pod: str, url: str) -> Snapshot:
        try:
            async with session.get(f"{url}/metrics") as response:
                response.raise_for_status()
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise MetricsUnavailableError(
                f"could not scrape pod {pod} at {url}: {type(error).__name__}: {error}"
            ) from error
        snapshot: Snapshot = {}
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError as error:
            raise MetricsUnavailableError(
                f"pod {pod} served unparsable metrics: {error}"
            ) from error
        for family in families:
            for sample in family.samples:
                if sample.name == TOKENS:
                    # A load source's series has no slot (its engine counts logical experts).
                    labels = sample.labels
                    slot = _label_int(labels, "slot", f"pod {pod}") if "slot" in labels else -1
                    key = (
                        _label_int(sample.labels, "layer", f"pod {pod}"),
                        _label_int(sample.labels, "expert", f"pod {pod}"),
                        slot,
                    )
                    snapshot[key] = float(sample.value)
        return snapshot
