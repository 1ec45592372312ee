"""Load and validate the gateway file and every policy file it references.

Every problem found is reported, one line each (file, field, problem), and the
loader raises :class:`ConfigErrors` with all of them; it never lets a traceback
reach the operator.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import stat
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from gateway.config.default_policy import read_domains_file
from gateway.config.directory import Directory
from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.model import Config
from gateway.config.policy import Account, CustomerPolicy
from gateway.config.policy_cache import FileKey, ParsedFile, PolicyCache
from gateway.config.safe_yaml import (
    GATEWAY_FILE,
    POLICY_FILE,
    YamlLimits,
    YamlRefused,
    load_bounded,
)


@dataclass(frozen=True)
class Loaded:
    """A validated configuration with its policy index, ready to serve."""

    config: Config
    directory: Directory
    path: Path
    # Per-file parse results behind ``directory``: pass it to the next load_config
    # so a reload re-parses only the policy files that changed.
    policy_cache: PolicyCache | None = None


class _TooLarge(Exception):
    pass


def _read_text(path: str | Path, max_bytes: int) -> str:
    """The file as ``path.read_text(encoding="utf-8")`` gives it (newlines made ``\\n``),
    in a third of the time: no text-file layers, one system call for a small file.
    Reads at most ``max_bytes`` + 1 bytes: a larger file raises _TooLarge."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts = []
        left = max_bytes + 1
        while left > 0 and (data := os.read(fd, min(left, 1 << 16))):
            parts.append(data)
            left -= len(data)
    finally:
        os.close(fd)
    if left <= 0:
        raise _TooLarge
    text = (parts[0] if len(parts) == 1 else b"".join(parts)).decode("utf-8")
    if "\r" in text:  # universal newlines, as a text-mode read does
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_yaml(path: str | Path, errors: list[ConfigError], limits: YamlLimits) -> object:
    """The document in the YAML file at ``path``, or None with one error in ``errors``
    (unreadable, not UTF-8, too large, not YAML, past a limit of gateway/config/safe_yaml.py)."""
    try:
        text = _read_text(path, limits.max_bytes)
    except OSError as exc:
        errors.append(ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError:
        errors.append(ConfigError(str(path), "", "not UTF-8 text"))
        return None
    except _TooLarge:
        errors.append(ConfigError(str(path), "", f"larger than {limits.max_bytes:,} bytes"))
        return None
    try:
        return load_bounded(text, limits)
    except YamlRefused as exc:
        where = f"line {exc.line}" if exc.line is not None else ""
        errors.append(ConfigError(str(path), where, exc.problem))
        return None


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_errors(file: str | Path, exc: ValidationError) -> list[ConfigError]:
    """pydantic's errors as one line each; model-level errors carry 'field: problem'."""
    out = []
    for err in exc.errors(include_url=False):
        # Drop pydantic's tagged-union / function wrapper names from the location.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"].removeprefix("Value error, ")
        field = _location(loc)
        if not field and ": " in msg:
            field, msg = msg.split(": ", 1)
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(ConfigError(str(file), field, msg))
    return out


def load_policy_file(path: str | Path, errors: list[ConfigError]) -> CustomerPolicy | None:
    data = read_yaml(path, errors, POLICY_FILE)
    if data is None and not errors:
        errors.append(ConfigError(str(path), "", "file is empty"))
        return None
    if not isinstance(data, dict):
        if data is not None:
            errors.append(ConfigError(str(path), "", "must be a mapping of keys to values"))
        return None
    try:
        return CustomerPolicy.model_validate(data)
    except ValidationError as exc:
        errors.extend(validation_errors(path, exc))
        return None


def load_policies(policy_dir: Path, errors: list[ConfigError], *,
                  policy_cache: PolicyCache | None = None) -> Directory:
    """Every ``*.yaml``/``*.yml`` file in the directory; clashes between files are errors.

    With ``policy_cache``, files unchanged since the cache last saw them are not
    parsed again (gateway/config/policy_cache.py); clashes are always re-checked.
    """
    if not policy_dir.is_dir():
        errors.append(ConfigError(str(policy_dir), "", "policy directory does not exist"))
        return Directory()
    # Loading builds millions of small objects and no cycles worth collecting: the cyclic
    # collector would walk the growing heap again and again (about a fifth of the time at
    # 100,000 files).  Off for the load only; any garbage is collected afterwards.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load_policy_files(policy_dir, errors, policy_cache)
    finally:
        if was_enabled:
            gc.enable()


# Above this many files to parse, a process pool parses them on every core.
PARALLEL_THRESHOLD = 2000
_CHUNK = 500


def _policy_file_keys(policy_dir: Path, errors: list[ConfigError], *, stat_now: bool = True
                      ) -> list[tuple[str, FileKey | None]]:
    """(path, stat key) of every ``*.yaml``/``*.yml`` file, sorted by name.

    An entry named like a policy file that is not one (a directory, a symbolic link
    to nothing, a FIFO) is an error naming it: skipped silently, its customer's
    domains would bounce and its logins fail after a reload (issue 14).

    With ``stat_now=False`` the key is None, for the parser to take (in the worker
    processes, in parallel: on a first load nothing is compared with a cache, and
    100,000 stat calls here would be half a second before any parsing starts).
    """
    base = str(policy_dir)
    prefix = "" if base == "." else base.rstrip("/") + "/"
    out: list[tuple[str, FileKey | None]] = []
    refused: list[tuple[str, str]] = []
    with os.scandir(policy_dir) as it:
        for entry in it:
            name = entry.name
            dot = name.rfind(".")  # Path.suffix: a leading dot does not start one
            if not (0 < dot < len(name) - 1 and name[dot:] in (".yaml", ".yml")):
                continue
            if not stat_now:
                # From the directory entry's type, without a system call; a symbolic
                # link is followed (stat).
                try:
                    if entry.is_file():
                        out.append((name, None))
                        continue
                except OSError:
                    pass
                refused.append((name, _not_a_policy_file(entry)))
                continue
            try:
                st = entry.stat()  # follows symlinks, as Path.is_file does
            except OSError:
                refused.append((name, _not_a_policy_file(entry)))
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((name, (st.st_mtime_ns, st.st_size, st.st_ino)))
            else:
                refused.append((name, _not_a_policy_file(entry)))
    out.sort()
    for name, problem in sorted(refused):
        errors.append(ConfigError(prefix + name, "", problem))
    return [(prefix + name, key) for name, key in out]


def _not_a_policy_file(entry: os.DirEntry) -> str:
    """Why a directory entry named like a policy file cannot be read as one."""
    try:
        st = os.stat(entry.path)
    except FileNotFoundError:
        try:
            target = os.readlink(entry.path)
        except OSError:
            return "vanished while the policy directory was read"
        return f"is a symbolic link to nothing ({target} does not exist)"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        return ("is a directory, not a policy file: move it out of the policy directory "
                "or give it another name")
    return "is not a regular file (a FIFO, socket or device): a policy file must be a file"


def _stat_key(path: str) -> FileKey:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0, 0)  # gone since the listing: reading it reports why
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _parse_one(path: str, key: FileKey | None) -> ParsedFile:
    if key is None:
        key = _stat_key(path)  # taken before reading, as the listing would have
    file_errors: list[ConfigError] = []
    policy = load_policy_file(path, file_errors)
    return ParsedFile(key, policy, tuple(file_errors))


