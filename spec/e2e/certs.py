"""Test PKI for the TLS end-to-end specs, made with the `openssl` CLI.

    from .certs import pki
    p = pki()                 # generated once per test process, then cached
    p.path("metrics.pem")     # absolute path of a file
    p.text("metrics.key")     # its contents (PEM text)

Every key is EC P-256 (fast to make, and what mbedTLS and Python's ssl both
take). Every certificate is valid from yesterday for 30 days (`openssl ca`
with -startdate/-enddate: `openssl req -x509` cannot backdate in 3.0).

Files (NAME.pem is the certificate, NAME.key its key):

    ca               "Ferry Test CA": issues every server certificate below
    metrics          CN/SAN metrics.observability.internal
    metrics-rotated  the same name, O=Rotated: the certificate after a renewal
    logs             CN/SAN logs.observability.internal
    wild             CN/SAN *.observability.internal
    default          CN/SAN default.ferry.test
    multi            CN=api.ferry.test, SAN api.ferry.test and www.ferry.test
    nosan            CN=legacy.ferry.test and no subjectAltName at all
    inter            "Ferry Intermediate CA", issued by ca
    chained          CN/SAN chain.ferry.test, issued by inter; chained.pem holds
                     the leaf, then the intermediate (a chain file)
    alb              CN/SAN alb.main.internal (the TLS upstream's certificate)
    wrong-ca         "Wrong CA", unrelated to the others
    wrong-agent      CN=agent-1,O=Acme, but issued by wrong-ca
    client-ca        "Agents CA": issues client certificates
    agent            CN=agent-1,O=Acme, clientAuth (an agent pushing data)
    ferry-client     CN=ferry-proxy,O=Ferry, clientAuth (ferry's own, towards upstreams)

Set FERRY_E2E_KEEP=1 to keep the directory (its path is printed at exit).
"""

import atexit
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import threading

KEEP = os.environ.get("FERRY_E2E_KEEP") == "1"

_CA_CONF = """
[ ca ]
default_ca = CA_default

[ CA_default ]
dir             = {dir}
database        = {dir}/index.txt
new_certs_dir   = {dir}/newcerts
serial          = {dir}/serial
default_md      = sha256
policy          = policy_any
unique_subject  = no
copy_extensions = none
email_in_dn     = no

[ policy_any ]
commonName             = supplied
organizationName       = optional
organizationalUnitName = optional

[ req ]
distinguished_name = req_dn
prompt             = no

[ req_dn ]
CN = unused
"""

_CA_EXT = """
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
"""

_SERVER_EXT = """
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {san}
"""

