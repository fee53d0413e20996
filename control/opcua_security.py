"""OPC UA security for the plant server and its client: policies, certificates, passwords.

`Security` holds one side's settings: a security policy and message mode, this application's
certificate and private key, the peer certificates it trusts (pinned: the exact certificates,
no CA chains) and, optionally, a username and password. A password is never part of a
configuration: `read_password` takes it from an environment variable (the config names the
variable) or a file (the config gives the path), and it is sent only over a secure channel.

`secure_server` configures an asyncua Server with them (the policy's endpoint only, trusted
client certificates only, username/password users only when credentials are set);
`secure_client` checks a server's endpoints before an asyncua Client connects (the policy is
offered, its certificate is trusted, the user kind is accepted) and pins the trusted
certificate. A refusal, by either side, is `PlantRefused` with one line saying why.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Client, Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies, uacrypto
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import serialization

NO_SECURITY = "None"
POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MODES = ("Sign", "SignAndEncrypt")
CLIENT_URI = "urn:lipctl:client"
SERVER_URI = "urn:lipctl:plant"
REFUSALS = {  # status codes of a refused session, and what they mean to the user
    "BadUserAccessDenied": "wrong username or password",
    "BadIdentityTokenRejected": "the server does not accept this kind of user",
    "BadIdentityTokenInvalid": "the server does not accept this kind of user",
    "BadCertificateUntrusted": "the server does not trust the client certificate",
    "BadCertificateUriInvalid": "the client certificate does not name the client's "
                                "application URI",
    "BadCertificateTimeInvalid": "a certificate has expired or is not valid yet",
    "BadSecurityChecksFailed": "the server rejected the secure channel",
}


class PlantRefused(RuntimeError):
    """The OPC UA server, or the client's own checks, refused the connection (one line)."""


class SettingError(ValueError):
    """An impossible security setting; `key` names it within the security settings."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class Credentials:
    """A username and its password (kept out of repr, so out of logs)."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Security:
    """One side's OPC UA security settings; see the module docstring."""

    policy: str = NO_SECURITY
    mode: str = "SignAndEncrypt"
    certificate: Path | None = None
    private_key: Path | None = None
    trusted_certificates: tuple[Path, ...] = ()
    application_uri: str = CLIENT_URI
    credentials: Credentials | None = None

    @property
    def secure(self) -> bool:
        """Whether messages are signed (and maybe encrypted)."""
        return self.policy != NO_SECURITY

    @property
    def policy_class(self) -> type[security_policies.SecurityPolicy]:
        return getattr(security_policies, f"SecurityPolicy{self.policy}")

    @property
    def message_mode(self) -> ua.MessageSecurityMode:
        return (getattr(ua.MessageSecurityMode, self.mode) if self.secure
                else ua.MessageSecurityMode.None_)

    @property
    def described(self) -> str:
        """E.g. "Basic256Sha256 SignAndEncrypt" or "None"."""
        return f"{self.policy} {self.mode}" if self.secure else NO_SECURITY


INSECURE = Security()  # no policy, no certificates, anonymous


def read_password(password_env: str | None, password_file: str | Path | None) -> str:
    """The password from the environment variable named `password_env`, or else the first
    line of `password_file`; SettingError naming the source (never the value) otherwise."""
    if password_env is not None and password_file is not None:
        raise SettingError("password_env", "give password_env or password_file, not both")
    if password_env is not None:
        password = os.environ.get(str(password_env))
        if not password:
            raise SettingError("password_env",
                               f"the environment variable {password_env} is not set or empty")
        return password
    if password_file is None:
        raise SettingError("password_env", "a username needs a password: give password_env "
                                           "(a variable's name) or password_file (a path)")
    try:
        lines = Path(password_file).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SettingError("password_file",
                           f"cannot read {password_file}: {error.strerror}") from None
    if not lines or not lines[0]:
        raise SettingError("password_file", f"{password_file} holds no password")
    return lines[0]


