"""Gateway configuration: dataclasses and :meth:`GatewayConfig.from_file` (TOML or JSON).

Example (TOML; relative paths are relative to the configuration file)::

    max_connections = 1000
    idle_timeout = 300          # seconds without traffic in either direction
    handshake_timeout = 30
    connect_timeout = 10        # to the upstream
    shutdown_grace = 10

    [credentials]               # PEM files: signing cert, encryption cert, then the chain
    cert = ["gw_sign.pem", "gw_enc.pem", "sub_ca.pem"]
    key = "gw_sign.key"
    enc_key = "gw_enc.key"
    password_env = "GW_KEY_PASSWORD"   # or password = "..." (not recommended)
    # or a server keystore (SS-CC):
    # keystore = "gw.keystore"; master_key_file = "master.key"; container = "gateway"

    [trust]
    ca_files = ["root.pem"]
    intermediate_files = ["sub_ca.pem"]
    crl_files = []
    crl_urls = ["http://kmc.internal/crl/issuing.crl"]
    refresh_interval = 300
    require_crl = true

    [[listeners]]
    host = "0.0.0.0"
    port = 8443
    compat = "standard"                 # peer profile: standard, gmssl, tongsuo, auto
    default = "127.0.0.1:7000"          # connections without SNI
    [listeners.routes]
    "echo.internal" = "127.0.0.1:7000"
    "web.internal" = { upstream = "127.0.0.1:8080", mode = "http" }
    "ims.internal" = { upstream = "127.0.0.1:8700", mode = "http", websocket = true }

``websocket = true`` (``http`` routes only; default false) lets a WebSocket opening
handshake through: the upgrade request is forwarded with the identity headers and,
once the upstream answers 101, bytes are relayed both ways (see :mod:`.gateway`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mstcrypt.errors import PolicyError
from mstcrypt.protocols.tlcp import CipherSuite, ClientAuth, Credentials, PeerProfile
from mstcrypt.protocols.tlcp.profiles import AUTO, COMPAT_CHOICES, STANDARD

__all__ = [
    "CredentialsConfig",
    "GatewayConfig",
    "ListenerConfig",
    "Route",
    "TrustConfig",
    "parse_address",
]

MODES = ("tcp", "http")


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port)."""
    if not isinstance(value, str) or ":" not in value:
        raise PolicyError(f"address {value!r} must be host:port")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    try:
        p = int(port)
    except ValueError:
        raise PolicyError(f"address {value!r}: the port is not a number") from None
    if not host or not 0 < p < 65536:
        raise PolicyError(f"address {value!r} must be host:port with a port in 1..65535")
    return host, p


