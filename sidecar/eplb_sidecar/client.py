"""An asyncio client of the control API (what the operator, tests and benchmarks call)."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from eplb_sidecar.api import (
    API_PREFIX,
    AbortRequest,
    CommitRequest,
    Info,
    PrepareRequest,
    Problem,
    Result,
)

Model = TypeVar("Model", bound=BaseModel)

PROBLEM_BYTES = 64 * 1024  # of a refusal's body (a Problem is far smaller)
QUOTED_BYTES = 120  # of a foreign body, in the error message


class SidecarError(RuntimeError):
    """The sidecar refused a call (``status``, ``problem``) or could not be reached (0)."""

    def __init__(self, url: str, status: int, problem: Problem) -> None:
        super().__init__(f"{url}: {status} {problem.reason}: {problem.message}")
        self.url = url
        self.status = status
        self.problem = problem


class SidecarClient:
    """One sidecar's control API, authenticated with a bearer token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout  # for info; prepare and commit add their own timeout to it
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> SidecarClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def info(self, placement: bool = False) -> Info:
        query = "?placement=true" if placement else ""
        return await self._call("GET", f"/info{query}", None, Info, self.timeout)

    async def prepare(self, request: PrepareRequest) -> Result:
        return await self._call(
            "POST", "/prepare", request, Result, self.timeout + request.timeout_seconds
        )

    async def commit(self, request: CommitRequest) -> Result:
        return await self._call(
            "POST", "/commit", request, Result, self.timeout + request.timeout_seconds
        )

    async def abort(self, request: AbortRequest) -> Result:
        return await self._call("POST", "/abort", request, Result, self.timeout)

    async def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None,
        answer: type[Model],
        timeout: float,
    ) -> Model:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        url = f"{self.base_url}{API_PREFIX}{path}"
        headers = {"Authorization": f"Bearer {self.token}"}
        payload: bytes | None = None
        if body is not None:
            # pydantic's own JSON encoder: a third of the CPU of a dict dump plus json.dumps,
            # the operator's cost per pod in every barrier round.
            payload = body.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        try:
            async with self._session.request(
                method,
                url,
                data=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                if resp.status != 200:
                    data = await resp.content.read(PROBLEM_BYTES)
                    raise SidecarError(url, resp.status, _problem(resp.status, data))
                data = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            raise SidecarError(
                url, 0, Problem(reason="Unreachable", message=f"{type(error).__name__}: {error}")
            ) from error
        try:
            return answer.model_validate_json(data)
        except ValidationError:
            raise SidecarError(url, 200, _not_a_sidecar(200, data)) from None


def _problem(status: int, body: bytes) -> Problem:
    """A refusal's Problem; whatever else answered (a proxy, another server on the port)
    becomes an ``UnexpectedAnswer`` that quotes the start of its body."""
    try:
        return Problem.model_validate_json(body)
    except ValidationError:
        return _not_a_sidecar(status, body)


def _not_a_sidecar(status: int, body: bytes) -> Problem:
    quoted = body[:QUOTED_BYTES].decode("utf-8", "replace")
    return Problem(
        reason="UnexpectedAnswer",
        message=f"HTTP {status} with a body that is not the sidecar's (another server on "
        f"the port?): {quoted!r}",
    )