def _load_certificate(key: str, path: Path) -> x509.Certificate:
    """The certificate in `path` (PEM or DER); SettingError naming `key` if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SettingError(key, f"cannot read {path}: {error.strerror}") from None
    for load in (x509.load_pem_x509_certificate, x509.load_der_x509_certificate):
        try:
            return load(data)
        except ValueError:
            pass
    raise SettingError(key, f"{path} is not a PEM or DER certificate")


def _check_private_key(path: Path) -> None:
    """SettingError unless `path` holds an unencrypted PEM or DER private key."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SettingError("private_key", f"cannot read {path}: {error.strerror}") from None
    for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            load(data, password=None)
            return
        except (ValueError, TypeError):
            pass
    raise SettingError("private_key", f"{path} is not an unencrypted PEM or DER private key")


def _optional_path(value: Any) -> Path | None:
    return None if value is None else Path(str(value))


def security_settings(raw: Mapping[str, Any] | None, application_uri: str) -> Security:
    """Security from config keys policy, mode, certificate, private_key, trusted_certificates,
    application_uri, username, password_env, password_file (all optional; None or an empty
    mapping: no security). Reads the password and checks every file; SettingError if wrong."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - {"policy", "mode", "certificate", "private_key",
                                 "trusted_certificates", "application_uri", "username",
                                 "password_env", "password_file"})
    if unknown:
        raise SettingError(unknown[0], "unknown security setting")
    policy = str(raw.get("policy") or NO_SECURITY)
    if policy not in (NO_SECURITY, *POLICIES):
        raise SettingError("policy", f"must be one of {', '.join((NO_SECURITY, *POLICIES))}; "
                                     f"got {policy!r}")
    mode = str(raw.get("mode") or "SignAndEncrypt")
    if mode not in MODES:
        raise SettingError("mode", f"must be one of {', '.join(MODES)}; got {mode!r}")
    trusted = raw.get("trusted_certificates") or ()
    if isinstance(trusted, (str, Path)):
        trusted = (trusted,)
    security = Security(
        policy, mode, _optional_path(raw.get("certificate")),
        _optional_path(raw.get("private_key")), tuple(Path(str(p)) for p in trusted),
        str(raw.get("application_uri") or application_uri), _credentials(raw))
    _check_files(security)
    return security


def _credentials(raw: Mapping[str, Any]) -> Credentials | None:
    username = raw.get("username")
    if username is None:
        if raw.get("password_env") is not None or raw.get("password_file") is not None:
            raise SettingError("username", "a password is set but no username")
        return None
    if raw.get("policy") in (None, NO_SECURITY):
        raise SettingError("username", "a password is only sent over a secure channel: "
                                       f"set policy (one of {', '.join(POLICIES)})")
    return Credentials(str(username), read_password(raw.get("password_env"),
                                                    raw.get("password_file")))


def _check_files(security: Security) -> None:
    """A secure side needs its certificate, its private key and >= 1 trusted peer certificate,
    all readable; SettingError naming the first missing or broken one."""
    if not security.secure:
        return
    for key in ("certificate", "private_key"):
        if getattr(security, key) is None:
            raise SettingError(key, f"policy {security.policy} needs this application's "
                                    f"{key.replace('_', ' ')} file")
    if not security.trusted_certificates:
        raise SettingError("trusted_certificates",
                           f"policy {security.policy} needs the peer certificates to trust")
    _load_certificate("certificate", security.certificate)
    _check_private_key(security.private_key)
    for path in security.trusted_certificates:
        _load_certificate("trusted_certificates", path)


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


class TrustedCertificates:
    """A certificate validator for asyncua: the peer's certificate must be valid now, name the
    peer's application URI and be one of the trusted certificates (BadCertificateUntrusted)."""

    def __init__(self, trusted: Sequence[Path]) -> None:
        self._trusted = {_der(_load_certificate("trusted_certificates", p)) for p in trusted}
        options = CertificateValidatorOptions
        self._basic = CertificateValidator(options.TIME_RANGE | options.URI | options.PEER_CLIENT)

    async def __call__(self, certificate: x509.Certificate,
                       application: ua.ApplicationDescription) -> None:
        await self._basic(certificate, application)
        if _der(certificate) not in self._trusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)