def _parse_chunk(chunk: list[tuple[str, FileKey | None]]) -> bytes:
    """A pool worker's job: (stat key, policy, errors) of each file, pickled in one piece.

    One pickle per chunk shares what files have in common (the default DKIM
    section, repeated strings) and is cheaper than a result at a time; the parent
    already knows the paths, so they are not sent back.
    """
    gc.disable()  # this worker process only parses (see load_policies)
    out = []
    for path, key in chunk:
        parsed = _parse_one(path, key)
        out.append((parsed.key, parsed.policy, parsed.errors))
    return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)


def _unpickle_chunk(data: bytes) -> list[ParsedFile]:
    return [ParsedFile(key, policy, errors) for key, policy, errors in pickle.loads(data)]


def _parse_files(todo: list[tuple[str, FileKey | None]]) -> list[ParsedFile]:
    """Parse ``todo``, results in the same order; on every core when there are many files.

    Worker processes take chunks from the front of the list while this process
    parses chunks from the back that no worker has started (a chunk it parses itself
    costs no pickling); both meet wherever the machine's load puts them.
    """
    # Workers are forked: "spawn"/"forkserver" would re-run the caller's __main__ script
    # in each worker.  Forking is only safe with no other thread alive (one could hold a
    # lock the child then waits on forever), so from a thread (Gateway.reload) it is one
    # file after another -- a reload usually has few changed files anyway.
    cores = os.cpu_count() or 1
    if len(todo) <= PARALLEL_THRESHOLD or cores < 2 or threading.active_count() > 1:
        return [_parse_one(path, key) for path, key in todo]
    chunks = [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    done: list[list[ParsedFile] | None] = [None] * len(chunks)
    ctx = multiprocessing.get_context("fork")
    # A worker per core, and this process helps: on a busy machine three processes get
    # more of it than two, and on an idle one the oversubscription costs little.
    pool = ProcessPoolExecutor(max_workers=cores, mp_context=ctx)
    try:
        futures = [pool.submit(_parse_chunk, chunk) for chunk in chunks]
        taken = 0  # chunks[:taken] are collected from the workers
        for i in range(len(chunks) - 1, -1, -1):
            if i < taken or not futures[i].cancel():
                break  # a worker has it, so the chunks before it too: the rest is theirs
            done[i] = [_parse_one(path, key) for path, key in chunks[i]]
            # Unpickle what workers have finished meanwhile, so little is left at the end.
            while taken < i and futures[taken].done():
                done[taken] = _unpickle_chunk(futures[taken].result())
                taken += 1
        for i in range(taken, len(chunks)):
            if done[i] is None:
                done[i] = _unpickle_chunk(futures[i].result())
    finally:
        # After an error, the chunks no worker has started are dropped, not parsed.
        pool.shutdown(wait=True, cancel_futures=True)
    return [parsed for part in done for parsed in part]  # type: ignore[union-attr]


def _load_policy_files(policy_dir: Path, errors: list[ConfigError],
                       cache: PolicyCache | None = None) -> Directory:
    scanned_ns = time.time_ns()
    if cache is None or not len(cache):
        # A first load parses every file: the parsers take the stat keys, in parallel.
        first = _policy_file_keys(policy_dir, errors, stat_now=False)
        results = _parse_files(first)
        if cache is not None:
            for (path, _), parsed in zip(first, results, strict=True):
                cache.put(path, parsed, scanned_ns)
        return _index(first, results, errors)
    files = _policy_file_keys(policy_dir, errors)
    cached = [cache.get(path, key) for path, key in files]
    todo = [file for file, hit in zip(files, cached, strict=True) if hit is None]
    parsed_now = _parse_files(todo)
    for (path, _), parsed in zip(todo, parsed_now, strict=True):
        cache.put(path, parsed, scanned_ns)
    cache.keep_only({path for path, _ in files})
    fresh = iter(parsed_now)
    return _index(files, [next(fresh) if hit is None else hit for hit in cached], errors)


def _index(files: list[tuple[str, FileKey | None]], results: list[ParsedFile],
           errors: list[ConfigError]) -> Directory:
    """Every file's errors, then the clashes between files, and the look-up index.

    A file that clashes with an earlier one (same customer id, domain or login) is
    left out whole, so the first file (in name order) keeps what it claims.
    """
    customers: dict[str, CustomerPolicy] = {}
    by_customer: dict[str, str] = {}  # customer id -> file
    domains: dict[str, str] = {}  # domain -> customer id
    accounts: dict[str, tuple[str, Account]] = {}  # login -> (customer id, account)
    for (path, _), parsed in zip(files, results, strict=True):
        if parsed.errors:
            errors.extend(parsed.errors)
        policy = parsed.policy
        if policy is None:
            continue
        customer = policy.customer
        if (customer in customers or not domains.keys().isdisjoint(policy.domains)
                or not accounts.keys().isdisjoint([a.login for a in policy.accounts])):
            errors.extend(_clashes(path, policy, customers, by_customer, domains, accounts))
            continue
        customers[customer] = policy
        by_customer[customer] = path
        for domain in policy.domains:
            domains[domain] = customer
        for account in policy.accounts:
            accounts[account.login] = (customer, account)
    return Directory.from_index(customers, domains, accounts, by_customer)


def _clashes(path: str, policy: CustomerPolicy, customers: dict[str, CustomerPolicy],
             by_customer: dict[str, str], domains: dict[str, str],
             accounts: dict[str, tuple[str, Account]]) -> list[ConfigError]:
    """What ``policy`` claims that an earlier file already has, one error each."""
    out = []
    if policy.customer in customers:
        out.append(ConfigError(path, "customer",
                               f"{policy.customer} is already defined in {by_customer[policy.customer]}"))
    for i, domain in enumerate(policy.domains):
        if domain in domains:
            out.append(ConfigError(path, f"domains[{i}]",
                                   f"{domain} is already claimed by {by_customer[domains[domain]]}"))
    for i, account in enumerate(policy.accounts):
        if account.login in accounts:
            out.append(ConfigError(path, f"accounts[{i}].login",
                                   f"{account.login} is already an account in "
                                   f"{by_customer[accounts[account.login][0]]}"))
    return out


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value)


