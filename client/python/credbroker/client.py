"""A thin client for brokerd's SearchService over its Unix socket.

It follows the Go client (client/ in this repository): the same default socket, the same token
sources in the same order, the same check of who serves the socket, and errors that carry
brokerd's machine-readable reason and retry delay.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import os
import random
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import grpc
from google.protobuf import json_format

from credbroker.v1 import search_pb2, search_pb2_grpc

TOKEN_ENV = "CREDBROKER_TOKEN"
SOCKET_ENV = "CREDBROKER_SOCKET"
SERVER_UID_ENV = "CREDBROKER_SERVER_UID"
ERROR_DOMAIN = "credbroker.dev"

# Reconnect quickly after brokerd restarts (a local socket is cheap to dial), as the Go client does:
# gRPC's default backoff grows to two minutes during a long outage. (Not min_reconnect_backoff_ms:
# in gRPC core that is the connect timeout, 20 s by default.)
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def default_socket(environ: Optional[Dict[str, str]] = None, euid: Optional[int] = None,
                   uid: Optional[int] = None) -> str:
    """The socket brokerd listens on when nobody said otherwise (client.DefaultSocket in Go).

    $CREDBROKER_SOCKET; $RUNTIME_DIRECTORY/broker.sock (its first entry); /run/credbroker/broker.sock
    for root; $XDG_RUNTIME_DIR/credbroker/broker.sock; /run/user/UID/credbroker/broker.sock.
    """
    env = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    uid = os.getuid() if uid is None else uid
    if env.get(SOCKET_ENV):
        return env[SOCKET_ENV]
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":", 1)[0]
    if runtime:
        return os.path.join(runtime, "broker.sock")
    if euid == 0:
        return "/run/credbroker/broker.sock"
    if env.get("XDG_RUNTIME_DIR"):
        return os.path.join(env["XDG_RUNTIME_DIR"], "credbroker", "broker.sock")
    return os.path.join("/run/user", str(uid), "credbroker", "broker.sock")


class BrokerError(Exception):
    """A failed call. Act on ``reason`` (README.md lists them with who must act), not on the message.

    code: the grpc.StatusCode. message: brokerd's text, for a human. reason: brokerd's stable name
    for the refusal (google.rpc.ErrorInfo in domain credbroker.dev), "" when the error did not come
    from brokerd. metadata: what the call used (token_id, tool, credential; never a secret).
    retry_delay: seconds brokerd says to wait before the same call can succeed (google.rpc.RetryInfo),
    or None when waiting is not known to help.
    """

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "",
                 metadata: Optional[Dict[str, str]] = None, retry_delay: Optional[float] = None):
        super().__init__(message or code.name)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay

    def __repr__(self) -> str:
        return f"BrokerError(code={self.code.name}, reason={self.reason!r}, message={self.message!r})"


class UntrustedServerError(BrokerError):
    """The socket is served by a uid that is not root, ours or in $CREDBROKER_SERVER_UID: nothing
    (no token, no request) was sent to it."""


@dataclasses.dataclass
class SearchResult:
    title: str
    url: str
    snippet: str
    position: int
    # The result object exactly as the upstream sent it, as plain Python values.
    raw: Dict[str, Any]


@dataclasses.dataclass
class SearchResponse:
    results: List[SearchResult]
    tool: str
    credential: str
    credential_version: int
    # Every top-level field of the upstream answer other than "results", as plain Python values.
    metadata: Dict[str, Any]
    cached: bool
    cache_age: Optional[float]  # seconds; None when not cached
    credits: int
    rate_limit_wait: Optional[float]  # seconds; None when the call did not wait


class Client:
    """A client for brokerd. Not connected until the first call.

    Tokens: ``token`` if given, else ``token_file`` (re-read whenever it changes), else
    $CREDBROKER_TOKEN, else tokens fetched by workload attestation (FetchToken: brokerd identifies
    this process; an operator registered it with ``brokerctl workload add``), renewed at about two
    thirds of their lifetime; a failed renewal keeps a still-valid token serving and is retried with
    backoff (200 ms doubling to 30 s). A call refused as UNAUTHENTICATED with a fetched token is
    retried once with a fresh one.

    Before the channel connects, the client checks who serves the socket (SO_PEERCRED): root, its
    own uid, a uid in $CREDBROKER_SERVER_UID or in ``server_uids``. Anything else raises
    UntrustedServerError and nothing is sent.
    """

    def __init__(self, socket_path: Optional[str] = None, *, token: Optional[str] = None,
                 token_file: Optional[str] = None, server_uids: Sequence[int] = (),
                 timeout: float = 30.0):
        self.socket_path = os.path.abspath(socket_path or default_socket())
        self.timeout = timeout
        self._trusted = _trusted_uids(os.environ.get(SERVER_UID_ENV, ""), server_uids)
        if token is not None:
            self._tokens: _TokenSource = _StaticToken(_checked_token(token, "token"))
        elif token_file is not None:
            self._tokens = _FileToken(token_file)
        elif os.environ.get(TOKEN_ENV, "").strip():
            self._tokens = _StaticToken(_checked_token(os.environ[TOKEN_ENV], "$" + TOKEN_ENV))
        else:
            self._tokens = _AttestedToken(self._fetch_token)
        self._channel = grpc.insecure_channel("unix:" + self.socket_path, options=_CHANNEL_OPTIONS)
        self._stub = search_pb2_grpc.SearchServiceStub(self._channel)
        # The server is checked again whenever the channel has been anything but READY since the
        # last check: grpcio has no dialer hook, so the check runs on its own connection just
        # before the channel's.
        self._state_lock = threading.Lock()
        self._checked = False
        self._channel.subscribe(self._on_state)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.unsubscribe(self._on_state)
        self._channel.close()

    def search(self, query: str, *, tool: str = "web_search", num_results: int = 0,
               no_cache: bool = False, google: Optional[Dict[str, Any]] = None,
               timeout: Optional[float] = None) -> SearchResponse:
        """Runs one search. ``google`` holds contract-B options (search_type, country_code,
        language, page, device, nfpr, light_request) for tool "google_search"."""
        req = search_pb2.SearchRequest(tool=tool, query=query, num_results=num_results,
                                       no_cache=no_cache)
        if google:
            req.google.CopyFrom(search_pb2.GoogleSearchOptions(**google))
        resp = self._call(self._stub.Search, req, timeout)
        return SearchResponse(
            results=[SearchResult(title=r.title, url=r.url, snippet=r.snippet, position=r.position,
                                  raw=_plain(r.raw)) for r in resp.results],
            tool=resp.tool,
            credential=resp.credential,
            credential_version=resp.credential_version,
            metadata=_plain(resp.metadata),
            cached=resp.cached,
            cache_age=resp.cache_age.ToTimedelta().total_seconds() if resp.HasField("cache_age") else None,
            credits=resp.credits,
            rate_limit_wait=(resp.rate_limit_wait.ToTimedelta().total_seconds()
                             if resp.HasField("rate_limit_wait") else None),
        )

    def whoami(self, timeout: Optional[float] = None) -> search_pb2.WhoAmIResponse:
        """Describes the token calls are made with (never its secret)."""
        return self._call(self._stub.WhoAmI, search_pb2.WhoAmIRequest(), timeout)

    # --- internals ---

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state != grpc.ChannelConnectivity.READY:
            with self._state_lock:
                self._checked = False

    def _check_server(self, timeout: Optional[float] = None) -> None:
        with self._state_lock:
            if self._checked:
                return
        check_server(self.socket_path, self._trusted,
                     deadline=time.monotonic() + (timeout or self.timeout))
        with self._state_lock:
            self._checked = True

    def _call(self, method: Callable[..., Any], req: Any, timeout: Optional[float]) -> Any:
        self._check_server(timeout)
        tok = self._tokens.token()
        try:
            return self._invoke(method, req, tok, timeout)
        except BrokerError as e:
            if e.code != grpc.StatusCode.UNAUTHENTICATED or not self._tokens.invalidate(tok):
                raise
        # A fetched token brokerd no longer knows (it restarted): once more with a fresh one.
        return self._invoke(method, req, self._tokens.token(), timeout)

    def _invoke(self, method: Callable[..., Any], req: Any, tok: Optional[str],
                timeout: Optional[float]) -> Any:
        md = [("authorization", "Bearer " + tok)] if tok else []
        try:
            # wait_for_ready: the channel's own connect, which check_server's just got through,
            # may find brokerd's accept queue full again; grpcio fails such a connect at once
            # (EAGAIN), and the call would fail with it. Waiting for the channel instead retries
            # until the deadline. A brokerd that is not running is reported by check_server, at
            # once, before the call.
            return method(req, metadata=md, timeout=timeout or self.timeout, wait_for_ready=True)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.socket_path) from None

    def _fetch_token(self) -> "tuple[str, float]":
        self._check_server()
        resp = self._invoke(self._stub.FetchToken, search_pb2.FetchTokenRequest(), None, None)
        return resp.token, resp.expires_at.seconds + resp.expires_at.nanos / 1e9


def _checked_token(tok: str, what: str) -> str:
    tok = tok.strip()
    # Never echo the token: it is a secret, and this may end up in a log.
    if not tok or any(not (0x20 <= ord(c) < 0x7F) for c in tok):
        raise ValueError(f"{what} is empty or holds characters that cannot be sent in a gRPC header; "
                         "is it a credbroker token?")
    return tok


def _trusted_uids(env_value: str, extra: Sequence[int]) -> List[int]:
    uids = [0, os.geteuid()]
    for f in filter(None, (p.strip() for p in env_value.split(","))):
        if not f.isdigit():
            raise ValueError(f"${SERVER_UID_ENV}={env_value!r}: {f!r} is not a numeric uid "
                             f"(want e.g. {SERVER_UID_ENV}=$(id -u credbroker))")
        uids.append(int(f))
    return uids + [int(u) for u in extra]


# A connect that finds brokerd's accept queue full (EAGAIN) is tried again after a pause growing from
# _BUSY_RETRY_MIN to _BUSY_RETRY_MAX seconds (jittered), until the call's deadline (busyRetryMin and
# busyRetryMax in the Go client).
_BUSY_RETRY_MIN = 0.001
_BUSY_RETRY_MAX = 0.050

# When set (tests), called each time a connect found brokerd's accept queue full.
_on_busy: Optional[Callable[[], None]] = None


def _connect(path: str, deadline: Optional[float]) -> socket.socket:
    """Connects to the socket, waiting its turn while brokerd's accept queue is full until deadline
    (time.monotonic()); None waits as long as it takes."""
    wait = _BUSY_RETRY_MIN
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Non-blocking: a blocking connect to a full queue waits with no deadline at all.
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError as e:
            s.close()
            if e.errno != errno.EAGAIN:
                raise
            # brokerd's accept queue is full: it is alive, and busy, or another local user is
            # connecting in a loop to keep it full, which needs no token. A connect to a Unix socket
            # then fails at once, where TCP's would wait its turn: wait it here, until the deadline,
            # or one such user would keep every client (an admin's too) out.
            if _on_busy is not None:
                _on_busy()
            pause = wait / 2 + random.uniform(0, wait)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise BrokerError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"brokerd at {path} is running, but its queue of new connections stayed full until the "
                    "deadline (brokerd overloaded, or a local user connecting in a loop); retry, or ask the "
                    "operator to check brokerd") from None
            time.sleep(pause)
            wait = min(2 * wait, _BUSY_RETRY_MAX)
            continue
        except BaseException:
            s.close()
            raise
        s.setblocking(True)
        return s


def check_server(path: str, trusted: Sequence[int], deadline: Optional[float] = None) -> None:
    """Refuses a socket served by a uid not in trusted (SO_PEERCRED: for a listening socket, who
    called listen(2): brokerd, or systemd under socket activation). While brokerd's accept queue is
    full it waits its turn until deadline (time.monotonic(); None: as long as it takes)."""
    try:
        s = _connect(path, deadline)
    except OSError as e:
        raise BrokerError(grpc.StatusCode.UNAVAILABLE,
                          f"cannot reach brokerd at {path}: is it running? ({e.strerror})") from None
    try:
        pid, uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    finally:
        s.close()
    if uid not in trusted:
        raise UntrustedServerError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the socket {path} is served by uid {uid} (pid {pid}), not root, your uid "
            f"{os.geteuid()} or ${SERVER_UID_ENV}; refusing to send a token or request (if that uid "
            f"is brokerd's, set {SERVER_UID_ENV}={uid})", reason="")


def error_from_rpc(e: grpc.RpcError, path: str = "") -> BrokerError:
    """Converts a grpc.RpcError into a BrokerError with the reason and retry delay brokerd sent in
    grpc-status-details-bin (a google.rpc.Status holding ErrorInfo and RetryInfo)."""
    code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
    message = e.details() if hasattr(e, "details") else str(e)
    reason, metadata, retry = "", {}, None
    for key, value in (e.trailing_metadata() or ()) if hasattr(e, "trailing_metadata") else ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            reason, metadata, retry = _status_details(value)
    if code == grpc.StatusCode.UNAVAILABLE and not reason and path:
        message = f"cannot reach brokerd at {path}: {message}"
    return BrokerError(code, message or "", reason, metadata, retry)


# google.rpc.Status is decoded by hand, from its wire format: Debian has no
# googleapis-common-protos or grpcio-status, and generating google/rpc here would register
# google.rpc.* in protobuf's global pool, where it collides with those packages in a program that
# also uses them. Only the fields below are read; anything else is skipped.
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def _status_details(raw: bytes) -> "tuple[str, Dict[str, str], Optional[float]]":
    reason, metadata, retry = "", {}, None
    try:
        for num, val in _fields(raw):
            if num != 3 or not isinstance(val, bytes):  # Status.details: repeated Any
                continue
            any_fields = dict((n, v) for n, v in _fields(val))
            type_url, body = any_fields.get(1, b""), any_fields.get(2, b"")
            if type_url == _ERROR_INFO.encode():
                r, domain, md = "", "", {}
                for n, v in _fields(body):
                    if n == 1:
                        r = v.decode()
                    elif n == 2:
                        domain = v.decode()
                    elif n == 3:  # map<string,string> entry
                        entry = dict(_fields(v))
                        md[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                if domain == ERROR_DOMAIN and not reason:
                    reason, metadata = r, md
            elif type_url == _RETRY_INFO.encode():
                for n, v in _fields(body):
                    if n == 1:  # retry_delay: google.protobuf.Duration
                        d = dict(_fields(v))
                        secs = _signed(d.get(1, 0)) + _signed(d.get(2, 0)) / 1e9
                        if secs > 0:
                            retry = secs
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "", {}, None  # not a google.rpc.Status: no details rather than a crash
    return reason, metadata, retry


def _signed(v: Any) -> int:
    return v - (1 << 64) if isinstance(v, int) and v >= 1 << 63 else int(v)


def _varint(buf: bytes, i: int) -> "tuple[int, int]":
    shift = result = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, i


def _fields(buf: bytes):
    """Yields (field number, value) of a protobuf message: ints for varints, bytes for
    length-delimited fields; fixed-width fields are skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
            yield num, v
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated field")
            yield num, buf[i:i + n]
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")


