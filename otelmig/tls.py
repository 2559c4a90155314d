"""libpq's sslmode semantics mapped onto pg8000's ssl_context argument.

pg8000 reads ssl_context=None as "try TLS without verifying, else plain" and
True as "encrypt, verify nothing", so each mode is mapped deliberately:

  disable      False: never TLS
  allow        False first; TLS (nothing verified) if the server refuses plain
  prefer       TLS, nothing verified, if the server offers it; else plain
               (pg8000's own prefer, ssl_context=None, loads the system CA
               store it then ignores: 25 ms of every `check`)
  require      TLS required, nothing verified (libpq: verify-ca when a root
               certificate file is present)
  verify-ca    TLS, the chain checked against sslrootcert
  verify-full  TLS, the chain and the host name checked
"""

import os
from typing import List

from otelmig.errors import UsageError

DEFAULT_DIR = os.path.join("~", ".postgresql")


def _default_file(name: str) -> str:
    return os.path.expanduser(os.path.join(DEFAULT_DIR, name))


def attempts(conninfo) -> List[object]:
    """The ssl_context values to try, in order."""
    mode = conninfo.sslmode
    if mode == "disable":
        return [False]
    if mode == "allow":
        return [False, _unverified()]
    if mode == "prefer":
        return [_unverified(), False]
    return [_context(conninfo)]


def _unverified():
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _context(conninfo):
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    rootcert = conninfo.sslrootcert or _default_file("root.crt")
    verify = conninfo.sslmode in ("verify-ca", "verify-full") or (
        conninfo.sslmode == "require" and os.path.exists(rootcert))
    if verify:
        if conninfo.sslrootcert == "system":
            context.load_default_certs()
        else:
            _load(context.load_verify_locations, "sslrootcert", rootcert)
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = conninfo.sslmode == "verify-full"
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    certfile = conninfo.sslcert or _default_file("postgresql.crt")
    if conninfo.sslcert or os.path.exists(certfile):
        keyfile = conninfo.sslkey or _default_file("postgresql.key")
        _load(context.load_cert_chain, "sslcert/sslkey", certfile, keyfile)
    return context


def _load(loader, what, *paths):
    try:
        loader(*paths)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise UsageError("cannot load %s %s: %s" % (what, paths[0], reason)) from None