def load_config(path: str | Path, *, policy_cache: PolicyCache | None = None) -> Loaded:
    """Load the gateway file and its policy directory; raise ConfigErrors listing every problem.

    ``policy_cache`` (from the previous ``Loaded.policy_cache``) spares re-parsing unchanged
    policy files; without one a new cache is made and returned in ``Loaded.policy_cache``.
    """
    if policy_cache is None:
        policy_cache = PolicyCache()
    path = Path(path)
    errors: list[ConfigError] = []
    data = read_yaml(path, errors, GATEWAY_FILE)
    if errors:
        raise ConfigErrors(errors)
    if not isinstance(data, dict):
        raise ConfigErrors([ConfigError(str(path), "", "must be a mapping of keys to values")])
    base = path.resolve().parent
    try:
        config = Config.model_validate({**data, "base_dir": base})
    except ValidationError as exc:
        raise ConfigErrors(validation_errors(path, exc)) from None
    config = _with_resolved_paths(config, base)
    config = _with_domains_file(path, config, base, errors)
    _check_files(path, config, errors)
    if not config.policy_dir.is_dir():
        errors.append(ConfigError(str(path), "policy_dir", f"{config.policy_dir} is not a directory"))
        raise ConfigErrors(errors)
    directory = load_policies(config.policy_dir, errors, policy_cache=policy_cache)
    if errors:
        raise ConfigErrors(errors)
    # The DKIM keys are checked against these policies where the key store is built
    # (gateway/dkim/signing_keys.py): the loader holds settings, not runtime objects.
    return Loaded(config, directory, path, policy_cache)


