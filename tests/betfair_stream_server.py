"""Local Betfair servers for tests: Exchange Stream API (TLS) and identity/betting API (HTTPS).

Only the network edge is fake; the protocols are Betfair's own, so the real client code
(betfairlightweight, `connectors.betfair_live`, `connectors.betfair_catalogue`) runs unchanged.

Stream server (`BetfairStreamServer`): CRLF-delimited JSON over TLS. On connect it sends
`{"op":"connection","connectionId":...}`; it answers `authentication`, `heartbeat` and
`marketSubscription` requests with `status` messages, then serves the `mcm` lines of recorded
files (`../shared/data/betfair/`) rewritten to the live layout: `id` = the subscription id,
`ct: SUB_IMAGE` first, `img: true` on each market's first change, server-issued `initialClk`/`clk`
tokens, `ct: HEARTBEAT` messages when idle. A resubscription carrying `initialClk` + `clk`
resumes right after the change that `clk` names, its first message flagged `ct: RESUB_DELTA`,
so a client that stores the tokens sees no gap and no duplicate. `drop_after` makes the server
cut connections mid-stream. Market filters, data-field filters, ladder levels and conflation
are applied as Betfair documents them; segmentation is accepted but never used.

API server (`BetfairApiServer`): `POST /api/certlogin` (client-certificate login),
`/api/login` (interactive), `/api/keepAlive`, and the JSON-RPC betting endpoint
`/exchange/betting/json-rpc/v1` answering `SportsAPING/v1.0/listMarketCatalogue` from real
catalogue JSON and `SportsAPING/v1.0/listMarketBook` from market books built out of recorded
market definitions (a closing definition gives the settled runner statuses and BSP). Sessions
it issues are the ones the stream server accepts.
"""

from __future__ import annotations

import asyncio
import base64
import bz2
import datetime as dt
import gzip
import heapq
import http.server
import ipaddress
import itertools
import os
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors.settings import Settings

CRLF = b"\r\n"

# marketDataFilter field -> the runner-change keys it delivers (Exchange Stream API spec).
RUNNER_FIELD_KEYS: dict[str, tuple[str, ...]] = {
    "EX_BEST_OFFERS_DISP": ("bdatb", "bdatl"),
    "EX_BEST_OFFERS": ("batb", "batl"),
    "EX_ALL_OFFERS": ("atb", "atl"),
    "EX_TRADED": ("trd",),
    "EX_TRADED_VOL": ("tv",),
    "EX_LTP": ("ltp",),
    "EX_MARKET_DEF": (),
    "SP_TRADED": ("spb", "spl"),
    "SP_PROJECTED": ("spn", "spf"),
}
LEVEL_KEYS = frozenset({"batb", "batl", "bdatb", "bdatl"})  # [level, price, size]
PRICE_KEYS = frozenset({"atb", "atl", "trd", "spb", "spl"})  # [price, size]
HEARTBEAT_BOUNDS_MS = (500, 30_000)
CONFLATE_BOUNDS_MS = (0, 120_000)
DEFAULT_HEARTBEAT_MS = 5_000


# --------------------------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsMaterial:
    """A throw-away CA, a server certificate for localhost and a client certificate.

    `certs_dir` holds only the client pair (`client.crt`, `client.key`), the layout
    betfairlightweight expects for certificate login.
    """

    ca_file: Path
    server_cert: Path
    server_key: Path
    certs_dir: Path
    client_cert: Path
    client_key: Path

    def server_context(self, *, request_client_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.server_cert, self.server_key)
        if request_client_cert:
            context.load_verify_locations(self.ca_file)
            context.verify_mode = ssl.CERT_OPTIONAL
        return context


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    is_ca: bool = False,
    server_names: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    else:
        assert issuer_key is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    if server_names:
        alt_names: list[x509.GeneralName] = []
        for host in server_names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                alt_names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_tls_material(directory: Path) -> TlsMaterial:
    """Generate a CA plus server (localhost, 127.0.0.1) and client certificates in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("velo test CA", ca_key, None, None, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        "localhost",
        server_key,
        ca_cert.subject,
        ca_key,
        server_names=("localhost", "127.0.0.1"),
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _issue("velo test client", client_key, ca_cert.subject, ca_key, client=True)

    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    server_cert_file = directory / "server.pem"
    server_cert_file.write_bytes(server_cert.public_bytes(pem))
    server_key_file = directory / "server.key.pem"
    _write_key(server_key, server_key_file)
    certs_dir = directory / "client-certs"
    certs_dir.mkdir(exist_ok=True)
    client_cert_file = certs_dir / "client.crt"
    client_cert_file.write_bytes(client_cert.public_bytes(pem))
    client_key_file = certs_dir / "client.key"
    _write_key(client_key, client_key_file)
    return TlsMaterial(
        ca_file, server_cert_file, server_key_file, certs_dir, client_cert_file, client_key_file
    )


# --------------------------------------------------------------------------------------------
# Recorded feed
# --------------------------------------------------------------------------------------------


def read_stream_lines(path: Path) -> list[bytes]:
    """Non-blank lines of a Betfair stream file (plain, .bz2 or .gz)."""
    raw = path.read_bytes()
    if raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    elif raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return [line.strip() for line in raw.splitlines() if line.strip()]


def market_changes_by_market(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Per market, the `mc` elements of a stream file in file order (what a client must see)."""
    changes: dict[str, list[dict[str, Any]]] = {}
    for line in read_stream_lines(path):
        message = orjson.loads(line)
        for change in message.get("mc") or ():
            changes.setdefault(change["id"], []).append(change)
    return changes


