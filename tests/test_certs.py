"""Certificates: what Python's strict TLS verification and Flower's node authentication need."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.make_certs import CertificateError, main, make_all


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_and_server_certificate_extensions(tmp_path: Path) -> None:
    make_all(tmp_path, nodes=0, extra_sans=["fl.hospital.example", "10.1.2.3"])
    ca, server = _cert(tmp_path / "ca.crt"), _cert(tmp_path / "server.pem")
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"superlink", "localhost", "fl.hospital.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.1.2.3")
    }


def test_private_keys_are_0600_and_node_keys_are_p384_openssh(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--nodes", "2"]) == 0
    for key in ("ca.key", "server.key", "node-00/node", "node-01/node"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    private = load_ssh_private_key((tmp_path / "node-01" / "node").read_bytes(), password=None)
    public = load_ssh_public_key((tmp_path / "node-01" / "node.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public.public_numbers() == private.public_key().public_numbers()


def test_rerun_keeps_existing_files(tmp_path: Path) -> None:
    make_all(tmp_path, nodes=1)
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    make_all(tmp_path, nodes=2)
    after = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert all(after[name] == data for name, data in before.items())
    assert "node-01/node" in after


def test_a_directory_of_the_earlier_key_layout_is_named_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Before keys had a directory each, node 0's private key was the file certs/node-00: found when a workdir
    # made by an older version crashed `ecg-fat federate` with FileExistsError.
    (tmp_path / "node-00").write_text("an old private key")
    with pytest.raises(CertificateError, match="node-00 is a node key of an earlier layout"):
        make_all(tmp_path, nodes=1)
    assert (tmp_path / "node-00").read_text() == "an old private key"  # nothing lost
    with pytest.raises(SystemExit) as stopped:
        main(["--out", str(tmp_path), "--nodes", "1"])
    assert stopped.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"delete {tmp_path}" in error


def test_strict_python_tls_client_accepts_the_server(tmp_path: Path) -> None:
    make_all(tmp_path, nodes=0)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client_context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    client_context.verify_flags |= ssl.VERIFY_X509_STRICT
    names = ("localhost", "127.0.0.1", "superlink")
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            for _ in names:
                connection, _ = listener.accept()
                with server_context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)

        thread = threading.Thread(target=serve)
        thread.start()
        for name in names:
            with (
                socket.create_connection(listener.getsockname()) as raw,
                client_context.wrap_socket(raw, server_hostname=name) as tls,
            ):
                assert tls.getpeercert()["subject"]
                tls.send(b"x")
        thread.join()


def test_cli_takes_several_sans_after_one_flag(tmp_path: Path) -> None:
    assert (
        main(["--out", str(tmp_path), "--nodes", "0", "--san", "superlink", "fl.example.org", "--san", "10.0.0.5"]) == 0
    )
    san = _cert(tmp_path / "server.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fl.example.org" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.0.0.5") in san.get_values_for_type(x509.IPAddress)


def test_site_makes_only_its_own_key(tmp_path: Path) -> None:
    assert main(["--node-key", str(tmp_path / "keys" / "node")]) == 0
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [".gitignore", "node", "node.pub"]


def test_keys_made_anywhere_in_a_repository_never_show_in_git_status(tmp_path: Path) -> None:
    """A user who makes keys inside any git checkout (no .gitignore of theirs) sees none of them to commit."""
    import subprocess

    repo = tmp_path / "checkout"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README.md").write_text("a project\n")  # something that must still show
    assert main(["--out", str(repo / "deploy" / "certs"), "--nodes", "2"]) == 0
    assert main(["--node-key", str(repo / "site" / "keys" / "node")]) == 0
    existing = repo / "already-there"  # a directory the user (or Docker's bind mount) made first
    existing.mkdir()
    make_all(existing, nodes=1)
    status = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=all", "--ignored=no"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert status.splitlines() == ["?? README.md"]
    assert (repo / "deploy" / "certs" / "node-00" / "node").is_file() and (existing / "ca.key").is_file()


def test_public_dir_holds_exactly_the_expected_nodes_keys(tmp_path: Path) -> None:
    """What a runner registers: fewer nodes later leaves no stale key to register."""
    out = tmp_path / "out"
    assert main(["--out", str(out), "--nodes", "4", "--public-dir", str(out / "public")]) == 0
    assert sorted(p.name for p in (out / "public").glob("*.pub")) == [f"node-0{i}.pub" for i in range(4)]
    assert main(["--out", str(out), "--nodes", "2", "--public-dir", str(out / "public")]) == 0
    assert sorted(p.name for p in (out / "public").glob("*.pub")) == ["node-00.pub", "node-01.pub"]
    assert (out / "public" / "node-01.pub").read_bytes() == (out / "node-01" / "node.pub").read_bytes()
    assert not any(p.suffix != ".pub" and p.name != ".gitignore" for p in (out / "public").iterdir())
