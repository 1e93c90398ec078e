"""A throwaway test CA, made with the `openssl` CLI (Debian's openssl package).

Why the CLI and not the `cryptography` package: it is already on every machine that runs
mosquitto, and it is what an operator would use, so the recipe here doubles as documentation.
EC P-256 keys because they are fast to make. Nothing here is fit for production.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class PkiError(RuntimeError):
    """openssl failed; the message carries the command and its stderr."""


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PkiError("openssl CLI not found (install Debian package 'openssl')")
    r = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise PkiError(f"openssl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")


class TestCA:
    """A CA, a server cert for 127.0.0.1/localhost, and client certs (CN = user) on demand."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: str | Path | None = None, *, name: str = "vending-test-ca") -> None:
        self.dir = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="pki-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca_path = self.dir / "ca.crt"
        self.ca_key = self.dir / "ca.key"
        self.server_cert = self.dir / "server.crt"
        self.server_key = self.dir / "server.key"
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(self.ca_key), "-out", str(self.ca_path), "-days", "2",
                 "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=self.dir)
        self._issue("server", "localhost", self.server_cert, self.server_key,
                    ["subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"])

    def client(self, user: str) -> tuple[Path, Path]:
        """(cert, key) for `user`; the broker reads the CN as the user name."""
        cert, key = self.dir / f"client-{user}.crt", self.dir / f"client-{user}.key"
        if not cert.exists():
            self._issue(f"client-{user}", user, cert, key, ["extendedKeyUsage=clientAuth"])
        return cert, key

    def _issue(self, stem: str, cn: str, cert: Path, key: Path, exts: list[str]) -> None:
        csr = self.dir / f"{stem}.csr"
        ext = self.dir / f"{stem}.ext"
        ext.write_text("basicConstraints=CA:FALSE\n" + "\n".join(exts) + "\n")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}", cwd=self.dir)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca_path), "-CAkey",
                 str(self.ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2",
                 "-extfile", str(ext), cwd=self.dir)