@dataclass(frozen=True)
class FeedMessage:
    """One change message of the merged feed: its publish time and market changes."""

    pt: int
    changes: tuple[dict[str, Any], ...]


class RecordedFeed:
    """The `mcm` messages of one or more recorded files, merged by publish time.

    Position `i` in the feed is what a `clk` token names: `clk` = "the client has applied
    messages [0, i)". With `merge_same_pt`, consecutive messages of *different* markets with the
    same publish time are combined into one multi-market message, as the live stream does.
    """

    def __init__(self, files: Iterable[Path], *, merge_same_pt: bool = False) -> None:
        def messages_of(path: Path) -> Iterator[FeedMessage]:
            for line in read_stream_lines(path):
                message = orjson.loads(line)
                if message.get("op") == "mcm" and message.get("mc"):
                    yield FeedMessage(int(message["pt"]), tuple(message["mc"]))

        merged = heapq.merge(*(messages_of(path) for path in files), key=lambda m: m.pt)
        messages: list[FeedMessage] = []
        for message in merged:
            previous = messages[-1] if messages else None
            if (
                merge_same_pt
                and previous is not None
                and previous.pt == message.pt
                and not {c["id"] for c in previous.changes} & {c["id"] for c in message.changes}
            ):
                messages[-1] = FeedMessage(message.pt, previous.changes + message.changes)
            else:
                messages.append(message)
        self.messages = messages
        self.first_index: dict[str, int] = {}
        self.definitions: dict[str, dict[str, Any]] = {}
        for index, message in enumerate(messages):
            for change in message.changes:
                self.first_index.setdefault(change["id"], index)
                if "marketDefinition" in change:
                    self.definitions.setdefault(change["id"], change["marketDefinition"])
        # Identifies this feed in initialClk so a token from another feed is rejected.
        self.initial_clk = base64.b64encode(b"velo" + secrets.token_bytes(8)).decode()

    def __len__(self) -> int:
        return len(self.messages)

    @staticmethod
    def clk_token(position: int) -> str:
        return base64.b64encode(position.to_bytes(6, "big")).decode()

    def position_of(self, initial_clk: str, clk: str) -> int | None:
        """Feed position named by a client's tokens, or None when they are not this feed's."""
        if initial_clk != self.initial_clk:
            return None
        try:
            raw = base64.b64decode(clk, validate=True)
        except ValueError:
            return None
        if len(raw) != 6:
            return None
        position = int.from_bytes(raw, "big")
        return position if position <= len(self.messages) else None


# --------------------------------------------------------------------------------------------
# Subscription filters
# --------------------------------------------------------------------------------------------


