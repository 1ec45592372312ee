"""The ceiling for submission on this stack: aiosmtpd with STARTTLS and AUTH, nothing else.

Not a product: passwords compared in plain text, no sender check, no quota, no
signing, and no forwarding (each message is answered 250 and dropped).
bench/submission.py runs it in the same run as Postfix and Portcullis, so the table
shows what aiosmtpd's own TLS + AUTH + DATA path costs here, and whether the client
can drive a server faster than the peers being compared.

    python bench/submission_ceiling.py PORT CERT KEY ACCOUNTS_FILE

ACCOUNTS_FILE has one ``login password`` per line.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import sys
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        return "250 2.0.0 OK"


def authenticator(accounts: dict[bytes, bytes]):  # type: ignore[no-untyped-def]
    # aiosmtpd calls the authenticator without awaiting it: it must be synchronous.
    def check(server, session, envelope, mechanism, auth_data) -> AuthResult:  # type: ignore[no-untyped-def]
        ok = (isinstance(auth_data, LoginPassword)
              and accounts.get(auth_data.login) == auth_data.password)
        return AuthResult(success=ok)
    return check


def read_accounts(path: str) -> dict[bytes, bytes]:
    return {login.encode(): password.encode() for login, password in
            (line.split(" ", 1) for line in Path(path).read_text().splitlines())}


async def main(port: int, cert: str, key: str, accounts: dict[bytes, bytes]) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    handler = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="ceiling.bench", decode_data=False, tls_context=tls,
                     require_starttls=True, auth_required=True, auth_require_tls=True,
                     authenticator=authenticator(accounts), loop=loop),
        "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    # aiosmtpd 1.4 logs a warning about its own use of a deprecated attribute on every AUTH.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    arguments = (int(sys.argv[1]), sys.argv[2], sys.argv[3], read_accounts(sys.argv[4]))
    try:
        import uvloop
        uvloop.run(main(*arguments))
    except ImportError:
        asyncio.run(main(*arguments))
