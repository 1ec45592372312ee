"""Load and validate the gateway file and every policy file it references.

Every problem found is reported, one line each (file, field, problem), and the
loader raises :class:`ConfigErrors` with all of them; it never lets a traceback
reach the operator.
"""

from __future__ import annotations

import time
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

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Loaded:
    """A validated configuration with its policy index, ready to serve."""

    config: Config
    directory: Directory
    path: Path
    # The DKIM key store, when a submission listener signs outbound mail.
    keystore: KeyStore | None = None


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


def load_policies(policy_dir: Path, errors: list[ConfigError]) -> Directory:
    """Every ``*.yaml``/``*.yml`` file in the directory; clashes between files are errors."""
    if not policy_dir.is_dir():
        errors.append(ConfigError(str(policy_dir), "", "policy directory does not exist"))
        return Directory()
    return _load_policy_files(policy_dir, errors)


def _load_policy_files(policy_dir: Path, errors: list[ConfigError]) -> Directory:
    files = sorted(p for p in policy_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    policies: list[CustomerPolicy] = []
    by_customer: dict[str, Path] = {}
    by_domain: dict[str, Path] = {}
    by_login: dict[str, Path] = {}
    for path in files:
        file_errors: list[ConfigError] = []
        policy = load_policy_file(path, file_errors)
        errors.extend(file_errors)
        if policy is None:
            continue
        clash = False
        if policy.customer in by_customer:
            errors.append(ConfigError(str(path), "customer",
                                      f"{policy.customer} is already defined in {by_customer[policy.customer]}"))
            clash = True
        for i, domain in enumerate(policy.domains):
            if domain in by_domain:
                errors.append(ConfigError(str(path), f"domains[{i}]",
                                          f"{domain} is already claimed by {by_domain[domain]}"))
                clash = True
        for i, account in enumerate(policy.accounts):
            if account.login in by_login:
                errors.append(ConfigError(str(path), f"accounts[{i}].login",
                                          f"{account.login} is already an account in {by_login[account.login]}"))
                clash = True
        if clash:
            continue
        by_customer[policy.customer] = path
        by_domain.update(dict.fromkeys(policy.domains, path))
        by_login.update(dict.fromkeys((a.login for a in policy.accounts), path))
        policies.append(policy)
    return Directory.build(policies, {c: str(p) for c, p in by_customer.items()})


def _resolve(base: Path, value: Path) -> Path:
    return value if value.is_absolute() else (base / value)


def load_config(path: str | Path) -> Loaded:
    """Load the gateway file and its policy directory; raise ConfigErrors listing every problem."""
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
    directory = load_policies(config.policy_dir, errors)
    keystore = None
    if config.listeners.submission or config.listeners.submissions:
        keystore = _load_keys(config, directory, errors)
    if errors:
        raise ConfigErrors(errors)
    return Loaded(config, directory, path, keystore)


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
