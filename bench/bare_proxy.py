"""The floor for this stack: the plainest aiosmtpd → pooled aiosmtplib proxy.

Not a product: no relay rules, no Received header, no smuggling guard, no
enhanced codes, no limits, one process.  bench/inbound.py runs it in the same
run as Portcullis so the table shows what the gateway's own work costs on top
of aiosmtpd and aiosmtplib on this machine (the issue quotes such a proxy).

    python bench/bare_proxy.py LISTEN_PORT DOWNSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys

import aiosmtplib
from aiosmtpd.smtp import SMTP


class Proxy:
    def __init__(self, port: int):
        self.port = port
        self.idle: list[aiosmtplib.SMTP] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        client = self.idle.pop() if self.idle else None
        if client is None or not client.is_connected:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port)
            await client.connect()
        try:
            errors, response = await client.sendmail(
                envelope.mail_from, envelope.rcpt_tos, envelope.content)
        except aiosmtplib.SMTPException as exc:
            client.close()
            return f"451 {exc}"
        self.idle.append(client)
        return f"250 {response}"


async def main(listen: int, downstream: int) -> None:
    handler = Proxy(downstream)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bare.bench", decode_data=False, loop=loop),
        "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
