"""Make the federation's TLS certificates and SuperNode keys (with `cryptography`).

    python -m certs.make_certs --out DIR [--nodes 10] [--san superlink.example.org --san 10.0.0.5] [--public-dir D]
    python -m certs.make_certs --node-key FILE     (a hospital site: its own key pair only)

Writes, where missing (existing files are kept, so a re-run never breaks a deployment):
  DIR/ca.crt, DIR/ca.key            a CA (keyUsage keyCertSign, cRLSign)
  DIR/server.pem, DIR/server.key    the SuperLink certificate (serverAuth) with SANs superlink, localhost,
                                    127.0.0.1, ::1 and every --san; the SuperLink's own ServerApp
                                    executor connects to 127.0.0.1, so that one is always there
  DIR/node-NN/node, .../node.pub    an EC P-384 key pair per SuperNode (OpenSSH format) for node
                                    authentication, each in a directory of its own; the .pub files are
                                    registered with the SuperLink
Private keys are written with mode 0600. None of these files is ever committed: every directory that
receives a private key gets a `.gitignore` holding `*` (as Python's venv does), so `git status` of a
repository where keys are made anywhere shows none of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = ("superlink", "localhost", "127.0.0.1", "::1")
VALID_DAYS = 825


GITIGNORE = "# Made by certs/make_certs.py: nothing here goes into git (private keys).\n*\n"


def _write(path: Path, data: bytes, private: bool) -> None:
    if private and not (path.parent / ".gitignore").exists():
        _write(path.parent / ".gitignore", GITIGNORE.encode(), private=False)
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ECG-FAT"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    """keyUsage with only the named uses set (strict TLS clients check it)."""
    uses = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**dict.fromkeys(uses, False) | enabled)


def _san(entries: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for entry in dict.fromkeys(entries):  # keep order, drop repeats
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            names.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(names)


def make_ca(out: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt_path, key_path = out / "ca.crt", out / "ca.key"
    if crt_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(crt_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ECG-FAT federation CA"))
        .issuer_name(_name("ECG-FAT federation CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    _write(key_path, _pem_key(key), private=True)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, key


def make_server_cert(out: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: list[str]) -> None:
    crt_path, key_path = out / "server.pem", out / "server.key"
    if crt_path.exists() and key_path.exists():
        return
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(sans[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_agreement=True),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(sans), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write(key_path, _pem_key(key), private=True)
    _write(crt_path, cert.public_bytes(serialization.Encoding.PEM), private=False)


class CertificateError(Exception):
    """A certificate directory that cannot be used as it is; the message says what to do."""


def node_key_path(out: Path, index: int) -> Path:
    """A SuperNode's private key, in a directory of its own (a container mounts only that directory)."""
    return out / f"node-{index:02d}" / "node"


def public_key_name(index: int) -> str:
    return f"node-{index:02d}.pub"


def make_node_key(path: Path, label: str | None = None) -> None:
    """An EC P-384 key pair in OpenSSH format (Flower rejects ed25519); `label` is the public key's comment."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    if path.parent.is_file():  # an earlier version kept each node's key there, not in a directory of its own
        raise CertificateError(
            f"{path.parent} is a node key of an earlier layout (keys now live at {path}): move it there and "
            f"{path.parent}.pub to {path}.pub, or delete {path.parent.parent} to make new certificates and keys"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(path, private, private=True)
    _write(path.with_suffix(".pub"), public + f" {label or path.name}\n".encode(), private=False)


def make_all(
    out: Path, nodes: int, extra_sans: list[str] | tuple[str, ...] = (), public_dir: Path | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(out)
    make_server_cert(out, ca, ca_key, [*DEFAULT_SANS, *extra_sans])
    for index in range(nodes):
        make_node_key(node_key_path(out, index), label=f"node-{index:02d}")
    if public_dir is not None:
        publish_node_keys(out, nodes, public_dir)


def publish_node_keys(out: Path, nodes: int, public_dir: Path) -> None:
    """Exactly the public keys of nodes 0..nodes-1 in `public_dir` (what a runner registers), nothing else."""
    public_dir.mkdir(parents=True, exist_ok=True)
    wanted = {public_key_name(index): node_key_path(out, index).with_suffix(".pub") for index in range(nodes)}
    for stale in public_dir.glob("node-*.pub"):
        if stale.name not in wanted:
            stale.unlink()
    for name, source in wanted.items():
        _write(public_dir / name, source.read_bytes(), private=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="directory for the CA, the SuperLink certificate and node keys")
    target.add_argument("--node-key", type=Path, metavar="FILE", help="make one SuperNode key pair: FILE, FILE.pub")
    parser.add_argument("--nodes", type=int, default=10, help="SuperNode key pairs to make (default 10)")
    parser.add_argument(
        "--public-dir",
        type=Path,
        metavar="DIR",
        help="also copy the public keys of exactly these --nodes nodes into DIR (and remove any other node key there)",
    )
    parser.add_argument(
        "--san",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME_OR_IP",
        help="extra DNS names or IPs of the SuperLink, e.g. its public name (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 0:
        parser.error(f"--nodes must be >= 0 (got {args.nodes})")
    if args.node_key:
        args.node_key.parent.mkdir(parents=True, exist_ok=True)
        make_node_key(args.node_key)
        print(f"node key pair {args.node_key} (private, keep it here) and {args.node_key}.pub (send it to the server)")
        return 0
    try:
        make_all(args.out, args.nodes, args.san, args.public_dir)
    except CertificateError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"certificates and {args.nodes} node key pairs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
