"""Throwaway certificate authorities for the TLS tests, made at test time with the `openssl` CLI:
a CA, server certificates for 127.0.0.1 and localhost, and client certificates (mTLS)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

VALID_DAYS = "2"


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, as PEM files."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class ThrowawayAuthority:
    """A CA whose files live in `directory`; it signs server and client certificates."""

    name: str
    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / f"{self.name}-ca.pem"

    @property
    def _ca_key(self) -> Path:
        return self.directory / f"{self.name}-ca.key"

    @classmethod
    def create(cls, directory: Path, name: str) -> ThrowawayAuthority:
        authority = cls(name, directory)
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(authority._ca_key), "-out", str(authority.ca_file), "-days", VALID_DAYS,
            "-subj", f"/CN=Rapport test CA {name}",
        )  # fmt: skip
        return authority

    def server_certificate(self, label: str = "server") -> KeyPair:
        """Valid for 127.0.0.1 and localhost, as the tests dial them."""
        return self._sign(
            label,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )

    def client_certificate(self, label: str = "client") -> KeyPair:
        return self._sign(label, "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")

    def _sign(self, label: str, extensions: str) -> KeyPair:
        stem = self.directory / f"{self.name}-{label}"
        pair = KeyPair(stem.with_suffix(".pem"), stem.with_suffix(".key"))
        request, extension_file = stem.with_suffix(".csr"), stem.with_suffix(".ext")
        extension_file.write_text(extensions)
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(pair.key_file), "-out", str(request), "-subj", f"/CN=rapport-test-{label}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.ca_file), "-CAkey", str(self._ca_key),
            "-CAcreateserial", "-out", str(pair.cert_file), "-days", VALID_DAYS, "-extfile", str(extension_file),
        )  # fmt: skip
        return pair


def _openssl(*arguments: str) -> None:
    binary = shutil.which("openssl")
    assert binary, "the TLS tests make their certificates with the openssl CLI"
    done = subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"openssl {arguments[0]} failed: {done.stderr}"
