"""A private OpenLDAP slapd (Debian's slapd) on loopback, for tests.

mdb backend in a temp dir, slapd.conf-style config, ``ldap://127.0.0.1:PORT/``.
The tree::

    dc=example,dc=net
      cn=reader             service account: may search and read userPassword
      ou=people             people: uid=<local part>, mail=<login>,
                            portcullisCustomer, portcullisSender (a tiny test schema)

    from tests.support.slapd_server import slapd_fixture  # noqa: F401

    def test_x(slapd):
        slapd.add_user("alice@acme.example", "pw", customer="acme")
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from passlib.hash import sha512_crypt

from tests.support.servers import free_port, private_dir, stop_process, tcp_open, wait_for

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SUFFIX = "dc=example,dc=net"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-pw-for-tests"
READER_DN = f"cn=reader,{SUFFIX}"
READER_PW = "reader-pw-for-tests"
PEOPLE = f"ou=people,{SUFFIX}"

SCHEMA = """\
attributetype ( 1.3.6.1.4.1.99999.1.1 NAME 'portcullisCustomer'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
attributetype ( 1.3.6.1.4.1.99999.1.2 NAME 'portcullisSender'
  EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.99999.2.1 NAME 'portcullisAccount' SUP top AUXILIARY
  MAY ( portcullisCustomer $ portcullisSender ) )
"""

CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {dir}/portcullis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {dir}/slapd.pid
argsfile {dir}/slapd.args

database mdb
maxsize 104857600
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {dir}/db
index mail eq
index objectClass eq
access to attrs=userPassword
  by self write
  by dn.exact="{reader_dn}" read
  by anonymous auth
  by * none
access to *
  by * read
"""


def _ldif(entries: list[dict[str, list[str] | str]]) -> str:
    out = []
    for entry in entries:
        for key, values in entry.items():
            for value in [values] if isinstance(values, str) else values:
                out.append(f"{key}: {value}")
        out.append("")
    return "\n".join(out) + "\n"


class SlapdServer:
    def __init__(self) -> None:
        self.dir = private_dir("slapd")
        (self.dir / "db").mkdir()
        (self.dir / "portcullis.schema").write_text(SCHEMA)
        self.conf = self.dir / "slapd.conf"
        self.conf.write_text(CONF.format(dir=self.dir, suffix=SUFFIX, root_dn=ROOT_DN,
                                         root_pw=ROOT_PW, reader_dn=READER_DN))
        self.port = free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SLAPD, "-d", "0", "-h", f"{self.url}/", "-f", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "slapd.log", "ab"))
        wait_for("slapd", lambda: tcp_open(self.port), proc=self.proc, log=self.dir / "slapd.log")

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        wait_for("slapd to close its port", lambda: not tcp_open(self.port), timeout=10)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _tool(self, tool: str, ldif: str, timeout: float = 30) -> None:
        done = subprocess.run([tool, "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW],
                              input=ldif, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed: {done.stderr}")

    def seed(self) -> None:
        self._tool("ldapadd", _ldif([
            {"dn": SUFFIX, "objectClass": ["dcObject", "organization"], "dc": "example",
             "o": "Example ISP"},
            {"dn": READER_DN, "objectClass": ["organizationalRole", "simpleSecurityObject"],
             "cn": "reader", "userPassword": READER_PW},
            {"dn": PEOPLE, "objectClass": "organizationalUnit", "ou": "people"},
        ]))

    def add_user(self, login: str, password: str, customer: str | None = None,
                 senders: list[str] | None = None) -> str:
        uid = login.split("@")[0]
        dn = f"uid={uid},{PEOPLE}"
        entry: dict[str, list[str] | str] = {
            "dn": dn, "objectClass": ["inetOrgPerson", "portcullisAccount"],
            "uid": uid, "cn": uid, "sn": uid, "mail": login,
            "userPassword": "{CRYPT}" + sha512_crypt.using(rounds=5000).hash(password)}
        if customer:
            entry["portcullisCustomer"] = customer
        if senders:
            entry["portcullisSender"] = senders
        self._tool("ldapadd", _ldif([entry]))
        return dn

    def set_password(self, login: str, password: str) -> None:
        dn = f"uid={login.split('@')[0]},{PEOPLE}"
        hashed = "{CRYPT}" + sha512_crypt.using(rounds=5000).hash(password)
        self._tool("ldapmodify", f"dn: {dn}\nchangetype: modify\nreplace: userPassword\n"
                                 f"userPassword: {hashed}\n\n")

    def delete_people(self) -> None:
        done = subprocess.run(["ldapsearch", "-x", "-LLL", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW,
                               "-b", PEOPLE, "-s", "one", "dn"],
                              capture_output=True, text=True, timeout=30)
        dns = [line[4:] for line in done.stdout.splitlines() if line.startswith("dn: ")]
        if dns:
            subprocess.run(["ldapdelete", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW, *dns],
                           capture_output=True, timeout=30, check=True)

    def close(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def slapd_server():
    if not os.path.exists(SLAPD):
        pytest.skip("slapd is not installed (apt-get install slapd ldap-utils)")
    server = SlapdServer()
    try:
        server.start()
        server.seed()
        yield server
    finally:
        server.close()


@pytest.fixture(name="slapd")
def slapd_fixture(slapd_server):
    """The module's server, running, with no people in it."""
    if not slapd_server.is_running():
        slapd_server.start()
    slapd_server.delete_people()
    return slapd_server
