"""Accounts at an ISP's scale: policy load time and memory, reload, AUTH look-ups per second.

    python -m bench.accounts                      # 100,000 customers, 1,000,000 accounts
    python -m bench.accounts --customers 1000 --sql-accounts 8000 --yaml-per-customer 2   # quick
    python -m bench.accounts --load-only          # policy files only: no servers, no AUTH rates
    python -m bench.accounts --domains-only       # one customer with 100,000 domains
    python -m bench.accounts --domains-only --domains 10000 50000 100000 200000

Generates, in a temp dir (removed at the end unless --keep):
  * N customer policy files, each with ``--yaml-per-customer`` accounts;
  * ``--sql-accounts`` accounts in a private PostgreSQL (started here, as in the tests);
  * a small Dovecot passwd-file and LDAP tree (``--server-accounts`` each) for their rates.
Prints: policy load time and resident memory, reload time after one file changed,
and AUTH look-ups per second per source, cold cache (every login new) and warm.
Then one customer with ``--domains`` domains (a hosting customer), loaded as
``check-config``, start-up and SIGHUP do (load_with_keys: DKIM key check included),
with the time per domain against a reference a quarter its size loaded in the same
run: linear loading gives a ratio near 1, a quadratic step near 4.

Needs root for the private PostgreSQL/Dovecot/slapd (as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gateway.accounts import passwords
from gateway.accounts.factory import build_source
from gateway.config.accounts import AccountsConfig
from gateway.config.errors import ConfigError
from gateway.config.load import load_policies
from gateway.config.policy_cache import PolicyCache
from gateway.dkim.signing_keys import load_with_keys


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_policies(root: Path, customers: int, per_customer: int, hashed: str) -> None:
    root.mkdir()
    for c in range(customers):
        lines = [f"customer: c{c}", f"domains: [c{c}.example, c{c}-mail.example]", "accounts:"]
        for a in range(per_customer):
            lines.append(f"  - login: u{a}@c{c}.example")
            lines.append(f"    password: '{hashed}'")
            lines.append(f"    senders: ['*@c{c}-mail.example']")
        lines.append("aliases:")
        lines.append(f"  info@c{c}.example: [u0@c{c}.example]" if per_customer else "  {}")
        (root / f"c{c}.yaml").write_text("\n".join(lines) + "\n")


def write_domains_config(root: Path, domains: int) -> Path:
    """A gateway file with a submission listener (so DKIM keys are checked) and one
    customer owning ``domains`` domains; no keys, and mail sent unsigned without one."""
    (root / "keys").mkdir(parents=True)
    (root / "policy").mkdir()
    (root / "policy" / "hosting.yaml").write_text(
        "customer: hosting\ndkim: {missing_key: send-unsigned}\ndomains:\n"
        + "".join(f"  - d{i}.hosting-customer.example\n" for i in range(domains)))
    config = root / "gateway.yaml"
    config.write_text("hostname: mx.bench.test\nlisteners: {submission: {port: 2587}}\n"
                      "downstream: {outbound: 'smtp://127.0.0.1:25'}\npolicy_dir: policy\n"
                      "dkim: {keys_dir: keys, check_published: false}\n")
    return config


def time_domains_load(work: Path, domains: int) -> float:
    root = Path(tempfile.mkdtemp(prefix=f"domains-{domains}-", dir=work))
    config = write_domains_config(root / "gw", domains)
    gc.collect()
    t = time.perf_counter()
    loaded, _ = load_with_keys(config)
    took = time.perf_counter() - t
    if len(loaded.directory.domains) != domains:
        raise SystemExit(f"{domains} domains: {len(loaded.directory.domains)} loaded: the benchmark is broken")
    shutil.rmtree(root)
    return took


def bench_domains(work: Path, sizes: list[int]) -> None:
    print("one customer with many domains (load_with_keys, as check-config, start-up and SIGHUP):")
    for n in sizes:
        reference = max(1, n // 4)
        ref_s = time_domains_load(work, reference)
        took = time_domains_load(work, n)
        ratio = (took / n) / (ref_s / reference)
        print(f"  {n:>9,} domains        {took:8.2f} s   {took / n * 1e6:6.1f} µs/domain;   "
              f"{reference:,} domains {ref_s:.2f} s in the same run: per-domain ratio {ratio:.2f} "
              f"(linear ~1, quadratic ~4)")


async def rate(source, logins: list[tuple[str, str]], concurrency: int) -> float:
    """Look-ups per second over ``logins``, ``concurrency`` at a time; all must succeed."""
    queue = list(reversed(logins))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        while queue:
            login, pw = queue.pop()
            answer = await source.authenticate(login, pw)
            if answer.identity is None:
                failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    took = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{failures} of {len(logins)} look-ups failed: the benchmark is broken")
    return len(logins) / took


async def measure(name: str, config: AccountsConfig, directory, cold: list, warm_set: list,
                  warm_rounds: int, concurrency: int) -> None:
    source = build_source(config, directory)
    try:
        await rate(source, cold[:concurrency], concurrency)  # connect, fill pools
        cold_rate = await rate(source, cold[concurrency:], concurrency)
        await rate(source, warm_set, concurrency)  # now cached
        warm_rate = await rate(source, warm_set * warm_rounds, concurrency)
    finally:
        await source.close()
    print(f"  {name:<22} cold {cold_rate:>9,.0f}/s ({len(cold) - concurrency} logins)   "
          f"warm {warm_rate:>9,.0f}/s ({len(warm_set) * warm_rounds} look-ups)")


def sample(prefix_count: int, make, n: int, pw: str) -> list[tuple[str, str]]:
    step = max(1, prefix_count // n)
    return [(make(i), pw) for i in range(0, prefix_count, step)][:n]


async def main(args: argparse.Namespace) -> None:
    from tests.support.dovecot_server import DovecotServer
    from tests.support.postgres_server import PostgresServer
    from tests.support.slapd_server import PEOPLE, READER_DN, READER_PW, SlapdServer

    work = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    if args.domains_only:
        try:
            bench_domains(work, args.domains)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    pw = "bench-password"
    from passlib.hash import sha512_crypt

    hashed = passwords.hash_password(pw) if args.hash == "argon2id" else (
        "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(pw))
    servers: list = []
    try:
        yaml_total = args.customers * args.yaml_per_customer
        print(f"accounts: {args.customers:,} customer files, {yaml_total:,} YAML accounts, "
              f"{args.sql_accounts:,} PostgreSQL accounts; hash {args.hash}; "
              f"{concurrency_note(args)}")
        t = time.perf_counter()
        write_policies(work / "policy", args.customers, args.yaml_per_customer, hashed)
        print(f"  generate policy files  {time.perf_counter() - t:8.1f} s")

        # The cache trusts only files older than 2 s (racy timestamps): let them age, as
        # files on a real gateway have.
        await asyncio.sleep(2.5)
        gc.collect()
        base = rss_mib()
        errors: list[ConfigError] = []
        cache = PolicyCache()
        cpu_before = cpu_s()
        t = time.perf_counter()
        directory = load_policies(work / "policy", errors, policy_cache=cache)
        load_s = time.perf_counter() - t
        own, kids = (after - before for after, before in zip(cpu_s(), cpu_before, strict=True))
        if errors:
            raise SystemExit(f"policy load failed: {errors[0]}")
        gc.collect()
        print(f"  load policies          {load_s:8.1f} s   RSS +{rss_mib() - base:,.0f} MiB "
              f"(process {rss_mib():,.0f} MiB, peak {peak_mib():,.0f} MiB)   "
              f"{len(directory.customers):,} customers, {len(directory.accounts):,} accounts")
        # On a shared machine the wall time depends on the neighbours; the CPU time less so.
        print(f"                         CPU {own + kids:8.1f} s   (this process {own:.1f} s, "
              f"worker processes {kids:.1f} s)")

        changed = work / "policy" / "c7.yaml"
        changed.write_text(changed.read_text().replace("c7-mail.example]", "c7-mail.example, c7-new.example]"))
        t = time.perf_counter()
        errors = []
        reloaded = load_policies(work / "policy", errors, policy_cache=cache)
        print(f"  reload after 1 change  {time.perf_counter() - t:8.1f} s   (only changed files "
              f"re-parsed; {'ok' if reloaded.customer_for_domain('c7-new.example') == 'c7' else 'CHANGE NOT SEEN'})")
        directory = reloaded

        keys = [f"u{i % max(1, args.yaml_per_customer)}@c{(i * 7919) % args.customers}.example"
                for i in range(200_000)]
        account = directory.account
        t = time.perf_counter()
        found = sum(account(k) is not None for k in keys)
        took = time.perf_counter() - t
        print(f"  policy look-up         {took / len(keys) * 1e6:8.2f} µs per account look-up "
              f"(dict hit; {found:,} of {len(keys):,} found, scattered over all customers)")
        bench_domains(work, args.domains)
        if args.load_only:
            print(f"process peak RSS {peak_mib():,.0f} MiB")
            return

        pg = PostgresServer()
        servers.append(pg)
        pg.start()
        pg.create_schema()
        t = time.perf_counter()
        data = pg.dir / "mailbox.tsv"
        data.write_text("".join(
            f"s{i}@c{i % args.customers}.example\t{hashed}\t\\N\t{{s{i}@c{i % args.customers}-mail.example}}\tt\n"
            for i in range(args.sql_accounts)))
        shutil.chown(data, "postgres")
        pg.sql(f"COPY mailbox FROM '{data}'")
        pg.sql("ANALYZE mailbox")
        print(f"  load PostgreSQL        {time.perf_counter() - t:8.1f} s   ({args.sql_accounts:,} rows)")

        cache = {"ttl": 3600, "negative_ttl": 30, "max_entries": 1_000_000}
        conc = args.concurrency
        print(f"AUTH look-ups per second ({conc} at once; cold = cache miss, hash verified; "
              f"warm = cache hit):")
        yaml_logins = sample(yaml_total, lambda i: f"u{i % args.yaml_per_customer}@c{i // args.yaml_per_customer}.example",
                             args.cold + conc, pw)
        await measure("yaml", AccountsConfig(cache=cache, auth_timeout=120), directory, yaml_logins,
                      yaml_logins[:args.warm_set], args.warm_rounds, conc)

        sql_cfg = AccountsConfig.model_validate({
            "source": "sql", "cache": cache, "auth_timeout": 120,
            "sql": {"dsn": pg.dsn, "pool_max": 10, "query_timeout": 10,
                    "query": "SELECT password, customer, senders FROM mailbox WHERE login = $1 AND active"}})
        sql_logins = sample(args.sql_accounts, lambda i: f"s{i}@c{i % args.customers}.example",
                            args.cold + conc, pw)
        await measure(f"sql ({args.sql_accounts:,} rows)", sql_cfg, directory, sql_logins,
                      sql_logins[:args.warm_set], args.warm_rounds, conc)

        if args.server_accounts:
            dv = DovecotServer()
            servers.append(dv)
            dv_hash = "{ARGON2ID}" + hashed if hashed.startswith("$argon2id$") else hashed
            dv.passwd.write_text("".join(f"d{i}@c{i % args.customers}.example:{dv_hash}::::::\n"
                                         for i in range(args.server_accounts)))
            dv.start()
            dv_cfg = AccountsConfig.model_validate({
                "source": "dovecot", "cache": cache, "auth_timeout": 120,
                "dovecot": {"address": f"inet:127.0.0.1:{dv.port}"}})
            dv_logins = sample(args.server_accounts, lambda i: f"d{i}@c{i % args.customers}.example",
                               args.cold + conc, pw)
            await measure(f"dovecot ({args.server_accounts:,})", dv_cfg, directory, dv_logins,
                          dv_logins[:args.warm_set], args.warm_rounds, conc)

            sl = SlapdServer()
            servers.append(sl)
            sl.start()
            sl.seed()
            # slapd checks binds with crypt(3): its entries hold {CRYPT}$6$ whatever --hash says.
            crypt = "{CRYPT}" + sha512_crypt.using(rounds=5000).hash(pw)
            ldif = []
            for i in range(args.server_accounts):
                ldif.append(f"dn: uid=l{i},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: l{i}\ncn: l{i}\nsn: l{i}\n"
                            f"mail: l{i}@c{i % args.customers}.example\n"
                            f"userPassword: {crypt}\n")
            sl._tool("ldapadd", "\n".join(ldif) + "\n", timeout=600)
            ldap_logins = sample(args.server_accounts, lambda i: f"l{i}@c{i % args.customers}.example",
                                 args.cold + conc, pw)
            for mode in ("bind", "compare"):
                ld_cfg = AccountsConfig.model_validate({
                    "source": "ldap", "cache": cache, "auth_timeout": 120,
                    "ldap": {"url": sl.url, "mode": mode, "search_base": PEOPLE,
                             "bind_dn": READER_DN, "bind_password": READER_PW, "timeout": 10}})
                await measure(f"ldap {mode} ({args.server_accounts:,}, $6$)", ld_cfg, directory,
                              ldap_logins, ldap_logins[:args.warm_set], args.warm_rounds, conc)
        print(f"process peak RSS {peak_mib():,.0f} MiB")
    finally:
        for server in servers:
            server.close()
        if args.keep:
            print(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def concurrency_note(args: argparse.Namespace) -> str:
    return f"{args.concurrency} concurrent AUTHs"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--yaml-per-customer", type=int, default=2)
    p.add_argument("--sql-accounts", type=int, default=800_000)
    p.add_argument("--server-accounts", type=int, default=10_000,
                   help="accounts in the bench Dovecot and slapd (0: skip them)")
    p.add_argument("--hash", choices=["argon2id", "sha512-crypt"], default="argon2id")
    p.add_argument("--cold", type=int, default=200, help="distinct logins for the cold rate")
    p.add_argument("--warm-set", type=int, default=100)
    p.add_argument("--warm-rounds", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--domains", type=int, nargs="+", default=[100_000],
                   help="domain counts for the one-customer rows (each against a quarter of it)")
    p.add_argument("--domains-only", action="store_true",
                   help="only the one-customer, many-domains rows")
    p.add_argument("--load-only", action="store_true",
                   help="stop after the policy load, reload and look-up figures (no servers)")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
