"""The DKIM key store: private keys per domain and selector, with activity windows.

On disk (docs/dkim.md)::

    <keys_dir>/<domain>/<selector>.key    PEM private key (PKCS#8), mode 0600
    <keys_dir>/<domain>/<selector>.yaml   algorithm, not_before, not_after, created

A selector's state is computed from its window at the moment of asking, so a
window that opens or closes changes what signs without a restart:

    pending   now < not_before: not signing yet; publish the DNS record meanwhile
    active    inside the window: signs
    retiring  past not_after but within the publish grace: no longer signs, and its
              DNS record must stay published for mail still in queues
    expired   past not_after + grace: the DNS record and the key files can go

``reload()`` (SIGHUP) re-reads the directory and swaps the whole index at once.
Private keys are never logged: they are left out of every repr.
"""

from __future__ import annotations

import base64
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic import ValidationError

from gateway.config.dkim import SelectorMeta
from gateway.config.errors import ConfigError
from gateway.config.load import read_yaml, validation_errors
from gateway.config.safe_yaml import KEY_METADATA
from gateway.values.domains import normalise_domain
from gateway.values.keys import ActiveKey, Algorithm, PrivateKey

# RFC 6376 §3.1: a selector is one or more DNS labels.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
# RFC 8301 §3.2: signers MUST use RSA keys of at least 1024 bits; verifiers need only
# handle up to 4096, so a longer key signs mail nobody can check.
RSA_MIN_BITS, RSA_MAX_BITS = 1024, 4096


def is_selector_name(name: str) -> bool:
    return len(name) <= 63 and bool(_SELECTOR.match(name))


@dataclass(frozen=True)
class Selector:
    domain: str
    selector: str
    algorithm: Algorithm
    bits: int
    key_file: Path
    not_before: datetime | None
    not_after: datetime | None
    private_key: PrivateKey = field(repr=False, compare=False)

    def state(self, now: float, grace: timedelta) -> str:
        if self.not_before is not None and now < self.not_before.timestamp():
            return "pending"
        if self.not_after is None or now < self.not_after.timestamp():
            return "active"
        if now < (self.not_after + grace).timestamp():
            return "retiring"
        return "expired"

    def is_active(self, now: float) -> bool:
        return (self.not_before is None or self.not_before.timestamp() <= now) and (
            self.not_after is None or now < self.not_after.timestamp()
        )

    def signing_key(self) -> ActiveKey:
        return ActiveKey(self.domain, self.selector, self.algorithm, self.private_key)

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_value(self) -> str:
        return public_record(self.private_key)

    def window_text(self) -> str:
        def when(t: datetime | None, default: str) -> str:
            return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ") if t else default

        return f"{when(self.not_before, 'always')} .. {when(self.not_after, 'open')}"


def public_key_bytes(key: PrivateKey) -> bytes:
    """The p= bytes: SubjectPublicKeyInfo DER for RSA (what every verifier accepts),
    the raw 32-byte key for Ed25519 (RFC 8463 §4.2)."""
    pub = key.public_key()
    if isinstance(pub, ed25519.Ed25519PublicKey):
        return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_record(key: PrivateKey) -> str:
    """The TXT record value, RFC 6376 §3.6.1."""
    k = "ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "rsa"
    return f"v=DKIM1; k={k}; p={base64.b64encode(public_key_bytes(key)).decode('ascii')}"


def zone_record(name: str, value: str) -> str:
    """The record in zone-file form, split in strings of at most 255 octets
    (RFC 1035 §3.3.14: a character-string is at most 255 octets)."""
    chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
    if len(chunks) == 1:
        return f'{name}. IN TXT "{chunks[0]}"'
    lines = "\n".join(f'\t"{c}"' for c in chunks)
    return f"{name}. IN TXT (\n{lines} )"


# --- loading ---------------------------------------------------------------------
def _load_selector(domain: str, key_file: Path, errors: list[ConfigError]) -> Selector | None:
    where = str(key_file)
    selector = key_file.name[: -len(".key")]
    if not is_selector_name(selector):
        errors.append(ConfigError(where, "selector", f"{selector!r} is not a DNS label (RFC 6376 §3.1)"))
        return None
    try:
        st = key_file.stat()
    except OSError as exc:
        errors.append(ConfigError(where, "", f"cannot read: {exc.strerror or exc}"))
        return None
    if st.st_mode & 0o077:
        errors.append(ConfigError(
            where, "mode",
            f"{stat.S_IMODE(st.st_mode):04o} lets other users read the private key; chmod 600 {key_file}",
        ))
        return None
    try:
        pem = key_file.read_bytes()
    except OSError as exc:
        errors.append(ConfigError(where, "", f"cannot read: {exc.strerror or exc}"))
        return None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        errors.append(ConfigError(where, "", "the key is encrypted; store it unencrypted, mode 0600"))
        return None
    except (ValueError, UnsupportedAlgorithm):
        errors.append(ConfigError(where, "", "not a PEM private key"))
        return None
    if isinstance(key, rsa.RSAPrivateKey):
        algorithm, bits = "rsa-sha256", key.key_size
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            errors.append(ConfigError(
                where, "bits", f"RSA key of {bits} bits; RFC 8301 needs {RSA_MIN_BITS} to {RSA_MAX_BITS}",
            ))
            return None
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm, bits = "ed25519-sha256", 256
    else:
        errors.append(ConfigError(where, "", "neither an RSA nor an Ed25519 key"))
        return None

    meta = SelectorMeta(algorithm=algorithm)
    meta_file = key_file.with_suffix(".yaml")
    if meta_file.exists():
        loaded = _load_meta(meta_file, errors)
        if loaded is None:
            return None
        if loaded.algorithm != algorithm:
            errors.append(ConfigError(
                str(meta_file), "algorithm", f"says {loaded.algorithm} but {key_file.name} is {algorithm}",
            ))
            return None
        meta = loaded
    return Selector(domain, selector, algorithm, bits, key_file, meta.not_before, meta.not_after, key)