_CLIENT_EXT = """
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

# (name, issuer, subject, kind, SAN names)
_LEAVES = [
    ("metrics", "ca", "/CN=metrics.observability.internal", "server", ["metrics.observability.internal"]),
    ("metrics-rotated", "ca", "/CN=metrics.observability.internal/O=Rotated", "server",
     ["metrics.observability.internal"]),
    ("logs", "ca", "/CN=logs.observability.internal", "server", ["logs.observability.internal"]),
    ("wild", "ca", "/CN=*.observability.internal", "server", ["*.observability.internal"]),
    ("default", "ca", "/CN=default.ferry.test", "server", ["default.ferry.test"]),
    ("multi", "ca", "/CN=api.ferry.test", "server", ["api.ferry.test", "www.ferry.test"]),
    ("nosan", "ca", "/CN=legacy.ferry.test", "server", []),
    ("inter", "ca", "/CN=Ferry Intermediate CA/O=Ferry E2E", "ca", None),
    ("chained", "inter", "/CN=chain.ferry.test", "server", ["chain.ferry.test"]),
    ("alb", "ca", "/CN=alb.main.internal", "server", ["alb.main.internal"]),
    ("agent", "client-ca", "/CN=agent-1/O=Acme", "client", None),
    ("wrong-agent", "wrong-ca", "/CN=agent-1/O=Acme", "client", None),
    ("ferry-client", "client-ca", "/CN=ferry-proxy/O=Ferry", "client", None),
]

_CAS = [
    ("ca", "/CN=Ferry Test CA/O=Ferry E2E"),
    ("wrong-ca", "/CN=Wrong CA/O=Somebody Else"),
    ("client-ca", "/CN=Agents CA/O=Acme"),
]


class PkiError(AssertionError):
    pass


class Pki:
    def __init__(self, directory):
        self.dir = directory

    def path(self, name):
        p = os.path.join(self.dir, name)
        if not os.path.exists(p):
            raise PkiError("no such test PKI file: %s" % name)
        return p

    def text(self, name):
        with open(self.path(name)) as f:
            return f.read()

    def files(self, *names):
        """{"NAME.pem": text, "NAME.key": text} for each NAME: for Ferry(files=...)."""
        out = {}
        for name in names:
            out[name + ".pem"] = self.text(name + ".pem")
            out[name + ".key"] = self.text(name + ".key")
        return out


def _openssl(args, cwd, timeout=30):
    try:
        done = subprocess.run(["openssl"] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    except FileNotFoundError:
        raise PkiError("the openssl CLI is needed to make the test certificates")
    if done.returncode != 0:
        raise PkiError("openssl %s failed (%d):\n%s"
                       % (" ".join(args), done.returncode, done.stdout.decode("utf-8", "replace")))
    return done.stdout.decode("utf-8", "replace")


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _validity():
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=30)
    fmt = "%y%m%d%H%M%SZ"  # UTCTime, as `openssl ca -startdate/-enddate` take it
    return start.strftime(fmt), end.strftime(fmt)


def _ca_state(root, ca):
    """The bookkeeping `openssl ca` needs for one issuing CA."""
    state = os.path.join(root, "_state", ca)
    if not os.path.isdir(state):
        os.makedirs(os.path.join(state, "newcerts"))
        _write(os.path.join(state, "index.txt"), "")
        _write(os.path.join(state, "ca.cnf"), _CA_CONF.replace("{dir}", state))
    return state


def _issue(root, name, subject, issuer, ext_text, selfsign=False):
    start, end = _validity()
    key = os.path.join(root, name + ".key")
    csr = os.path.join(root, "_state", name + ".csr")
    ext = os.path.join(root, "_state", name + ".ext")
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key], root)
    state = _ca_state(root, issuer)
    conf = os.path.join(state, "ca.cnf")
    _openssl(["req", "-new", "-config", conf, "-key", key, "-subj", subject, "-out", csr], root)
    _write(ext, ext_text)
    args = ["ca", "-batch", "-config", conf, "-notext", "-preserveDN", "-md", "sha256", "-rand_serial",
            "-startdate", start, "-enddate", end, "-in", csr, "-out", os.path.join(root, name + ".pem"),
            "-extfile", ext]
    if selfsign:
        args += ["-selfsign", "-keyfile", key]
    else:
        args += ["-cert", os.path.join(root, issuer + ".pem"),
                 "-keyfile", os.path.join(root, issuer + ".key")]
    _openssl(args, root)


def generate(root):
    os.makedirs(os.path.join(root, "_state"), exist_ok=True)
    for name, subject in _CAS:
        _issue(root, name, subject, name, _CA_EXT, selfsign=True)
    for name, issuer, subject, kind, sans in _LEAVES:
        if kind == "server":
            text = _SERVER_EXT.replace("{san}", ", ".join("DNS:" + n for n in sans))
            if not sans:
                text = "\n".join(l for l in text.splitlines() if not l.startswith("subjectAltName"))
        elif kind == "ca":
            text = _CA_EXT + "authorityKeyIdentifier = keyid\n"
        else:
            text = _CLIENT_EXT
        _issue(root, name, subject, issuer, text)
    with open(os.path.join(root, "inter.pem")) as f:
        intermediate = f.read()
    with open(os.path.join(root, "chained.pem"), "a") as f:
        f.write(intermediate)
    # Handy extras: a CA bundle, a file that is no PEM at all, a key of no certificate here.
    bundle = ""
    for name in ("ca.pem", "wrong-ca.pem"):
        with open(os.path.join(root, name)) as f:
            bundle += f.read()
    _write(os.path.join(root, "both-cas.pem"), bundle)
    _write(os.path.join(root, "garbage.pem"), "this is not a certificate\n")
    _openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-out", os.path.join(root, "stray.key")], root)
    return Pki(root)


_lock = threading.Lock()
_cached = None


def _cleanup(directory):
    if KEEP:
        sys.stderr.write("[e2e] test PKI kept in %s\n" % directory)
    else:
        shutil.rmtree(directory, ignore_errors=True)


def pki():
    """The test PKI, generated on first use in this process."""
    global _cached
    with _lock:
        if _cached is None:
            directory = tempfile.mkdtemp(prefix="ferry-e2e-pki-")
            try:
                _cached = generate(directory)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            atexit.register(_cleanup, directory)
        return _cached


if __name__ == "__main__":
    # Make a PKI in a directory given on the command line (or a temp dir) and list it.
    target = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ferry-pki-")
    os.makedirs(target, exist_ok=True)
    generate(target)
    for entry in sorted(os.listdir(target)):
        print(os.path.join(target, entry))
