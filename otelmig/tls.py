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

A root certificate file that is missing or unreadable (sslrootcert, else
~/.postgresql/root.crt) is a configuration error, exit 2, as is a client
certificate or key that cannot be loaded; a failed handshake is exit 3.
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
            _require_root_cert(rootcert, conninfo.sslmode)
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


def _require_root_cert(path: str, sslmode: str) -> None:
    """Verifying needs a root certificate file: without it libpq fails the
    connection too. A configuration problem (exit 2), not an unreachable
    server: no retry or --wait can fix it."""
    if not os.path.exists(path):
        raise UsageError("root certificate file %s does not exist, and sslmode=%s verifies the server with it: "
                         "give sslrootcert=FILE (or sslrootcert=system for the system's CAs), "
                         "or use sslmode=require to encrypt without verifying" % (path, sslmode))


def _load(loader, what, *paths):
    try:
        loader(*paths)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise UsageError("cannot load %s %s: %s" % (what, paths[0], reason)) from None
