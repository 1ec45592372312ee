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
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from pydantic import ValidationError

from gateway.config.directory import Directory
from gateway.config.dkim import check_signing_keys

if TYPE_CHECKING:
    from gateway.dkim.keystore import KeyStore
from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.model import Config
from gateway.config.policy import CustomerPolicy
from gateway.config.policy_cache import FileKey, ParsedFile, PolicyCache

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Loaded:
    """A validated configuration with its policy index, ready to serve."""

    config: Config
    directory: Directory
    path: Path
    # The DKIM key store, when a submission listener signs outbound mail.
    keystore: KeyStore | None = None
    # Per-file parse results behind ``directory``: pass it to the next load_config
    # so a reload re-parses only the policy files that changed.
    policy_cache: PolicyCache | None = None


def _read_yaml(path: Path, errors: list[ConfigError]) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        errors.append(ConfigError(str(path), "", f"cannot read: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError:
        errors.append(ConfigError(str(path), "", "not UTF-8 text"))
        return None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        errors.append(ConfigError(str(path), where, f"YAML syntax error: {problem}"))
        return None


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_errors(file: Path, exc: ValidationError) -> list[ConfigError]:
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


def load_policy_file(path: Path, errors: list[ConfigError]) -> CustomerPolicy | None:
    data = _read_yaml(path, errors)
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


def _policy_file_keys(policy_dir: Path) -> list[tuple[str, FileKey]]:
    """(path, stat key) of every regular ``*.yaml``/``*.yml`` file, sorted by name."""
    base = str(policy_dir)
    prefix = "" if base == "." else base.rstrip("/") + "/"
    out = []
    with os.scandir(policy_dir) as it:
        for entry in it:
            name = entry.name
            dot = name.rfind(".")  # Path.suffix: a leading dot does not start one
            if not (0 < dot < len(name) - 1 and name[dot:] in (".yaml", ".yml")):
                continue
            try:
                st = entry.stat()  # follows symlinks, as Path.is_file does
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((name, (st.st_mtime_ns, st.st_size, st.st_ino)))
    out.sort()
    return [(prefix + name, key) for name, key in out]


def _parse_one(path: str, key: FileKey) -> ParsedFile:
    file_errors: list[ConfigError] = []
    policy = load_policy_file(Path(path), file_errors)
    return ParsedFile(key, policy, tuple(file_errors))


def _parse_chunk(chunk: list[tuple[str, FileKey]]) -> bytes:
    """A pool worker's job: the chunk's results, pickled at once (cheaper than one by one)."""
    gc.disable()  # this worker process only parses (see load_policies)
    return pickle.dumps([_parse_one(path, key) for path, key in chunk], protocol=pickle.HIGHEST_PROTOCOL)


def _parse_files(todo: list[tuple[str, FileKey]]) -> Iterator[ParsedFile]:
    """Parse ``todo`` in order; in worker processes when there are many files."""
    # Workers are forked: "spawn"/"forkserver" would re-run the caller's __main__ script
    # in each worker.  Forking is only safe with no other thread alive (one could hold a
    # lock the child then waits on forever), so from a thread (Gateway.reload) it is one
    # file after another -- a reload usually has few changed files anyway.
    if (len(todo) <= PARALLEL_THRESHOLD or (os.cpu_count() or 1) < 2
            or threading.active_count() > 1):
        for path, key in todo:
            yield _parse_one(path, key)
        return
    chunks = [todo[i:i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=os.cpu_count(), mp_context=ctx) as pool:
        for data in pool.map(_parse_chunk, chunks):
            yield from pickle.loads(data)


def _load_policy_files(policy_dir: Path, errors: list[ConfigError],
                       cache: PolicyCache | None = None) -> Directory:
    scanned_ns = time.time_ns()
    files = _policy_file_keys(policy_dir)
    results: dict[str, ParsedFile] = {}
    todo: list[tuple[str, FileKey]] = []
    for path, key in files:
        hit = cache.get(path, key) if cache is not None else None
        if hit is None:
            todo.append((path, key))
        else:
            results[path] = hit
    for (path, _), parsed in zip(todo, _parse_files(todo), strict=True):
        results[path] = parsed
        if cache is not None:
            cache.put(path, parsed, scanned_ns)
    if cache is not None:
        cache.keep_only(set(results))

    policies: list[CustomerPolicy] = []
    by_customer: dict[str, str] = {}
    by_domain: dict[str, str] = {}
    by_login: dict[str, str] = {}
    for path, _ in files:
        parsed = results[path]
        errors.extend(parsed.errors)
        policy = parsed.policy
        if policy is None:
            continue
        clash = False
        if policy.customer in by_customer:
            errors.append(ConfigError(path, "customer",
                                      f"{policy.customer} is already defined in {by_customer[policy.customer]}"))
            clash = True
        for i, domain in enumerate(policy.domains):
            if domain in by_domain:
                errors.append(ConfigError(path, f"domains[{i}]",
                                          f"{domain} is already claimed by {by_domain[domain]}"))
                clash = True
        for i, account in enumerate(policy.accounts):
            if account.login in by_login:
                errors.append(ConfigError(path, f"accounts[{i}].login",
                                          f"{account.login} is already an account in {by_login[account.login]}"))
                clash = True
        if clash:
            continue
        by_customer[policy.customer] = path
        by_domain.update(dict.fromkeys(policy.domains, path))
        by_login.update(dict.fromkeys((a.login for a in policy.accounts), path))
        policies.append(policy)
    return Directory.build(policies, by_customer)


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
    data = _read_yaml(path, errors)
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
    _check_files(path, config, errors)
    if not config.policy_dir.is_dir():
        errors.append(ConfigError(str(path), "policy_dir", f"{config.policy_dir} is not a directory"))
        raise ConfigErrors(errors)
    directory = load_policies(config.policy_dir, errors, policy_cache=policy_cache)
    keystore = None
    if config.listeners.submission or config.listeners.submissions:
        keystore = _load_keys(config, directory, errors)
    if errors:
        raise ConfigErrors(errors)
    return Loaded(config, directory, path, keystore, policy_cache)


def _load_keys(config: Config, directory: Directory, errors: list[ConfigError]) -> KeyStore:
    """The key store, and an error for every domain signed by policy without a usable key
    (unsigned mail must never leave by accident)."""
    from gateway.dkim.keystore import KeyStore  # it reports its errors with this module's helpers

    store = KeyStore.load(config.dkim.keys_dir, config.dkim.publish_grace_days)
    customers = [(directory.files.get(c, c), p.domains, p.dkim)
                 for c, p in directory.customers.items()]
    if any(dkim.signed_domains(domains) for _, domains, dkim in customers):
        errors.extend(check_signing_keys(store, customers, time.time()))
    return store


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