class SubscriptionError(ValueError):
    """A request the Exchange Stream API would reject; `code` is its errorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_MARKET_FILTER_FIELDS = {
    "marketIds": "id",
    "eventTypeIds": "eventTypeId",
    "eventIds": "eventId",
    "countryCodes": "countryCode",
    "marketTypes": "marketType",
    "venues": "venue",
    "bettingTypes": "bettingType",
}


def market_matches(market_id: str, definition: dict[str, Any], market_filter: dict) -> bool:
    """Whether a market passes a marketFilter (absent criteria match everything)."""
    for filter_key, definition_key in _MARKET_FILTER_FIELDS.items():
        wanted = market_filter.get(filter_key)
        if wanted:
            value = market_id if definition_key == "id" else definition.get(definition_key)
            if value not in wanted:
                return False
    for flag in ("bspMarket", "turnInPlayEnabled"):
        wanted_flag = market_filter.get(flag)
        if wanted_flag is not None and definition.get(flag) != wanted_flag:
            return False
    return True


@dataclass(frozen=True)
class DataFilter:
    """marketDataFilter: which runner-change keys to deliver and how many ladder levels."""

    runner_keys: frozenset[str]
    market_definition: bool
    traded_volume: bool
    ladder_levels: int | None

    @classmethod
    def parse(cls, raw: dict | None) -> DataFilter:
        raw = raw or {}
        fields = raw.get("fields") or list(RUNNER_FIELD_KEYS)
        unknown = [name for name in fields if name not in RUNNER_FIELD_KEYS]
        if unknown:
            raise SubscriptionError("INVALID_INPUT", f"unknown marketDataFilter fields {unknown}")
        levels = raw.get("ladderLevels")
        if levels is not None and not (isinstance(levels, int) and 1 <= levels <= 10):
            raise SubscriptionError("INVALID_INPUT", f"ladderLevels must be 1..10, got {levels}")
        keys = frozenset(key for name in fields for key in RUNNER_FIELD_KEYS[name])
        return cls(keys, "EX_MARKET_DEF" in fields, "tv" in keys, levels)

    def _removes_something(self, change: dict[str, Any]) -> bool:
        if "marketDefinition" in change and not self.market_definition:
            return True
        if "tv" in change and not self.traded_volume:
            return True
        for runner in change.get("rc") or ():
            for key, value in runner.items():
                if key in ("id", "hc"):
                    continue
                if key not in self.runner_keys:
                    return True
                if (
                    self.ladder_levels is not None
                    and key in LEVEL_KEYS
                    and any(level[0] >= self.ladder_levels for level in value)
                ):
                    return True
        return False

    def project(self, change: dict[str, Any]) -> dict[str, Any] | None:
        """The market change as this subscription sees it, or None when nothing is left.

        A change the filter does not cut passes through as recorded (same keys and values).
        """
        if not self._removes_something(change):
            return change
        projected: dict[str, Any] = {"id": change["id"]}
        if self.market_definition and "marketDefinition" in change:
            projected["marketDefinition"] = change["marketDefinition"]
        if self.traded_volume and "tv" in change:
            projected["tv"] = change["tv"]
        runners = []
        for runner in change.get("rc") or ():
            kept = {k: v for k, v in runner.items() if k in self.runner_keys}
            if self.ladder_levels is not None:
                for key in LEVEL_KEYS & kept.keys():
                    kept[key] = [lv for lv in kept[key] if lv[0] < self.ladder_levels]
                    if not kept[key]:
                        del kept[key]
            if kept:
                kept["id"] = runner["id"]
                if "hc" in runner:
                    kept["hc"] = runner["hc"]
                runners.append(kept)
        if runners:
            projected["rc"] = runners
        if len(projected) == 1 and not change.get("img"):
            return None
        for flag in ("img", "con"):
            if change.get(flag):
                projected[flag] = True
        return projected


def conflate(changes: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge successive changes of one market into one, as Betfair conflation does.

    Ladders are deltas keyed by price (`atb`, `trd`, ...) or level (`batb`, ...): the latest
    entry per key wins. Scalars and the market definition: latest wins. An image resets.
    """
    merged: dict[str, Any] = {"id": changes[0]["id"]}
    runners: dict[tuple[int, float], dict[str, Any]] = {}
    for change in changes:
        if change.get("img"):
            merged = {"id": change["id"], "img": True}
            runners = {}
        for key in ("marketDefinition", "tv"):
            if key in change:
                merged[key] = change[key]
        for runner in change.get("rc") or ():
            slot = runners.setdefault((runner["id"], runner.get("hc", 0.0)), {})
            for key, value in runner.items():
                if key in PRICE_KEYS or key in LEVEL_KEYS:
                    ladder = slot.setdefault(key, {})
                    for entry in value:  # keyed by price ([p, v]) or by level ([l, p, v])
                        ladder[entry[0]] = entry
                else:
                    slot[key] = value
    if runners:
        merged["rc"] = [
            {k: list(v.values()) if isinstance(v, dict) else v for k, v in slot.items()}
            for slot in runners.values()
        ]
    if len(changes) > 1:
        merged["con"] = True
    return merged


# --------------------------------------------------------------------------------------------
# Stream server
# --------------------------------------------------------------------------------------------


@dataclass
class ConnectionRecord:
    """What one client connection did, for tests to assert on."""

    connection_id: str
    authenticated: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: list[int] = field(default_factory=list)
    data_messages_sent: int = 0
    heartbeats_sent: int = 0
    dropped: bool = False


@dataclass
class _Subscription:
    request_id: int
    market_ids: frozenset[str]
    data_filter: DataFilter
    heartbeat_ms: int
    conflate_ms: int
    start: int
    resumed: bool
    position: int = 0  # feed position after the last change sent (what `clk` says)