def _plain(msg: Any) -> Dict[str, Any]:
    """A google.protobuf.Struct as plain Python values. Struct keeps every number as a double; whole
    numbers come back as ints, as the upstream's JSON had them."""
    def fix(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
            return int(v)
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v
    return fix(json_format.MessageToDict(msg)) if msg is not None else {}


# --- token sources ---

class _TokenSource:
    def token(self) -> Optional[str]:
        raise NotImplementedError

    def invalidate(self, tok: Optional[str]) -> bool:
        """Drops tok if this source can get another; reports whether a retry may help."""
        return False


class _StaticToken(_TokenSource):
    def __init__(self, tok: str):
        self._tok = tok

    def token(self) -> str:
        return self._tok


# A token is under a hundred bytes: a larger token file is the wrong file (a log, say).
_MAX_TOKEN_FILE = 4096


def _read_token_file(path: str) -> str:
    """Reads a token file, at most _MAX_TOKEN_FILE bytes of it: a larger file (a log named by
    mistake, a device) is refused, not read whole and sent as the token. Errors never quote the
    contents."""
    # O_NONBLOCK for the open only: a FIFO nobody writes to is opened without waiting for a writer
    # and then reads as empty; a pipe with a writer (token_file="/dev/fd/N") is read to its end.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_TOKEN_FILE + 1)
    if len(raw) > _MAX_TOKEN_FILE:
        raise ValueError(f"token file {path} is larger than {_MAX_TOKEN_FILE} bytes; it should hold "
                         "only the token: is it the right file?")
    return raw.decode("utf-8", errors="replace")


class _FileToken(_TokenSource):
    """Re-reads the file when its size, modification time or inode changes, so a token rotated
    into it by another process is used by the next call."""

    def __init__(self, path: str):
        self._path = path
        self._stamp: Any = None
        self._tok = ""
        self._lock = threading.Lock()

    def token(self) -> str:
        st = os.stat(self._path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            if stamp != self._stamp or not self._tok:
                self._tok = _checked_token(_read_token_file(self._path), f"token file {self._path}")
                self._stamp = stamp
            return self._tok


# A fetched token with less life than this left when it arrives counts as a failed fetch: it can be
# neither used nor renewed sensibly (the Go client's minTokenLife).
_MIN_TOKEN_LIFE = 0.1
# Bounds, in seconds, of the backoff between failed renewals while the current token still serves
# (retryMin and retryMax in the Go client).
_RETRY_MIN = 0.2
_RETRY_MAX = 30.0


def _check_fetched(tok: str, expires: float, now: float) -> None:
    if not tok:
        raise BrokerError(grpc.StatusCode.INTERNAL, "brokerd answered FetchToken without a token; check "
                          "that brokerd and this client are of the same release")
    if expires <= 0:
        # Not a short ttl: no expiry at all (the field missing), which a brokerd of this release
        # never sends.
        raise BrokerError(grpc.StatusCode.FAILED_PRECONDITION, "brokerd issued a token without an expiry; it "
                          "cannot be renewed. Not a short registration --ttl: check that brokerd and this client are of the same release")
    left = expires - now
    if left < _MIN_TOKEN_LIFE:
        life = f"{left * 1000:.0f}ms left to live" if left > 0 else "already expired"
        try:
            expiry = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            expiry = str(expires)
        raise BrokerError(grpc.StatusCode.FAILED_PRECONDITION,
                          f"brokerd issued a token that had {life} when it arrived (expiry {expiry}); it "
                          "cannot be used or renewed. The workload registration's ttl is too short: ask the "
                          "operator to register this program again with a longer one "
                          "(`brokerctl workload add NAME ... --ttl 1h`)")


class _AttestedToken(_TokenSource):
    """Tokens fetched by attestation, renewed on the first call after two thirds of their lifetime;
    a token within 2 s (or a sixth of its lifetime) of expiry is never used. A failed renewal keeps
    the current token serving while it is usable, and the next renewal waits, backing off from
    200 ms to 30 s, instead of every call fetching again. ``now`` is the clock (tests)."""

    def __init__(self, fetch: Callable[[], "tuple[str, float]"], now: Callable[[], float] = time.time):
        self._fetch = fetch
        self._now = now
        self._lock = threading.Lock()
        self._tok = ""
        self._issued = self._expires = 0.0
        # After a failed renewal: no new one before this time, while the current token serves.
        self._retry_at = 0.0
        self._retry = _RETRY_MIN

    def _usable(self, now: float) -> bool:
        return bool(self._tok) and now + min(2.0, (self._expires - self._issued) / 6) < self._expires

    def token(self) -> str:
        with self._lock:
            now = self._now()
            life = self._expires - self._issued
            if self._tok and now < self._issued + life * 2 / 3:
                return self._tok
            if now < self._retry_at and self._usable(now):
                return self._tok
            try:
                tok, expires = self._fetch()
                _check_fetched(tok, expires, self._now())
            except BrokerError:
                # Renewal failed: the current token may still serve until it nears its expiry.
                now = self._now()
                if not self._usable(now):
                    raise
                self._retry_at = now + self._retry
                self._retry = min(self._retry * 2, _RETRY_MAX)
                return self._tok
            self._tok, self._issued, self._expires = tok, self._now(), expires
            self._retry_at, self._retry = 0.0, _RETRY_MIN
            return tok

    def invalidate(self, tok: Optional[str]) -> bool:
        with self._lock:
            if tok and tok == self._tok:
                self._tok = ""
                return True
            return False