def _load_meta(path: Path, errors: list[ConfigError]) -> SelectorMeta | None:
    found: list[ConfigError] = []
    data = read_yaml(path, found, KEY_METADATA)  # bounded, as every YAML file we read
    if found:
        errors.extend(found)
        return None
    if not isinstance(data, dict):
        errors.append(ConfigError(str(path), "", "must be a mapping of keys to values"))
        return None
    try:
        return SelectorMeta.model_validate(data)
    except ValidationError as exc:
        errors.extend(validation_errors(path, exc))
        return None


def load_keys(keys_dir: Path) -> tuple[dict[str, tuple[Selector, ...]], list[ConfigError]]:
    """Every selector under ``keys_dir`` by domain, and every problem found."""
    errors: list[ConfigError] = []
    found: dict[str, tuple[Selector, ...]] = {}
    if not keys_dir.is_dir():
        return found, [ConfigError(str(keys_dir), "", "key directory does not exist")]
    for domain_dir in sorted(keys_dir.iterdir()):
        if not domain_dir.is_dir() or domain_dir.name.startswith("."):
            continue
        try:
            domain = normalise_domain(domain_dir.name)
        except ValueError as exc:
            errors.append(ConfigError(str(domain_dir), "", str(exc)))
            continue
        if domain != domain_dir.name:
            errors.append(ConfigError(str(domain_dir), "", f"name the directory {domain} (lower case, no dot at the end)"))
            continue
        selectors = []
        for key_file in sorted(domain_dir.glob("*.key")):
            loaded = _load_selector(domain, key_file, errors)
            if loaded is not None:
                selectors.append(loaded)
        for meta_file in sorted(domain_dir.glob("*.yaml")):
            if not meta_file.with_suffix(".key").exists():
                errors.append(ConfigError(str(meta_file), "", f"no key file {meta_file.with_suffix('.key').name} next to it"))
        if selectors:
            found[domain] = tuple(selectors)
    return found, errors


def _signing_order(s: Selector) -> tuple:
    # RSA first (every verifier has it), then Ed25519; newest window first within each.
    start = s.not_before.timestamp() if s.not_before else 0.0
    return (s.algorithm != "rsa-sha256", -start, s.selector)


class KeyStore:
    """The key directory, loaded; ask it which keys sign a domain's mail *now*."""

    def __init__(self, keys_dir: Path | str, publish_grace_days: int = 7):
        self.keys_dir = Path(keys_dir)
        self.grace = timedelta(days=publish_grace_days)
        self._by_domain: dict[str, tuple[Selector, ...]] = {}
        self.errors: tuple[ConfigError, ...] = ()

    @classmethod
    def load(cls, keys_dir: Path | str, publish_grace_days: int = 7) -> KeyStore:
        """Load everything usable; problems are kept in ``errors`` for check-config."""
        store = cls(keys_dir, publish_grace_days)
        store._by_domain, errors = load_keys(store.keys_dir)
        store.errors = tuple(errors)
        return store

    def reload(self) -> list[ConfigError]:
        """Re-read the directory (SIGHUP).  On any error the current keys stay in use
        and the errors are returned for the log; otherwise the new index replaces the
        old one in a single assignment, so a signing thread sees one or the other."""
        by_domain, errors = load_keys(self.keys_dir)
        if not errors:
            self._by_domain = by_domain
        return errors

    def domains(self) -> list[str]:
        return sorted(self._by_domain)

    def selectors(self, domain: str | None = None) -> list[Selector]:
        if domain is not None:
            return sorted(self._by_domain.get(domain, ()), key=_signing_order)
        return [s for d in self.domains() for s in self.selectors(d)]

    def active(self, domain: str, now: float) -> list[ActiveKey]:
        """The keys whose window contains ``now``, RSA first then newest first."""
        live = [s for s in self._by_domain.get(domain, ()) if s.is_active(now)]
        return [s.signing_key() for s in sorted(live, key=_signing_order)]


# --- writing (keys generate) ---------------------------------------------------------
def generate_selector(
    keys_dir: Path,
    domain: str,
    selector: str,
    algorithm: Algorithm,
    bits: int = 2048,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    now: datetime | None = None,
) -> Selector:
    """Make a key, write it 0600 (never over an existing one) and its metadata."""
    domain = normalise_domain(domain)
    if not is_selector_name(selector):
        raise ValueError(f"{selector!r} is not a valid selector (lower-case DNS labels, RFC 6376 §3.1)")
    if algorithm == "rsa-sha256":
        if not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
            raise ValueError(f"RSA keys must have {RSA_MIN_BITS} to {RSA_MAX_BITS} bits (RFC 8301), not {bits}")
        key: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        bits = 256
    meta = SelectorMeta(
        algorithm=algorithm, not_before=not_before, not_after=not_after,
        created=(now or datetime.now(UTC)).replace(microsecond=0),
    )
    domain_dir = keys_dir / domain
    domain_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_file = domain_dir / f"{selector}.key"
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # O_EXCL: never overwrite a key that may be published and signing.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.chmod(key_file, 0o600)  # whatever the umask was
    key_file.with_suffix(".yaml").write_text(yaml.safe_dump(meta.to_yaml_dict(), sort_keys=False))
    return Selector(domain, selector, algorithm, bits, key_file, meta.not_before, meta.not_after, key)
