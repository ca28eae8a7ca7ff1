"""How a :class:`~odibi_ray.storage.kafka.log.KafkaLog` reaches its brokers: servers, TLS and SASL settings, and the
librdkafka configuration made from them (secrets resolved only here, in the process that opens a client).

Secrets (``sasl_password``, ``ssl_key_password``, ``connection_string``) are kept as given — a literal, a
:class:`~odibi_ray.storage.secrets.SecretValue`, or an ``env://`` / ``kv://`` reference — and resolved when a
client is opened; no repr, log line or error message shows them. Azure Event Hubs' Kafka endpoint takes
``connection_string=`` (SASL/PLAIN over TLS, user ``$ConnectionString``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from ...errors import InvalidURIError
from ..base import resolve_secret_option

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
#: librdkafka settings that carry a secret: refused in ``client_config`` (give them as the options above, which
#: are resolved from references and never shown).
SECRET_SETTINGS = frozenset({"sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
                             "sasl.oauthbearer.client.secret", "ssl_key_password", "sasl_password"})
#: Event Hubs' Kafka endpoint: SASL/PLAIN with this user name and the connection string as the password.
EVENT_HUBS_USER = "$ConnectionString"


@dataclass(frozen=True)
class KafkaSettings:
    """Where the brokers are and how to authenticate (picklable configuration, no open client, no resolved
    secret). ``timeout_s`` bounds every operation: a broker that does not answer within it is
    :class:`~odibi_ray.errors.StorageUnavailableError`."""

    bootstrap_servers: str
    security_protocol: str | None = None  # default: PLAINTEXT, or SASL_* / SSL from the options given
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Any = field(default=None, repr=False)
    connection_string: Any = field(default=None, repr=False)
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: Any = field(default=None, repr=False)
    timeout_s: float = 10.0
    client_config: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        servers = self.bootstrap_servers
        if not isinstance(servers, str) or not servers.strip() or any(not s.strip() for s in servers.split(",")):
            raise InvalidURIError(f"Kafka bootstrap_servers must be 'host:port[,host:port...]', got {servers!r}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ValueError(f"Kafka timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        secret_keys = sorted(k for k in self.client_config if k in SECRET_SETTINGS)
        if secret_keys:
            raise ValueError(f"client_config must not carry secrets ({', '.join(secret_keys)}): pass them as "
                             "sasl_password= / ssl_key_password= (a literal, env:// or kv:// reference)")
        protocol = self.protocol
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown Kafka security_protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")
        if protocol.startswith("SASL"):
            mechanism = self.mechanism
            if mechanism not in MECHANISMS:
                raise ValueError(f"unknown sasl_mechanism {mechanism!r}: use one of {', '.join(MECHANISMS)}")
            if mechanism != "OAUTHBEARER" and (self.user is None or self._password_option() is None):
                raise ValueError(f"SASL/{mechanism} needs sasl_username= and sasl_password= "
                                 "(or connection_string= for Azure Event Hubs)")

    @property
    def uri(self) -> str:
        """How errors and logs name the cluster: ``kafka://<bootstrap servers>`` (no credential)."""
        return f"kafka://{self.bootstrap_servers}"

    @property
    def protocol(self) -> str:
        if self.security_protocol:
            return self.security_protocol.upper()
        sasl = self.sasl_mechanism or self.sasl_username or self.connection_string is not None
        tls = self.ssl_ca_location or self.ssl_certificate_location or self.connection_string is not None
        return ("SASL_SSL" if tls else "SASL_PLAINTEXT") if sasl else ("SSL" if tls else "PLAINTEXT")

    @property
    def mechanism(self) -> str:
        return (self.sasl_mechanism or "PLAIN").upper()

    @property
    def user(self) -> str | None:
        return EVENT_HUBS_USER if self.connection_string is not None and not self.sasl_username else self.sasl_username

    def _password_option(self) -> tuple[str, Any] | None:
        if self.sasl_password is not None:
            return "sasl_password", self.sasl_password
        if self.connection_string is not None:
            return "connection_string", self.connection_string
        return None

    def identity(self) -> dict[str, str]:
        """What names the cluster in cache keys: the bootstrap servers (no credential, which may rotate)."""
        return {"kafka": self.bootstrap_servers}

    def librdkafka(self) -> dict[str, Any]:
        """The client configuration, secrets resolved here (in this process, at the moment a client opens)."""
        ms = int(self.timeout_s * 1000)
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.protocol,
            "socket.timeout.ms": max(ms, 1000),
            "socket.connection.setup.timeout.ms": max(ms, 1000),
            "log_level": 3,  # errors only: librdkafka's info lines name brokers, never secrets, but are noise
        }
        if self.protocol.startswith("SASL"):
            conf["sasl.mechanism"] = self.mechanism
            if self.user is not None:
                conf["sasl.username"] = self.user
            option = self._password_option()
            if option is not None:
                conf["sasl.password"] = resolve_secret_option(self.uri, option[0], option[1])
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
            value = getattr(self, name)
            if value is not None:
                conf[name.replace("_", ".")] = value
        if self.ssl_key_password is not None:
            conf["ssl.key.password"] = resolve_secret_option(self.uri, "ssl_key_password", self.ssl_key_password)
        conf.update(self.client_config)
        return conf
