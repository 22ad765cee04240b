"""Safe HTTP for downloads: which addresses may be contacted, checked where the connection is made.

A server that fetches URLs on behalf of its users (the studio's import) must not be turned into a probe of
its own network: with ``private_ok=False`` an address in a private, loopback, link-local, shared or other
non-global range is refused unless its exact ``host:port`` is in ``allow_hosts``.

The check lives in the transport, not before it: :class:`GuardedBackend` (an httpcore network backend) resolves
the name itself, checks every resolved address and connects to a checked address only, so a DNS answer that
changes between a check and the connect (rebinding) cannot slip through, and every redirect hop, which opens
its own connection, is checked the same way. TLS still verifies the certificate against the *name* (httpcore
passes the URL's host as the server name), and proxies from the environment are never used (the client is
built with ``trust_env=False`` around this transport).

The same streams enforce a per-request *deadline* (:func:`deadline`): every socket read and write gets at most
the time left, so a body that drips one byte a second ends when the deadline does, whatever the per-read
timeout.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpcore
import httpx

from ..errors import ImclassError

_local = threading.local()


class RefusedAddress(ImclassError):
    """A URL's host resolves only to addresses this download may not contact."""


class DeadlineExceeded(httpcore.TimeoutException):
    """The whole request (connect, headers, body, all redirect hops) took longer than its deadline."""


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Requests made by this thread inside the block end at most ``seconds`` from now."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = None if seconds is None else time.monotonic() + seconds
    try:
        yield
    finally:
        _local.deadline = previous


def _clamp(timeout: float | None) -> float | None:
    """``timeout`` cut to the time left before this thread's deadline; raises once it has passed."""
    end = getattr(_local, "deadline", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("deadline exceeded")
    return left if timeout is None else min(timeout, left)


# ---- which addresses ----------------------------------------------------------------------------------------

def address_kind(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """``None`` for a public (globally routable unicast) address, else what it is (``"loopback"``, ...)."""
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address carried in IPv6 is judged as that address
        ip = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None) or ip
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:
        return "non-global"  # shared address space (100.64/10), documentation ranges, ...
    return None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class AddressPolicy:
    """``private_ok``: any address may be contacted (the user's own CLI). Otherwise only public addresses and
    the exact ``host:port`` entries of ``allow_hosts`` (a name as written in the URL, or an address)."""

    private_ok: bool = True
    allow_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def make(cls, private_ok: bool = True, allow_hosts: Iterable[str] | None = None) -> AddressPolicy:
        return cls(private_ok, frozenset(h.strip().lower() for h in (allow_hosts or ()) if h.strip()))

    def refusal(self, host: str, port: int, ip: str) -> str | None:
        """Why connecting to ``ip`` (resolved from ``host``) on ``port`` is refused, or ``None``."""
        if self.private_ok:
            return None
        if _host_port(host.lower(), port) in self.allow_hosts or _host_port(ip, port) in self.allow_hosts:
            return None
        kind = address_kind(ipaddress.ip_address(ip.split("%", 1)[0]))
        if kind is None:
            return None
        where = host if host == ip else f"{host} ({ip})"
        return (f"refused: {where} is a {kind} address; private addresses are not fetched here "
                f"(allow_hosts=['{_host_port(host, port)}'] allows it)")

    def resolve(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """The addresses of ``host`` this policy permits, as ``(family, sockaddr)``; raises when none is."""
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise httpcore.ConnectError(f"cannot resolve {host}: {e.strerror or e}") from None
        allowed, reasons = [], []
        for family, _, _, _, sockaddr in infos:
            why = self.refusal(host, port, sockaddr[0])
            if why is None:
                allowed.append((family, sockaddr))
            else:
                reasons.append(why)
        if not allowed:
            raise RefusedAddress(reasons[0] if reasons else f"refused: {host} has no address")
        return allowed


# ---- the transport ------------------------------------------------------------------------------------------

class _Stream(httpcore.NetworkStream):
    """A connected socket whose reads and writes never outlast the calling thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, _clamp(timeout)))

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, connecting only to addresses that ``policy`` permits (resolved here)."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        last: Exception | None = None
        for _family, sockaddr in self.policy.resolve(host, port):
            try:  # the checked address itself, never the name again
                stream = self._inner.connect_tcp(sockaddr[0], port, _clamp(timeout), local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as e:
                last = e
                continue
            return _Stream(stream)
        assert last is not None
        raise last

    def connect_unix_socket(self, *args, **kwargs):  # never: only http(s) URLs are fetched
        raise httpcore.ConnectError("unix sockets are not fetched")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


_EXCEPTIONS = (  # most specific first
    (httpcore.ConnectTimeout, httpx.ConnectTimeout), (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout), (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError), (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError), (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError), (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.NetworkError, httpx.NetworkError), (httpcore.TimeoutException, httpx.TimeoutException),
)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except (DeadlineExceeded, RefusedAddress):
        raise
    except httpcore.TimeoutException as e:
        for src, dst in _EXCEPTIONS:
            if isinstance(e, src):
                raise dst(str(e)) from e
        raise
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as e:
        for src, dst in _EXCEPTIONS:
            if isinstance(e, src):
                raise dst(str(e)) from e
        raise httpx.TransportError(str(e)) from e


class _Body(httpx.SyncByteStream):
    def __init__(self, stream):
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _mapped():
            yield from self._stream

    def close(self) -> None:
        if hasattr(self._stream, "close"):
            self._stream.close()


class GuardedTransport(httpx.BaseTransport):
    """An httpx transport over an httpcore connection pool whose every connection goes through
    :class:`GuardedBackend` (HTTP/1.1; certificates verified with the system's or certifi's roots)."""

    def __init__(self, policy: AddressPolicy, *, max_connections: int = 64):
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), max_connections=max_connections,
                                             max_keepalive_connections=max_connections, keepalive_expiry=5.0,
                                             network_backend=GuardedBackend(policy))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _mapped():
            resp = self._pool.handle_request(req)
        return httpx.Response(status_code=resp.status, headers=resp.headers, stream=_Body(resp.stream),
                              extensions=resp.extensions)

    def close(self) -> None:
        self._pool.close()


def client(policy: AddressPolicy, *, connect_timeout: float, read_timeout: float, max_connections: int,
           user_agent: str) -> httpx.Client:
    """An ``httpx.Client`` for downloads: guarded transport, no environment proxies or ``.netrc``, redirects
    left to the caller (each hop is a new request, so it is checked again)."""
    timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=read_timeout, pool=None)
    return httpx.Client(transport=GuardedTransport(policy, max_connections=max_connections),
                        timeout=timeout, follow_redirects=False, trust_env=False,
                        headers={"User-Agent": user_agent, "Accept": "image/*,*/*;q=0.5",
                                 "Accept-Encoding": "identity"})
