"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that one operator acts at a time.

client-go's pattern, through ``kubernetes_asyncio.leaderelection`` (its record handling and
its optimistic concurrency: every write is a replace guarded by the Lease's
resourceVersion, so two candidates cannot both take an expired Lease):
- a candidate takes the Lease when it is free, expired (its holder renewed nothing for
  ``lease_duration`` seconds, measured on the candidate's own clock from when it last saw
  the record change, so clock skew does not matter) or already its own (the same pod,
  restarted);
- the holder renews every ``retry_period``; once no renewal has succeeded for
  ``renew_deadline`` (< ``lease_duration``) it has lost, and must stop acting before anyone
  else may take over;
- a holder that stops gracefully gives the Lease up (the holder emptied), so a follower takes
  over at its next retry instead of after the lease duration.

Why not kopf's peering: operators of equal priority all freeze ("If two operators run with
the same priority, all operators issue a warning and freeze, leaving the cluster
unserved", docs.kopf.dev/en/latest/peering), and unequal priorities cannot be given to the
replicas of one Deployment; peering also needs CRDs of its own.  A Lease is what the
control plane's own controllers use.

Two things are added to the library: every API call has a deadline (a renewal hung on a
slow API server must not keep a leader acting past its deadline), and the renew loop is
bounded by ``renew_deadline`` as a whole, as in client-go.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.leaderelection.electionconfig import Config
from kubernetes_asyncio.leaderelection.leaderelection import LeaderElection
from kubernetes_asyncio.leaderelection.resourcelock.leaselock import LeaseLock

log = logging.getLogger("eplb_operator.election")


@dataclass(frozen=True)
class ElectionSettings:
    """Where the Lease is and how long it lasts (client-go's defaults)."""

    lease: str
    namespace: str
    identity: str  # the pod's name: unique among the candidates, kept across restarts
    lease_duration: int = 15  # the Lease's leaseDurationSeconds: whole seconds
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problem(self) -> str | None:
        """Why these settings cannot work (the library's own checks), else None."""
        if not self.lease or not self.namespace or not self.identity:
            return "the lease, its namespace and this candidate's identity must be set"
        if self.retry_period < 1:
            return "the retry period must be at least 1 s"
        if self.renew_deadline <= 1.2 * self.retry_period:
            return "the renew deadline must exceed 1.2 × the retry period"
        if self.lease_duration <= self.renew_deadline:
            return "the lease duration must exceed the renew deadline"
        return None


async def _nothing() -> None:
    """The library's start callback, unused: :class:`LeaseElector` drives the phases."""


class LeaseElector:
    """One candidate.  ``await acquire()`` returns once it leads; ``await hold()`` returns
    when it has lost; ``await release()`` gives the Lease up."""

    def __init__(self, settings: ElectionSettings, api: client.ApiClient) -> None:
        problem = settings.problem()
        if problem is not None:
            raise ValueError(f"leader election: {problem}")
        self.settings = settings
        self._api = api
        lock = LeaseLock(settings.lease, settings.namespace, settings.identity, api)
        self._election = LeaderElection(
            Config(
                lock,
                settings.lease_duration,
                settings.renew_deadline,
                settings.retry_period,
                onstarted_leading=_nothing,
                onstopped_leading=None,  # type: ignore[arg-type]  # optional in the library
            )
        )
        self.holder: str | None = None  # the holder last seen (None: nobody, or not yet read)

    @property
    def leading(self) -> bool:
        return self.holder == self.settings.identity

    async def acquire(self) -> None:
        """Follow until this candidate holds the Lease."""
        while not await self._attempt():
            await asyncio.sleep(self.settings.retry_period)

    async def hold(self) -> None:
        """Renew the Lease every retry period; return once a renewal has not succeeded within
        the renew deadline (the Lease is lost, or may be by the time anyone could act)."""
        while True:
            deadline = time.monotonic() + self.settings.renew_deadline
            while not await self._attempt(deadline - time.monotonic()):
                # Seen held by someone else: lost for certain, no deadline to wait out.
                taken = self.holder not in (None, self.settings.identity)
                if taken or time.monotonic() + self.settings.retry_period >= deadline:
                    log.error(
                        "%s: Lease %s/%s %s: leadership lost", self.settings.identity,
                        self.settings.namespace, self.settings.lease,
                        f"taken by {self.holder}" if taken
                        else f"not renewed within {self.settings.renew_deadline:g} s",
                    )  # fmt: skip
                    self.holder = None
                    return
                await asyncio.sleep(self.settings.retry_period)
            await asyncio.sleep(self.settings.retry_period)

    async def release(self) -> None:
        """Give the Lease up if it is still ours (a compare-and-swap: a Lease someone else
        took meanwhile is left alone)."""
        leases = client.CoordinationV1Api(self._api)
        settings = self.settings
        try:
            lease = await leases.read_namespaced_lease(
                settings.lease, settings.namespace, _request_timeout=settings.renew_deadline
            )
            if lease.spec is None or lease.spec.holder_identity != settings.identity:
                return
            lease.spec.holder_identity = None  # type: ignore[assignment]  # omitted: nobody
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            await leases.replace_namespaced_lease(
                settings.lease, settings.namespace, lease, _request_timeout=settings.renew_deadline
            )
            log.info("%s: gave up Lease %s/%s", settings.identity, settings.namespace,
                     settings.lease)  # fmt: skip
        except (ApiException, OSError, TimeoutError) as error:  # it expires on its own
            log.warning("%s: could not give up the Lease: %s", settings.identity, error)
        self.holder = None

    async def _attempt(self, timeout: float | None = None) -> bool:
        """One try to take or renew the Lease, within ``timeout`` (default: the renew
        deadline); any failure is a failed try, never an exception."""
        limit = self.settings.renew_deadline if timeout is None else max(0.1, timeout)
        try:
            taken = await asyncio.wait_for(self._election.try_acquire_or_renew(), limit)
        except Exception as error:  # network, timeout, an odd answer: a failed try
            log.warning("%s: Lease %s/%s not reached: %s", self.settings.identity,
                        self.settings.namespace, self.settings.lease, error)  # fmt: skip
            taken = False
        record = self._election.observed_record
        holder = self.settings.identity if taken else (record.holder_identity if record else None)
        if holder != self.holder:
            lease = f"Lease {self.settings.namespace}/{self.settings.lease}"
            if holder == self.settings.identity:
                log.info("%s: leading (%s)", holder, lease)
            else:
                log.info("%s: following %s (%s)", self.settings.identity, holder or "nobody", lease)
            self.holder = holder
        return taken
