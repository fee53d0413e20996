"""Secured OPC UA: Basic256Sha256 with pinned certificates and a username whose password comes
from the environment or a file, and every refusal as one clear line."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from lipctl.control.opcua_plant import OpcUaPlant, PlantServer
from lipctl.control.opcua_security import (
    SERVER_URI,
    Credentials,
    PlantRefused,
    Security,
    SettingError,
    read_password,
    security_settings,
)
from lipctl.envs.cstr import CSTR, CSTREnv
from tests.helpers import config_error, lipctl
from tests.opcua_certs import CertFiles, make_certificate

PASSWORD = "s3cret-Pa55word-do-not-log"
CLIENT_URI = "urn:test:lipctl-client"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, CertFiles]:
    folder = tmp_path_factory.mktemp("certs")
    return {"server": make_certificate(folder, "server", SERVER_URI, server=True),
            "impostor": make_certificate(folder, "impostor", SERVER_URI, server=True),
            "client": make_certificate(folder, "client", CLIENT_URI, server=False),
            "stranger": make_certificate(folder, "stranger", CLIENT_URI, server=False)}


def _server_security(certs: dict[str, CertFiles], mode: str) -> Security:
    return Security("Basic256Sha256", mode, certs["server"].certificate,
                    certs["server"].private_key, (certs["client"].certificate,), SERVER_URI,
                    Credentials("operator", PASSWORD))


def _client_security(certs: dict[str, CertFiles], mode: str = "SignAndEncrypt",
                     client: str = "client", server: str = "server",
                     password: str | None = PASSWORD) -> Security:
    return Security("Basic256Sha256", mode, certs[client].certificate, certs[client].private_key,
                    (certs[server].certificate,), CLIENT_URI,
                    None if password is None else Credentials("operator", password))


@pytest.fixture(scope="module", params=["SignAndEncrypt", "Sign"])
def secured(request, certs) -> Iterator[PlantServer]:
    security = _server_security(certs, request.param)
    with PlantServer(CSTREnv(), port=0, step_period_s=0.1, security=security) as server:
        yield server


@pytest.mark.slow
def test_secured_client_reads_and_writes(secured: PlantServer, certs):
    with OpcUaPlant(secured.url, CSTR, timeout_s=5.0, reconnect_attempts=0,
                    security=_client_security(certs, secured.security.mode)) as plant:
        plant.reset()
        measurement, _ = plant.read()
        plant.write(np.array([1.0, 2.0]))
        assert measurement.shape == (2,) and plant.period_s() == 0.1


@pytest.mark.parametrize("change, message", [
    ({"password": "wrong"}, "refused the session: BadUserAccessDenied (wrong username or "
                            "password)"),
    ({"password": None}, "the server accepts no anonymous users with security Basic256Sha256"),
    ({"server": "impostor"}, "the server's certificate is not trusted"),
    ({"client": "stranger"}, "refused the session: BadCertificateUntrusted (the server does "
                             "not trust the client certificate)"),
])
def test_refusals_are_one_clear_line(secured: PlantServer, certs, change: dict, message: str):
    security = _client_security(certs, secured.security.mode, **change)
    with OpcUaPlant(secured.url, CSTR, timeout_s=5.0, reconnect_attempts=0,
                    security=security) as plant:
        with pytest.raises(PlantRefused) as refused:
            plant.write(np.zeros(2))
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_an_insecure_client_finds_no_endpoint(secured: PlantServer):
    with OpcUaPlant(secured.url, CSTR, timeout_s=5.0, reconnect_attempts=0) as plant:
        with pytest.raises(PlantRefused, match="offers no endpoint with security None"):
            plant.write(np.zeros(2))


def test_the_server_refuses_an_anonymous_session_that_would_write(secured: PlantServer, certs):
    """A client that skips lipctl's own checks: secure channel, trusted certificate, no user."""
    async def write_anonymously() -> None:
        client = Client(secured.url, timeout=5)
        client.application_uri = CLIENT_URI
        await client.set_security(
            SecurityPolicyBasic256Sha256, str(certs["client"].certificate),
            str(certs["client"].private_key), server_certificate=str(certs["server"].certificate),
            mode=getattr(ua.MessageSecurityMode, secured.security.mode))
        await client.connect()
        await client.get_node(ua.NodeId("Plant.CA0", 2)).write_value(1.0)

    with pytest.raises(ua.UaStatusCodeError, match="BadIdentityTokenRejected"):
        asyncio.run(write_anonymously())


