"""gRPC channels from one service to another: plaintext, or TLS when the peer's CA is configured,
presenting this process's client certificate when it has one (for peers that require mTLS)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from services.common.settings import SettingsError


@dataclass(frozen=True)
class ClientCertificate:
    """PEM files of the certificate a process presents to the services it calls over TLS
    (RAPPORT_PEER_TLS_CERT_FILE, RAPPORT_PEER_TLS_KEY_FILE); empty = none."""

    cert_file: str = ""
    key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise SettingsError("RAPPORT_PEER_TLS_CERT_FILE and RAPPORT_PEER_TLS_KEY_FILE: set both or neither")


NO_CLIENT_CERTIFICATE = ClientCertificate()


def peer_channel(
    address: str,
    tls_ca_file: str = "",
    certificate: ClientCertificate = NO_CLIENT_CERTIFICATE,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """A channel to `address`: TLS verified against `tls_ca_file` when it is set, else plaintext.
    The certificate only matters over TLS: a plaintext peer cannot ask for one."""
    if not tls_ca_file:
        return grpc.aio.insecure_channel(address, options=list(options))
    private_key = certificate_chain = None
    if certificate.cert_file:
        private_key = Path(certificate.key_file).read_bytes()
        certificate_chain = Path(certificate.cert_file).read_bytes()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(tls_ca_file).read_bytes(),
        private_key=private_key,
        certificate_chain=certificate_chain,
    )
    return grpc.aio.secure_channel(address, credentials, options=list(options))


class PeerClient:
    """The common part of a client of another Rapport service: its channel (plaintext, or TLS
    with `tls_ca_file`), the generated stub of `stub_class` on it (`_stub`), and the API key it
    presents on every call (`_metadata`)."""

    stub_class: Any = None
    channel_options: Sequence[tuple[str, Any]] = ()

    def __init__(
        self,
        address: str,
        api_key: str,
        tls_ca_file: str = "",
        certificate: ClientCertificate = NO_CLIENT_CERTIFICATE,
    ) -> None:
        self._channel = peer_channel(address, tls_ca_file, certificate, self.channel_options)
        self._stub = self.stub_class(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),)

    async def close(self) -> None:
        await self._channel.close()