@dataclass(frozen=True)
class Route:
    """Where a connection goes: ``upstream`` ``host:port`` or ``unix:/absolute/path`` (a
    Unix socket); ``mode`` ``tcp`` (bytes forwarded unchanged) or ``http`` (HTTP/1.1
    reverse proxy adding identity headers). ``websocket`` (``http`` only, default false):
    relay WebSocket upgrades (RFC 6455) on this route; other upgrades are always
    stripped."""

    upstream: str
    mode: str = "tcp"
    websocket: bool = False

    def __post_init__(self) -> None:
        if self.unix_path is not None:
            if not self.unix_path.startswith("/") or "\x00" in self.unix_path:
                raise PolicyError(f"upstream {self.upstream!r}: unix: needs an absolute path")
        else:
            parse_address(self.upstream)
        if self.mode not in MODES:
            raise PolicyError(f"route mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not isinstance(self.websocket, bool):
            raise PolicyError("route websocket must be true or false")
        if self.websocket and self.mode != "http":
            raise PolicyError('websocket = true needs mode = "http" on the route')

    @property
    def unix_path(self) -> str | None:
        """The socket path of a ``unix:`` upstream, else None."""
        if isinstance(self.upstream, str) and self.upstream.startswith("unix:"):
            return self.upstream[len("unix:") :]
        return None

    @property
    def address(self) -> tuple[str, int]:
        return parse_address(self.upstream)

    @classmethod
    def parse(cls, value: Route | str | Mapping[str, Any], mode: str = "tcp") -> Route:
        if isinstance(value, Route):
            return value
        if isinstance(value, str):
            return cls(value, mode)
        if isinstance(value, Mapping):
            _only(value, {"upstream", "mode", "websocket"}, "route")
            return cls(
                str(value.get("upstream", "")),
                str(value.get("mode", mode)),
                _bool(value.get("websocket", False), "route websocket"),
            )
        raise PolicyError(f"route {value!r} must be host:port or a table")


@dataclass
class ListenerConfig:
    """One TLCP listener. ``routes`` maps a server name (SNI, case-insensitive) to a
    route; ``default`` serves connections that send no SNI (and, with
    ``match_any_name``, every name without a route). Any other name is refused with
    unrecognized_name. ``client_auth`` is ``required`` (the default: terminals present a
    certificate under the trust anchors), ``optional`` or ``none``. ``compat`` names the
    peer profile (``standard``, ``gmssl``, ``tongsuo``; ``auto``, the default, is
    ``standard``): terminals of every implementation are accepted whatever it is; it only
    orders the CertificateVerify checks (``gmssl`` tries GmSSL's form first)."""

    port: int
    host: str = "127.0.0.1"
    routes: dict[str, Route] = field(default_factory=dict)
    default: Route | None = None
    cipher_suites: tuple[CipherSuite, ...] | None = None
    name: str = ""
    client_auth: ClientAuth | str = ClientAuth.REQUIRED
    match_any_name: bool = False
    compat: str | None = None

    def __post_init__(self) -> None:
        if self.compat is not None:
            if not isinstance(self.compat, str) or self.compat.lower() not in COMPAT_CHOICES:
                raise PolicyError(
                    f"listener compat {self.compat!r}: expected one of {', '.join(COMPAT_CHOICES)}"
                )
            self.compat = self.compat.lower()
        try:
            self.client_auth = ClientAuth(self.client_auth)
        except ValueError:
            choices = ", ".join(a.value for a in ClientAuth)
            raise PolicyError(
                f"listener client_auth {self.client_auth!r}: expected one of {choices}"
            ) from None
        if self.match_any_name and self.default is None:
            raise PolicyError("match_any_name needs a default route")
        if not isinstance(self.port, int) or not 0 <= self.port < 65536:
            raise PolicyError("listener port must be in 0..65535")
        self.routes = {k.lower().rstrip("."): Route.parse(v) for k, v in self.routes.items()}
        if self.default is not None:
            self.default = Route.parse(self.default)
        if not self.routes and self.default is None:
            raise PolicyError(f"listener {self.host}:{self.port} has no routes and no default")
        if self.cipher_suites is not None:
            try:
                self.cipher_suites = tuple(_suite(s) for s in self.cipher_suites)
            except (KeyError, ValueError):
                raise PolicyError(f"unknown cipher suite in {self.cipher_suites!r}") from None
        if not self.name:
            self.name = f"{self.host}:{self.port}"

    @property
    def profile(self) -> PeerProfile:
        """The peer profile of ``compat`` (``auto`` and unset: ``standard``)."""
        name = self.compat if self.compat not in (None, AUTO) else STANDARD.name
        return PeerProfile.named(name)

    def route_for(self, server_name: str | None) -> Route | None:
        if server_name is None:
            return self.default
        route = self.routes.get(server_name.lower().rstrip("."))
        if route is None and self.match_any_name:
            return self.default
        return route


def _suite(value: CipherSuite | str | int) -> CipherSuite:
    if isinstance(value, str) and not value.isdigit() and not value.lower().startswith("0x"):
        return CipherSuite[value.upper()]
    if isinstance(value, str):
        return CipherSuite(int(value, 0))
    return CipherSuite(value)


@dataclass
class CredentialsConfig:
    """The gateway's dual certificates and keys: PEM files (``cert`` lists the signing
    certificate, the encryption certificate, then the chain, in one or several files;
    ``key`` and ``enc_key`` the two private keys, optionally encrypted with
    ``password`` or the password in the environment variable ``password_env``), or a
    ServerModule keystore (``keystore``, ``master_key_file``, ``container``; certificates
    from the container unless ``cert`` is given), or a soft token enrolled through the
    platform (``token``, ``container``, its PIN in the environment variable ``pin_env``,
    default ``MSTCRYPT_PIN``; certificates from the container, ``cert`` lists the CA
    certificates sent after them)."""

    cert: tuple[Path, ...] = ()
    key: Path | None = None
    enc_key: Path | None = None
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None
    keystore: Path | None = None
    master_key_file: Path | None = None
    container: str = "gateway"
    token: Path | None = None
    pin_env: str = "MSTCRYPT_PIN"

    def __post_init__(self) -> None:
        self.cert = tuple(Path(p) for p in self.cert)
        if self.keystore is not None and self.token is not None:
            raise PolicyError("credentials take a keystore or a token, not both")
        if (
            self.keystore is None
            and self.token is None
            and (not self.cert or self.key is None or self.enc_key is None)
        ):
            raise PolicyError("credentials need cert, key and enc_key, a keystore or a token")

    def load(self) -> Credentials:
        from mstcrypt.formats.keys import load_private_key
        from mstcrypt.pki import load_certificates

        certs = [c for p in self.cert for c in load_certificates(_read(p))]
        if self.token is not None:
            from mstcrypt.module import SoftToken

            pin = os.environ.get(self.pin_env)
            if not pin:
                raise PolicyError(f"the token's PIN is read from ${self.pin_env}, which is unset")
            token = SoftToken.open(self.token)
            token.login(pin)
            return Credentials.from_module(token, self.container, chain=certs)
        if self.keystore is not None:
            from mstcrypt.module.server import ServerModule, load_master_key

            module = ServerModule(self.keystore, load_master_key(key_file=self.master_key_file))
            if certs:
                if len(certs) < 2:
                    raise PolicyError("cert must name the signing and encryption certificates")
                return Credentials.from_module(
                    module,
                    self.container,
                    sign_certificate=certs[0],
                    enc_certificate=certs[1],
                    chain=certs[2:],
                )
            return Credentials.from_module(module, self.container)
        if len(certs) < 2:
            raise PolicyError("cert must hold the signing and the encryption certificate")
        password = self.password
        if password is None and self.password_env:
            password = os.environ.get(self.password_env)
        assert self.key is not None and self.enc_key is not None
        return Credentials.from_keys(
            certs[0],
            load_private_key(_read(self.key), password),
            certs[1],
            load_private_key(_read(self.enc_key), password),
            chain=certs[2:],
        )


@dataclass
class TrustConfig:
    """Trust anchors, intermediates and CRLs for client certificates, re-read every
    ``refresh_interval`` seconds (files re-read, URLs fetched, DER or PEM).

    ``require_crl`` (default true) refuses a client certificate whose issuer has no CRL
    here: every CA of the terminals' chains needs a CRL in ``crl_files`` or
    ``crl_urls``. Setting it false (not recommended) is logged as a warning."""

    ca_files: tuple[Path, ...] = ()
    intermediate_files: tuple[Path, ...] = ()
    crl_files: tuple[Path, ...] = ()
    crl_urls: tuple[str, ...] = ()
    refresh_interval: float = 300.0
    require_crl: bool = True

    def __post_init__(self) -> None:
        self.ca_files = tuple(Path(p) for p in self.ca_files)
        self.intermediate_files = tuple(Path(p) for p in self.intermediate_files)
        self.crl_files = tuple(Path(p) for p in self.crl_files)
        self.crl_urls = tuple(self.crl_urls)
        if not self.ca_files:
            raise PolicyError("trust needs at least one CA file (ca_files)")
        if not self.refresh_interval > 0:
            raise PolicyError("refresh_interval must be positive")


@dataclass
class GatewayConfig:
    listeners: list[ListenerConfig]
    credentials: CredentialsConfig | None = None
    trust: TrustConfig | None = None
    max_connections: int = 1000
    idle_timeout: float = 300.0
    handshake_timeout: float = 30.0
    connect_timeout: float = 10.0
    shutdown_grace: float = 10.0
    max_header_bytes: int = 65536

    def __post_init__(self) -> None:
        if not self.listeners:
            raise PolicyError("the gateway needs at least one listener")
        if self.max_connections < 1:
            raise PolicyError("max_connections must be positive")
        for what in ("idle_timeout", "handshake_timeout", "connect_timeout"):
            if not getattr(self, what) > 0:
                raise PolicyError(f"{what} must be positive")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GatewayConfig:
        """Read a TOML (``.toml``) or JSON file; relative paths are resolved against the
        file's directory."""
        p = Path(path)
        raw = _read(p)
        try:
            data = json.loads(raw) if p.suffix.lower() == ".json" else tomllib.loads(raw.decode())
        except (ValueError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot parse {p.name}: {exc}") from None
        return cls.from_dict(data, base_dir=p.parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> GatewayConfig:
        base = base_dir or Path()
        if not isinstance(data, Mapping):
            raise PolicyError("the configuration must be a table")
        top = {
            "listeners",
            "credentials",
            "trust",
            "max_connections",
            "idle_timeout",
            "handshake_timeout",
            "connect_timeout",
            "shutdown_grace",
            "max_header_bytes",
        }
        _only(data, top, "configuration")

        def paths(v: Any) -> tuple[Path, ...]:
            items = [v] if isinstance(v, str) else list(v or [])
            return tuple(base / str(x) for x in items)

        def opt_path(v: Any) -> Path | None:
            return None if v is None else base / str(v)

        listeners = []
        for entry in data.get("listeners", []):
            known = {"host", "port", "routes", "default", "mode", "cipher_suites", "name"}
            _only(entry, known | {"client_auth", "match_any_name", "compat"}, "")
            mode = str(entry.get("mode", "tcp"))
            routes = {str(k): Route.parse(v, mode) for k, v in entry.get("routes", {}).items()}
            default = entry.get("default")
            listeners.append(
                ListenerConfig(
                    port=int(entry.get("port", 0)),
                    host=str(entry.get("host", "127.0.0.1")),
                    routes=routes,
                    default=None if default is None else Route.parse(default, mode),
                    cipher_suites=entry.get("cipher_suites"),
                    name=str(entry.get("name", "")),
                    client_auth=str(entry.get("client_auth", "required")),
                    match_any_name=_bool(entry.get("match_any_name", False), "match_any_name"),
                    compat=entry.get("compat"),
                )
            )
        creds = None
        if (c := data.get("credentials")) is not None:
            keys = {"cert", "key", "enc_key", "password", "password_env", "keystore"}
            _only(c, keys | {"master_key_file", "container", "token", "pin_env"}, "credentials")
            creds = CredentialsConfig(
                cert=paths(c.get("cert")),
                key=opt_path(c.get("key")),
                enc_key=opt_path(c.get("enc_key")),
                password=c.get("password"),
                password_env=c.get("password_env"),
                keystore=opt_path(c.get("keystore")),
                master_key_file=opt_path(c.get("master_key_file")),
                container=str(c.get("container", "gateway")),
                token=opt_path(c.get("token")),
                pin_env=str(c.get("pin_env", "MSTCRYPT_PIN")),
            )
        trust = None
        if (t := data.get("trust")) is not None:
            keys = {"ca_files", "intermediate_files", "crl_files", "crl_urls"}
            _only(t, keys | {"refresh_interval", "require_crl"}, "trust")
            urls = t.get("crl_urls", [])
            trust = TrustConfig(
                ca_files=paths(t.get("ca_files")),
                intermediate_files=paths(t.get("intermediate_files")),
                crl_files=paths(t.get("crl_files")),
                crl_urls=tuple([urls] if isinstance(urls, str) else urls),
                refresh_interval=float(t.get("refresh_interval", 300.0)),
                require_crl=_bool(t.get("require_crl", True), "require_crl"),
            )
        numbers = {k: data[k] for k in top - {"listeners", "credentials", "trust"} if k in data}
        return cls(listeners=listeners, credentials=creds, trust=trust, **numbers)


def _only(table: Any, allowed: set[str], what: str) -> None:
    if not isinstance(table, Mapping):
        raise PolicyError(f"{what or 'listener'} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise PolicyError(f"unknown {what or 'listener'} setting(s): {', '.join(sorted(unknown))}")


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{what} must be true or false")
    return value


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