class PasswordUserManager:
    """An asyncua user manager that admits one username with its password."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get_user(self, iserver: Any, username: str | None = None,
                 password: str | bytes | None = None, certificate: Any = None) -> User | None:
        """The user when username and password match (compared in constant time), else None."""
        if isinstance(password, bytes):
            password = password.decode("utf-8", errors="replace")
        expected = self._credentials
        if (username == expected.username and password is not None
                and hmac.compare_digest(password.encode(), expected.password.encode())):
            return User(role=UserRole.User, name=username)
        return None


async def secure_server(server: Server, security: Security) -> None:
    """Offer only `security`'s endpoint on `server` (before it starts); with a policy, serve
    this application's certificate and admit trusted client certificates only; with
    credentials, admit that username/password user only (no anonymous users)."""
    if not security.secure:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        return
    await server.load_certificate(str(security.certificate))
    await server.load_private_key(str(security.private_key))
    await server.set_application_uri(security.application_uri)
    policy = getattr(ua.SecurityPolicyType, f"{security.policy}_{security.mode}")
    server.set_security_policy([policy], permission_ruleset=SimpleRoleRuleset())
    server.set_certificate_validator(TrustedCertificates(security.trusted_certificates))
    if security.credentials is not None:
        server.set_identity_tokens([ua.UserNameIdentityToken])
        server.iserver.user_manager = PasswordUserManager(security.credentials)


def _endpoint(endpoints: Sequence[ua.EndpointDescription],
              security: Security) -> ua.EndpointDescription:
    """The endpoint offering `security`'s policy and mode and its kind of user."""
    matching = [e for e in endpoints if e.SecurityPolicyUri == security.policy_class.URI
                and e.SecurityMode == security.message_mode]
    if not matching:
        offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]} {e.SecurityMode.name}"
                          for e in endpoints})
        raise PlantRefused(f"the server offers no endpoint with security {security.described} "
                           f"(it offers: {', '.join(offered)})")
    token = (ua.UserTokenType.Anonymous if security.credentials is None
             else ua.UserTokenType.UserName)
    for endpoint in matching:
        if any(t.TokenType == token for t in endpoint.UserIdentityTokens):
            return endpoint
    user = "anonymous users" if security.credentials is None else "username/password users"
    raise PlantRefused(f"the server accepts no {user} with security {security.described}")


def _trusted_path(endpoint: ua.EndpointDescription, security: Security) -> Path:
    """The trusted certificate file that holds the endpoint's server certificate."""
    offered = _der(uacrypto.x509_from_der(endpoint.ServerCertificate))
    for path in security.trusted_certificates:
        if _der(_load_certificate("trusted_certificates", path)) == offered:
            return path
    raise PlantRefused("the server's certificate is not trusted (it is none of the trusted "
                       "certificates: " + ", ".join(map(str, security.trusted_certificates))
                       + ")")


async def secure_client(client: Client, security: Security) -> None:
    """Prepare `client` (before it connects): check the server's endpoints for `security`
    (PlantRefused if it cannot work), pin the trusted server certificate, set the user."""
    client.application_uri = security.application_uri
    endpoint = _endpoint(await client.connect_and_get_server_endpoints(), security)
    if security.secure:
        await client.set_security(
            security.policy_class, str(security.certificate), str(security.private_key),
            server_certificate=str(_trusted_path(endpoint, security)), mode=security.message_mode)
    if security.credentials is not None:
        client.set_user(security.credentials.username)
        client.set_password(security.credentials.password)


def refusal(url: str, error: ua.UaStatusCodeError) -> PlantRefused:
    """A PlantRefused naming the status code a server refused a session with."""
    name = ua.StatusCode(error.code).name
    reason = REFUSALS.get(name)
    return PlantRefused(f"OPC UA plant at {url} refused the session: {name}"
                        + (f" ({reason})" if reason else ""))