def _with_resolved_paths(config: Config, base: Path) -> Config:
    listeners = {}
    for name in ("inbound", "submission", "submissions"):
        listener = getattr(config.listeners, name)
        if listener is not None and listener.tls is not None:
            tls = listener.tls.model_copy(update={
                "cert": _resolve(base, listener.tls.cert), "key": _resolve(base, listener.tls.key)})
            listener = listener.model_copy(update={"tls": tls})
        listeners[name] = listener
    return config.model_copy(update={
        "policy_dir": _resolve(base, config.policy_dir),
        "dkim": config.dkim.model_copy(update={"keys_dir": _resolve(base, config.dkim.keys_dir)}),
        "listeners": config.listeners.model_copy(update=listeners),
    })


def _with_domains_file(path: Path, config: Config, base: Path,
                       errors: list[ConfigError]) -> Config:
    """default_policy.domains_file's names join default_policy.domains."""
    default = config.default_policy
    if default.domains_file is None:
        return config
    file = _resolve(base, default.domains_file)
    try:
        names = read_domains_file(file)
    except ValueError as exc:
        errors.append(ConfigError(str(path), "default_policy.domains_file", str(exc)))
        return config
    merged = tuple(dict.fromkeys((*default.domains, *names)))
    # Validated again, not model_copy'd: the set behind lists_domain is built at init.
    again = type(default).model_validate(
        {**default.model_dump(), "domains": merged, "domains_file": file})
    return config.model_copy(update={"default_policy": again})


def _check_files(path: Path, config: Config, errors: list[ConfigError]) -> None:
    import ssl

    secret_file = config.abuse.secret_file
    if secret_file is not None and not _resolve(config.base_dir, secret_file).is_file():
        errors.append(ConfigError(str(path), "abuse.secret_file",
                                  f"{_resolve(config.base_dir, secret_file)} does not exist"))

    for name in ("inbound", "submission", "submissions"):
        listener = getattr(config.listeners, name)
        if listener is None or listener.tls is None:
            continue
        field = f"listeners.{name}.tls"
        for part in ("cert", "key"):
            file = getattr(listener.tls, part)
            if not file.is_file():
                errors.append(ConfigError(str(path), f"{field}.{part}", f"{file} does not exist"))
                return
        try:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(listener.tls.cert, listener.tls.key)
        except (ssl.SSLError, OSError) as exc:
            errors.append(ConfigError(str(path), field, f"cannot load certificate and key: {exc}"))


def load_for_command(path: str | Path) -> Loaded | None:
    """The gateway file for a command (``accounts``, ``held``, ``screening``, ``dmarc``):
    None after printing its errors to stderr, one per line; the command then exits 2."""
    try:
        return load_config(path)
    except ConfigErrors as exc:
        print(exc, file=sys.stderr)
        return None