class BetfairStreamServer:
    """Exchange Stream API over TLS on 127.0.0.1, serving a `RecordedFeed`.

    `valid_sessions` is shared with `BetfairApiServer` (sessions it issues are accepted).
    `drop_after[k]`, when present, cuts the k-th subscribed connection abruptly after that many
    data messages (and with `expire_sessions_on_drop` also invalidates every session, as an
    expired login would). `pause_every=(n, seconds)` idles, sending heartbeats, after every n.
    Runs its own asyncio loop in a daemon thread: `start()` / `stop()`, or a context manager.
    """

    def __init__(
        self,
        feed: RecordedFeed,
        tls: TlsMaterial,
        *,
        app_key: str,
        valid_sessions: set[str],
        drop_after: Iterable[int] = (),
        pause_every: tuple[int, float] | None = None,
        expire_sessions_on_drop: bool = False,
        auth_timeout_s: float = 15.0,
    ) -> None:
        self.feed = feed
        self.tls = tls
        self.app_key = app_key
        self.valid_sessions = valid_sessions
        self.drop_after = list(drop_after)
        self.pause_every = pause_every
        self.expire_sessions_on_drop = expire_sessions_on_drop
        self.auth_timeout_s = auth_timeout_s
        self.connections: list[ConnectionRecord] = []
        self.port = 0
        self._subscribed_connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._ids = itertools.count(1)

    # lifecycle ------------------------------------------------------------------------------
    def start(self) -> BetfairStreamServer:
        self._thread = threading.Thread(target=self._run, name="betfair-stream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("local stream server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> BetfairStreamServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        context = self.tls.server_context()
        self._server = loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=context)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    # protocol -------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record = ConnectionRecord(connection_id=f"velo-{next(self._ids):03d}-{time.time_ns()}")
        self.connections.append(record)
        serving: asyncio.Task | None = None
        try:
            await self._send(writer, {"op": "connection", "connectionId": record.connection_id})
            while True:
                timeout = None if record.authenticated else self.auth_timeout_s
                try:
                    line = await asyncio.wait_for(reader.readuntil(CRLF), timeout)
                except TimeoutError:
                    await self._fail(writer, None, "TIMEOUT", "no authentication in time", True)
                    return
                try:
                    request = orjson.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("request is not a JSON object")
                except ValueError as exc:
                    await self._fail(writer, None, "INVALID_INPUT", str(exc), True)
                    return
                record.requests.append(request)
                request_id = request.get("id")
                op = request.get("op")
                if op == "authentication":
                    if not await self._authenticate(writer, record, request):
                        return
                elif not record.authenticated:
                    await self._fail(
                        writer, request_id, "NOT_AUTHORIZED", "authenticate first", True
                    )
                    return
                elif op == "heartbeat":
                    await self._status_ok(writer, request_id)
                elif op == "marketSubscription":
                    try:
                        subscription = self._subscription(request)
                    except SubscriptionError as exc:
                        await self._fail(writer, request_id, exc.code, str(exc), False)
                        continue
                    if serving is not None:
                        serving.cancel()
                    await self._status_ok(writer, request_id)
                    if subscription.resumed:
                        record.resumed_from.append(subscription.start)
                    drop = None
                    if self._subscribed_connections < len(self.drop_after):
                        drop = self.drop_after[self._subscribed_connections]
                    self._subscribed_connections += 1
                    serving = asyncio.create_task(self._serve(writer, record, subscription, drop))
                else:
                    await self._fail(writer, request_id, "INVALID_REQUEST", f"op {op!r}", False)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            if serving is not None:
                serving.cancel()
            writer.close()

    async def _authenticate(
        self, writer: asyncio.StreamWriter, record: ConnectionRecord, request: dict
    ) -> bool:
        request_id = request.get("id")
        app_key, session = request.get("appKey"), request.get("session")
        failure = None
        if not app_key:
            failure = ("NO_APP_KEY", "appKey missing")
        elif app_key != self.app_key:
            failure = ("INVALID_APP_KEY", "appKey not recognised")
        elif not session:
            failure = ("NO_SESSION", "session token missing")
        elif session not in self.valid_sessions:
            failure = ("INVALID_SESSION_INFORMATION", "session token invalid or expired")
        if failure is not None:
            await self._fail(writer, request_id, *failure, True)
            return False
        record.authenticated = True
        await self._send(
            writer,
            {
                "op": "status",
                "id": request_id,
                "statusCode": "SUCCESS",
                "connectionClosed": False,
                "connectionsAvailable": 9,
            },
        )
        return True

    def _subscription(self, request: dict) -> _Subscription:
        market_filter = request.get("marketFilter") or {}
        if not isinstance(market_filter, dict):
            raise SubscriptionError("INVALID_INPUT", "marketFilter must be an object")
        data_filter = DataFilter.parse(request.get("marketDataFilter"))
        heartbeat_ms = _clamp(request.get("heartbeatMs"), HEARTBEAT_BOUNDS_MS, DEFAULT_HEARTBEAT_MS)
        conflate_ms = _clamp(request.get("conflateMs"), CONFLATE_BOUNDS_MS, 0)
        initial_clk, clk = request.get("initialClk"), request.get("clk")
        start, resumed = 0, False
        if initial_clk and clk:
            position = self.feed.position_of(initial_clk, clk)
            if position is None:
                raise SubscriptionError("INVALID_CLOCK", "initialClk/clk not from this stream")
            start, resumed = position, True
        market_ids = frozenset(
            market_id
            for market_id in self.feed.first_index
            if market_matches(market_id, self.feed.definitions.get(market_id, {}), market_filter)
        )
        return _Subscription(
            request.get("id", 0), market_ids, data_filter, heartbeat_ms, conflate_ms, start, resumed
        )

    async def _serve(
        self,
        writer: asyncio.StreamWriter,
        record: ConnectionRecord,
        subscription: _Subscription,
        drop_after: int | None,
    ) -> None:
        feed = self.feed
        position = subscription.position = subscription.start
        change_type = "RESUB_DELTA" if subscription.resumed else "SUB_IMAGE"
        while position < len(feed):
            end, changes = self._next_changes(subscription, position)
            if not changes and change_type is None:
                position = subscription.position = end
                continue
            message: dict[str, Any] = {
                "op": "mcm",
                "id": subscription.request_id,
                "clk": feed.clk_token(end),
                "pt": feed.messages[end - 1].pt,
            }
            if change_type is not None:
                message["ct"] = change_type
                message["initialClk"] = feed.initial_clk
                message["conflateMs"] = subscription.conflate_ms
                message["heartbeatMs"] = subscription.heartbeat_ms
                change_type = None
            if changes:
                message["mc"] = changes
            await self._send(writer, message)
            position = subscription.position = end
            record.data_messages_sent += 1
            if drop_after is not None and record.data_messages_sent >= drop_after:
                record.dropped = True
                if self.expire_sessions_on_drop:
                    self.valid_sessions.clear()
                writer.transport.abort()
                return
            if self.pause_every and record.data_messages_sent % self.pause_every[0] == 0:
                await self._idle(writer, record, subscription, self.pause_every[1])
        if change_type is not None:  # nothing left to send: the (re)subscription still answers
            await self._send(
                writer,
                {
                    "op": "mcm",
                    "id": subscription.request_id,
                    "ct": change_type,
                    "clk": feed.clk_token(position),
                    "initialClk": feed.initial_clk,
                    "conflateMs": subscription.conflate_ms,
                    "heartbeatMs": subscription.heartbeat_ms,
                    "pt": _now_ms(),
                },
            )
        await self._idle(writer, record, subscription, None)

    def _next_changes(
        self, subscription: _Subscription, position: int
    ) -> tuple[int, list[dict[str, Any]]]:
        """Changes to send from `position` on, and the position after them."""
        feed = self.feed
        end = position + 1
        if subscription.conflate_ms:
            window_end = feed.messages[position].pt + subscription.conflate_ms
            while end < len(feed) and feed.messages[end].pt < window_end:
                end += 1
        per_market: dict[str, list[dict[str, Any]]] = {}
        for index in range(position, end):
            for change in feed.messages[index].changes:
                if change["id"] not in subscription.market_ids:
                    continue
                if feed.first_index[change["id"]] == index:
                    change = {**change, "img": True}
                per_market.setdefault(change["id"], []).append(change)
        changes = []
        for market_changes in per_market.values():
            combined = market_changes[0] if len(market_changes) == 1 else conflate(market_changes)
            projected = subscription.data_filter.project(combined)
            if projected is not None:
                changes.append(projected)
        return end, changes

    async def _idle(
        self,
        writer: asyncio.StreamWriter,
        record: ConnectionRecord,
        subscription: _Subscription,
        duration_s: float | None,
    ) -> None:
        """Send `ct: HEARTBEAT` every heartbeatMs for `duration_s` (None: until cancelled)."""
        deadline = None if duration_s is None else time.monotonic() + duration_s
        interval = subscription.heartbeat_ms / 1000
        while deadline is None or time.monotonic() < deadline:
            wait = interval if deadline is None else min(interval, deadline - time.monotonic())
            await asyncio.sleep(max(wait, 0))
            if deadline is not None and time.monotonic() >= deadline:
                return
            await self._send(
                writer,
                {
                    "op": "mcm",
                    "id": subscription.request_id,
                    "clk": self.feed.clk_token(subscription.position),
                    "pt": _now_ms(),
                    "ct": "HEARTBEAT",
                },
            )
            record.heartbeats_sent += 1

    async def _send(self, writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
        writer.write(orjson.dumps(message) + CRLF)
        await writer.drain()

    async def _status_ok(self, writer: asyncio.StreamWriter, request_id: int | None) -> None:
        await self._send(
            writer,
            {"op": "status", "id": request_id, "statusCode": "SUCCESS", "connectionClosed": False},
        )

    async def _fail(
        self,
        writer: asyncio.StreamWriter,
        request_id: int | None,
        code: str,
        message: str,
        close: bool,
    ) -> None:
        await self._send(
            writer,
            {
                "op": "status",
                "id": request_id,
                "statusCode": "FAILURE",
                "errorCode": code,
                "errorMessage": message,
                "connectionClosed": close,
            },
        )
        if close:
            writer.close()


def _clamp(value: Any, bounds: tuple[int, int], default: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        return default
    return max(bounds[0], min(bounds[1], value))


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------------------------
# Identity and betting API server
# --------------------------------------------------------------------------------------------

# listMarketCatalogue marketProjection -> catalogue keys it adds (marketId, marketName and
# totalMatched are always present).
CATALOGUE_PROJECTION_KEYS: dict[str, tuple[str, ...]] = {
    "COMPETITION": ("competition",),
    "EVENT": ("event",),
    "EVENT_TYPE": ("eventType",),
    "MARKET_START_TIME": ("marketStartTime",),
    "MARKET_DESCRIPTION": ("description",),
    "RUNNER_DESCRIPTION": ("runners",),
    "RUNNER_METADATA": ("runners",),
}


def _catalogue_matches(catalogue: dict[str, Any], market_filter: dict[str, Any]) -> bool:
    event = catalogue.get("event") or {}
    checks = (
        ("marketIds", catalogue.get("marketId")),
        ("eventTypeIds", (catalogue.get("eventType") or {}).get("id")),
        ("eventIds", event.get("id")),
        ("marketCountries", event.get("countryCode")),
        ("venues", event.get("venue")),
        ("marketTypeCodes", (catalogue.get("description") or {}).get("marketType")),
    )
    if not all(not market_filter.get(key) or value in market_filter[key] for key, value in checks):
        return False
    window = market_filter.get("marketStartTime") or {}
    start = catalogue.get("marketStartTime")
    if window and start:
        moment = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        for bound, inside in (("from", lambda b: moment >= b), ("to", lambda b: moment <= b)):
            if window.get(bound) and not inside(
                dt.datetime.fromisoformat(window[bound].replace("Z", "+00:00"))
            ):
                return False
    return True


def project_catalogue(catalogue: dict[str, Any], projection: list[str]) -> dict[str, Any]:
    """A catalogue entry as listMarketCatalogue returns it for `projection`."""
    wanted = {"marketId", "marketName", "totalMatched"}
    for name in projection:
        wanted.update(CATALOGUE_PROJECTION_KEYS.get(name, ()))
    projected = {k: v for k, v in catalogue.items() if k in wanted}
    if "runners" in projected:
        runners = []
        for runner in projected["runners"]:
            runner = dict(runner)
            if "RUNNER_METADATA" not in projection:
                runner.pop("metadata", None)
            if "RUNNER_DESCRIPTION" not in projection:
                runner = {
                    k: runner[k] for k in ("selectionId", "handicap", "metadata") if k in runner
                }
            runners.append(runner)
        projected["runners"] = runners
    return projected


# listMarketBook priceProjection.priceData -> request weight (Betfair's Market Data Request
# Limits: sum of the weights x markets must not exceed 200; two combinations cost less).
BOOK_PRICE_WEIGHTS = {
    "SP_AVAILABLE": 3,
    "SP_TRADED": 7,
    "EX_BEST_OFFERS": 5,
    "EX_ALL_OFFERS": 17,
    "EX_TRADED": 17,
}
BOOK_COMBINED_WEIGHTS = {
    frozenset({"EX_BEST_OFFERS", "EX_TRADED"}): 20,
    frozenset({"EX_ALL_OFFERS", "EX_TRADED"}): 32,
}
NO_PROJECTION_WEIGHT = 2
MAX_REQUEST_WEIGHT = 200


def book_request_weight(price_data: frozenset[str]) -> int:
    """Weight of one market in a listMarketBook request with this priceData."""
    if not price_data:
        return NO_PROJECTION_WEIGHT
    combined = BOOK_COMBINED_WEIGHTS.get(price_data)
    return combined or sum(BOOK_PRICE_WEIGHTS.get(name, 0) for name in price_data)


@dataclass(frozen=True)
class RecordedMarket:
    """A recorded market as the betting API shows it before the off and after settlement.

    `catalogue`: the listMarketCatalogue entry (event fields from the closing definition, which
    has them all; runners that were not yet removed at the first definition). `open_book` and
    `settled_book`: listMarketBook entries from the first and the closing definition.
    """

    market_id: str
    market_type: str | None
    catalogue: dict[str, Any]
    open_book: dict[str, Any]
    settled_book: dict[str, Any]


def recorded_markets(path: Path) -> list[RecordedMarket]:
    """The markets of a stream file that carry a market definition."""
    markets = []
    for market_id, changes in market_changes_by_market(path).items():
        found = [c["marketDefinition"] for c in changes if "marketDefinition" in c]
        if not found:
            continue
        first, closing = found[0], found[-1]
        markets.append(
            RecordedMarket(
                market_id,
                closing.get("marketType"),
                catalogue_from_definition(market_id, {**closing, "runners": first["runners"]}),
                market_book_from_definition(market_id, first),
                market_book_from_definition(market_id, closing),
            )
        )
    return markets


def market_book_from_definition(market_id: str, definition: dict[str, Any]) -> dict[str, Any]:
    """The full listMarketBook entry of a market in the state a stream definition describes.

    A closing definition gives what Betfair answers after settlement: status CLOSED, each
    runner WINNER/LOSER/REMOVED (PLACED for each-way), and the reconciled BSP as `actualSP`.
    """
    runners = []
    for runner in definition.get("runners") or ():
        sp = {"backStakeTaken": [], "layLiabilityTaken": []}
        if runner.get("bsp") is not None:
            sp["actualSP"] = runner["bsp"]
        entry: dict[str, Any] = {
            "selectionId": runner["id"],
            "handicap": runner.get("hc", 0.0),
            "status": runner.get("status", "ACTIVE"),
            "adjustmentFactor": runner.get("adjustmentFactor"),
            "sp": sp,
            "ex": {"availableToBack": [], "availableToLay": [], "tradedVolume": []},
        }
        if runner.get("removalDate"):
            entry["removalDate"] = runner["removalDate"]
        runners.append(entry)
    return {
        "marketId": market_id,
        "isMarketDataDelayed": False,
        "status": definition.get("status", "OPEN"),
        "betDelay": definition.get("betDelay", 0),
        "bspReconciled": bool(definition.get("bspReconciled")),
        "complete": bool(definition.get("complete", True)),
        "inplay": bool(definition.get("inPlay")),
        "numberOfWinners": definition.get("numberOfWinners", 1),
        "numberOfRunners": len(runners),
        "numberOfActiveRunners": sum(r["status"] == "ACTIVE" for r in runners),
        "totalMatched": 0.0,
        "totalAvailable": 0.0,
        "crossMatching": False,
        "runnersVoidable": bool(definition.get("runnersVoidable")),
        "version": definition.get("version", 1),
        "runners": runners,
    }


def project_market_book(book: dict[str, Any], price_data: frozenset[str]) -> dict[str, Any]:
    """A market book as listMarketBook returns it for `priceData`: `sp` only with an SP_*
    projection (`actualSP` with SP_TRADED), `ex` only with an EX_* one."""
    runners = book.get("runners")
    if not isinstance(runners, list):
        return book
    projected = []
    for runner in runners:
        if not isinstance(runner, dict):
            projected.append(runner)
            continue
        runner = dict(runner)
        sp = runner.pop("sp", None)
        ex = runner.pop("ex", None)
        if sp is not None and price_data & {"SP_AVAILABLE", "SP_TRADED"}:
            if "SP_TRADED" not in price_data:
                sp = {k: v for k, v in sp.items() if k != "actualSP"}
            runner["sp"] = sp
        if ex is not None and price_data & {"EX_BEST_OFFERS", "EX_ALL_OFFERS", "EX_TRADED"}:
            runner["ex"] = ex
        projected.append(runner)
    return {**book, "runners": projected}


def catalogue_from_definition(market_id: str, definition: dict[str, Any]) -> dict[str, Any]:
    """A listMarketCatalogue entry (every projection) for a market of a stream file.

    Runners already removed in `definition` are left out, as Betfair's catalogue drops
    non-runners. Live captures carry no names: those runners get "Selection <id>".
    """
    venue = definition.get("venue")
    return {
        "marketId": market_id,
        "marketName": definition.get("name") or "",
        "marketStartTime": definition["marketTime"],
        "totalMatched": 0.0,
        "description": {
            "persistenceEnabled": bool(definition.get("persistenceEnabled", True)),
            "bspMarket": bool(definition.get("bspMarket")),
            "marketTime": definition["marketTime"],
            "suspendTime": definition.get("suspendTime", definition["marketTime"]),
            "bettingType": definition.get("bettingType", "ODDS"),
            "turnInPlayEnabled": bool(definition.get("turnInPlayEnabled")),
            "marketType": definition.get("marketType"),
            "regulator": "MR_INT",
            "marketBaseRate": definition.get("marketBaseRate", 5.0),
            "discountAllowed": bool(definition.get("discountAllowed", True)),
            "wallet": "UK wallet",
            "rules": "",
            "rulesHasDate": True,
            "raceType": definition.get("raceType"),
        },
        "runners": [
            {
                "selectionId": runner["id"],
                "runnerName": runner.get("name") or f"Selection {runner['id']}",
                "handicap": runner.get("hc", 0.0),
                "sortPriority": runner.get("sortPriority", index + 1),
                "metadata": {"runnerId": str(runner["id"])},
            }
            for index, runner in enumerate(definition.get("runners") or ())
            if runner.get("status") != "REMOVED"
        ],
        "eventType": {"id": definition.get("eventTypeId"), "name": ""},
        "event": {
            "id": definition.get("eventId"),
            "name": definition.get("eventName") or venue or "",
            "countryCode": definition.get("countryCode"),
            "timezone": definition.get("timezone"),
            "venue": venue,
            "openDate": definition.get("openDate", definition["marketTime"]),
        },
    }


class BetfairApiServer:
    """HTTPS identity (login, certlogin, keepAlive) and JSON-RPC betting API on 127.0.0.1.

    `catalogues` is the market catalogue list it serves; `market_books` maps market ids to
    full listMarketBook entries (`market_book_from_definition`). Tests may change both between
    polls. As on Betfair, listMarketCatalogue leaves out markets whose book is CLOSED, and a
    listMarketBook request mixing OPEN and CLOSED markets answers only the OPEN ones.
    `valid_sessions` gets every session token this server issues.
    """

    def __init__(
        self,
        tls: TlsMaterial,
        *,
        username: str,
        password: str,
        app_key: str,
        catalogues: list[dict[str, Any]] | None = None,
        market_books: dict[str, dict[str, Any]] | None = None,
        valid_sessions: set[str] | None = None,
    ) -> None:
        self.tls = tls
        self.username = username
        self.password = password
        self.app_key = app_key
        self.catalogues = catalogues or []
        self.market_books = market_books if market_books is not None else {}
        self.valid_sessions = valid_sessions if valid_sessions is not None else set()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.port = 0
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def identity_url(self) -> str:
        return f"https://localhost:{self.port}/api/"

    @property
    def api_url(self) -> str:
        return f"https://localhost:{self.port}/exchange/"

    def _client_fields(self) -> dict[str, object]:
        """The `Settings` fields of a client that logs in here (certlogin)."""
        return {
            "betfair_username": self.username,
            "betfair_password": self.password,
            "betfair_app_key": self.app_key,
            "betfair_certs_dir": self.tls.certs_dir,
            "betfair_identity_url": self.identity_url,
            "betfair_api_url": self.api_url,
            "betfair_ca_file": self.tls.ca_file,
        }

    def settings(self) -> Settings:
        """Settings of a client that logs in here with this server's credentials."""
        return Settings(**self._client_fields())

    def client_env(self) -> dict[str, str]:
        """`settings()` as the environment of a `velo` subprocess (on top of `os.environ`)."""
        return {
            **os.environ,
            **{name.upper(): str(value) for name, value in self._client_fields().items()},
        }

    def start(self) -> BetfairApiServer:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet test output
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, reply = api._dispatch(self, body)
                payload = orjson.dumps(reply)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        context = self.tls.server_context(request_client_cert=True)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, name="betfair-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def __enter__(self) -> BetfairApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _issue_session(self) -> str:
        token = base64.b64encode(secrets.token_bytes(24)).decode()
        self.valid_sessions.add(token)
        return token

    def _dispatch(
        self, handler: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, Any]:
        path = handler.path
        if path in ("/api/certlogin", "/api/login"):
            form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
            self.requests.append((path, {"username": form.get("username")}))
            credentials_ok = (
                form.get("username") == self.username and form.get("password") == self.password
            )
            if path == "/api/certlogin":
                has_cert = bool(handler.connection.getpeercert())  # type: ignore[attr-defined]
                if not has_cert:
                    return 200, {"loginStatus": "CERT_AUTH_REQUIRED"}
                if not credentials_ok:
                    return 200, {"loginStatus": "INVALID_USERNAME_OR_PASSWORD"}
                return 200, {"sessionToken": self._issue_session(), "loginStatus": "SUCCESS"}
            if not credentials_ok:
                return 200, {
                    "token": "",
                    "product": self.app_key,
                    "status": "FAIL",
                    "error": "INVALID_USERNAME_OR_PASSWORD",
                }
            token = self._issue_session()
            return 200, {"token": token, "product": self.app_key, "status": "SUCCESS", "error": ""}
        if path == "/api/keepAlive":
            token = handler.headers.get("X-Authentication")
            ok = token in self.valid_sessions
            return 200, {
                "token": token if ok else "",
                "product": self.app_key,
                "status": "SUCCESS" if ok else "FAIL",
                "error": "" if ok else "NO_SESSION",
            }
        if path == "/exchange/betting/json-rpc/v1":
            return 200, self._json_rpc(handler, body)
        return 404, {"error": f"no such endpoint {path}"}

    def _json_rpc(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> Any:
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}}
        request_id = request.get("id")
        self.requests.append((request.get("method", ""), request.get("params") or {}))

        def aping_error(code: str) -> dict[str, Any]:
            return {
                "jsonrpc": "2.0",
                "error": {
                    "code": -32099,
                    "message": "ANGX-0003",
                    "data": {
                        "APINGException": {"errorCode": code, "errorDetails": ""},
                        "exceptionname": "APINGException",
                    },
                },
                "id": request_id,
            }

        if handler.headers.get("X-Application") != self.app_key:
            return aping_error("INVALID_APP_KEY")
        if handler.headers.get("X-Authentication") not in self.valid_sessions:
            return aping_error("INVALID_SESSION_INFORMATION")
        params = request.get("params") or {}
        method = request.get("method")
        if method == "SportsAPING/v1.0/listMarketCatalogue":
            market_filter = params.get("filter") or {}
            projection = params.get("marketProjection") or []
            max_results = int(params.get("maxResults") or 1)
            if not 0 < max_results <= 1000:
                return aping_error("INVALID_INPUT_DATA")
            result = [
                project_catalogue(catalogue, projection)
                for catalogue in self.catalogues
                if _catalogue_matches(catalogue, market_filter)
                and not self._closed(catalogue.get("marketId"))
            ][:max_results]
        elif method == "SportsAPING/v1.0/listMarketBook":
            market_ids = params.get("marketIds")
            if not isinstance(market_ids, list) or not market_ids:
                return aping_error("INVALID_INPUT_DATA")
            price_data = frozenset((params.get("priceProjection") or {}).get("priceData") or ())
            if book_request_weight(price_data) * len(market_ids) > MAX_REQUEST_WEIGHT:
                return aping_error("TOO_MUCH_DATA")
            books = [
                self.market_books[m] for m in dict.fromkeys(market_ids) if m in self.market_books
            ]
            if any(book.get("status") != "CLOSED" for book in books):
                books = [book for book in books if book.get("status") != "CLOSED"]
            result = [project_market_book(book, price_data) for book in books]
        else:
            return {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}}
        return {"jsonrpc": "2.0", "result": result, "id": request_id}

    def _closed(self, market_id: Any) -> bool:
        book = self.market_books.get(market_id) if isinstance(market_id, str) else None
        return isinstance(book, dict) and book.get("status") == "CLOSED"
