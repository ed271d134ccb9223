"""TLS and mutual TLS with certificates made by openssl for the test."""

import ssl
import subprocess

import httpx
import pytest
from server import Server


def sh(*args, cwd):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=palisade-test-ca", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    sh("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=client", cwd=d)
    sh("openssl", "x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile", "client.ext", cwd=d)
    return d


def ctx(pki, client_cert=False, max_version=None):
    c = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client_cert:
        c.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    if max_version:
        c.maximum_version = max_version
    return c


def test_tls(binary, pki):
    s = Server(binary, "--no-embeddings", "--tls-cert", pki / "server.pem", "--tls-key", pki / "server.key", wait_ready=False)
    try:
        assert s.url.startswith("https://")
        s.wait_ready(verify=ctx(pki))
        assert httpx.get(s.url + "/v1/models", verify=ctx(pki)).status_code == 200
        # TLS 1.2 is accepted too.
        assert httpx.get(s.url + "/health", verify=ctx(pki, max_version=ssl.TLSVersion.TLSv1_2)).status_code == 200
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises(httpx.HTTPError):
            httpx.get(s.url.replace("https://", "http://") + "/health", timeout=5)
    finally:
        assert s.stop() == 0


def test_mutual_tls(binary, pki):
    s = Server(binary, "--no-embeddings", "--tls-cert", pki / "server.pem", "--tls-key", pki / "server.key",
               "--tls-client-ca", pki / "ca.pem", wait_ready=False)
    try:
        s.wait_ready(verify=ctx(pki, client_cert=True))
        with pytest.raises(httpx.HTTPError):
            httpx.get(s.url + "/health", verify=ctx(pki), timeout=5)
        assert httpx.get(s.url + "/health", verify=ctx(pki, client_cert=True)).status_code == 200
    finally:
        assert s.stop() == 0


def test_bad_tls_files_are_a_clear_startup_error(binary, tmp_path):
    bogus = tmp_path / "cert.pem"
    bogus.write_text("not a certificate")
    policy = tmp_path / "open.toml"
    policy.write_text('[[routes]]\npath = "*"\npublic = true\n')
    p = subprocess.run([str(binary), "serve", "--listen", "127.0.0.1:0", "--admin-listen", "off", "--policy", str(policy),
                        "--tls-cert", str(bogus), "--tls-key", str(bogus)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "cert.pem" in p.stderr