def test_password_comes_from_an_environment_variable_or_a_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LIPCTL_TEST_PASSWORD", PASSWORD)
    raw = {"policy": "None", "username": "operator", "password_env": "LIPCTL_TEST_PASSWORD"}
    with pytest.raises(SettingError, match="username: a password is only sent over a secure"):
        security_settings(raw, CLIENT_URI)
    secured = {**raw, "policy": "Basic256Sha256"}
    with pytest.raises(SettingError, match="certificate: policy Basic256Sha256 needs"):
        security_settings(secured, CLIENT_URI)
    monkeypatch.delenv("LIPCTL_TEST_PASSWORD")
    with pytest.raises(SettingError, match="LIPCTL_TEST_PASSWORD is not set") as error:
        security_settings(secured, CLIENT_URI)
    assert PASSWORD not in str(error.value)
    (tmp_path / "password").write_text(PASSWORD + "\n")
    assert read_password(None, tmp_path / "password") == PASSWORD
    assert PASSWORD not in repr(Credentials("operator", PASSWORD))


def _security_overrides(prefix: str, own: CertFiles, trusted: CertFiles, uri: str) -> list[str]:
    return [f"{prefix}.policy=Basic256Sha256", f"{prefix}.mode=SignAndEncrypt",
            f"{prefix}.certificate={own.certificate}", f"{prefix}.private_key={own.private_key}",
            f"{prefix}.trusted_certificates=[{trusted.certificate}]",
            f"{prefix}.application_uri={uri}", f"{prefix}.username=operator"]


def test_plant_serve_allow_remote_needs_security(tmp_path: Path):
    assert "allow_remote: a plant served beyond this machine must be secured" in config_error(
        "plant", "serve", "allow_remote=true", "port=0", cwd=tmp_path)


@pytest.mark.slow
def test_encrypted_authenticated_closed_loop_leaks_no_password(tmp_path: Path, certs,
                                                                monkeypatch):
    (tmp_path / "password").write_text(PASSWORD + "\n")
    serve = [sys.executable, "-m", "lipctl", "plant", "serve", "allow_remote=true", "port=0",
             "period_s=0.1", *_security_overrides("security", certs["server"], certs["client"],
                                                  SERVER_URI),
             f"security.password_file={tmp_path / 'password'}"]
    server = subprocess.Popen(serve, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().split()[1]  # "serving <url>" once clients can connect
        monkeypatch.setenv("LIPCTL_OPCUA_PASSWORD", PASSWORD)
        result = lipctl("deploy", "plant=opcua", f"plant.url={url}", "steps=40", "out=run",
                        "plant.timeout_s=5",  # a secured connect does RSA work: allow a slow CPU
                        *_security_overrides("plant.security", certs["client"], certs["server"],
                                             CLIENT_URI),
                        "plant.security.password_env=LIPCTL_OPCUA_PASSWORD", cwd=tmp_path,
                        check=True)
    finally:
        server.terminate()
        server_out, server_err = server.communicate(timeout=30)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # a loaded CPU may miss a 0.1 s deadline now and then; nothing else may make the loop fall back
    assert summary["final_in_target"], result.stdout
    assert set(summary["fallbacks_by_cause"]) <= {"deadline_miss"}, result.stdout
    assert summary["fallbacks"] < summary["steps"] // 4, result.stdout
    for text in (result.stdout, result.stderr, server_out, server_err):
        assert PASSWORD not in text
    for path in (tmp_path / "run").rglob("*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path
