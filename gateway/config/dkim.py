"""DKIM signing configuration: the gateway's key store, the customers' signing policy.

Three schemas live here, all frozen and strict like the rest of the configuration:

* :class:`DkimSettings`, the ``dkim:`` section of the gateway file (where the keys are);
* :class:`DkimPolicy`, the ``dkim:`` section of a customer's policy file (what is signed);
* :class:`SelectorMeta`, the small ``<selector>.yaml`` written next to each private key.

The ``check-config`` rule "signing asked for without a usable key" compares these
with what the key store holds: gateway/dkim/signing_keys.py.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.values.domains import normalise_domain, normalise_domains
from gateway.values.keys import Algorithm

MissingKey = Literal["tempfail", "send-unsigned"]
# x= : at least an hour (mail sits in queues), at most a year.
ExpireAfter = Annotated[int, Field(ge=3600, le=366 * 86400)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DkimSettings(Strict):
    """The gateway file's ``dkim:`` section.

    ``keys_dir`` holds ``<domain>/<selector>.key`` + ``<selector>.yaml`` (docs/dkim.md);
    a relative path is relative to the gateway file.
    """

    keys_dir: Path = Path("keys")
    # After not_after a selector stops signing but its public key must stay in DNS
    # until every message it signed has been delivered and checked (queues retry for
    # up to 5 days in Postfix's default): the selector is "retiring" for this long.
    publish_grace_days: Annotated[int, Field(ge=0, le=365)] = 7
    # A selector signs only once its TXT record is seen to carry its public key, and
    # stops when the record goes wrong (gateway/dkim/publication.py, docs/dkim.md).
    check_published: bool = True
    # Seconds between look-ups of each selector's record (a minute at most while one
    # is unknown or unpublished, so a fixed record is seen soon).
    check_interval: Annotated[float, Field(ge=1, le=86400)] = 600.0


class ArcSealing(Strict):
    """The gateway file's ``arc_seal:`` section (off when absent): seal inbound mail
    after our checks (RFC 8617 §5.1) with the key store's RSA keys for ``domain``
    (``<keys_dir>/<domain>/``, made and rotated with ``portcullis keys``)."""

    domain: str

    @field_validator("domain", mode="before")
    @classmethod
    def _domain(cls, value: object) -> object:
        return normalise_domain(str(value))


class DomainSigning(Strict):
    """Per-domain overrides of the customer-wide defaults below."""

    missing_key: MissingKey | None = None
    expire_after: ExpireAfter | None = None
    # Some relays refuse messages carrying several DKIM-Signature fields (Amazon SES:
    # stalwartlabs #77); false means one signature, from the newest active RSA key.
    multiple_signatures: bool | None = None


_NO_OVERRIDES = DomainSigning()


class SigningSettings(Strict):
    """The effective settings for one domain, once overrides are applied."""

    domain: str
    missing_key: MissingKey
    expire_after: int | None
    multiple_signatures: bool


class DkimPolicy(Strict):
    """A customer's ``dkim:`` section::

        dkim:
          sign: all                 # or a list of this customer's domains
          missing_key: tempfail     # or send-unsigned
          expire_after: 1209600     # x= seconds after t=; omitted: no x=
          domains:
            shop.acme.example: {multiple_signatures: false}
    """

    sign: Literal["all"] | tuple[str, ...] = "all"
    missing_key: MissingKey = "tempfail"
    expire_after: ExpireAfter | None = None
    multiple_signatures: bool = True
    domains: dict[str, DomainSigning] = {}

    @field_validator("sign", mode="before")
    @classmethod
    def _sign(cls, value: object) -> object:
        return normalise_domains(value)  # "all" passes through to the Literal

    @field_validator("domains", mode="before")
    @classmethod
    def _domains(cls, value: object) -> object:
        if isinstance(value, dict):
            return {normalise_domain(str(k)): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _overrides_are_signed(self) -> DkimPolicy:
        if self.sign != "all":
            if len(set(self.sign)) != len(self.sign):
                raise ValueError("sign: a domain is listed twice")
            signed = set(self.sign)
            for domain in self.domains:
                if domain not in signed:
                    raise ValueError(f"domains: {domain} has settings but is not in sign")
        return self

    def signed_domains(self, owned: Iterable[str]) -> tuple[str, ...]:
        return tuple(owned) if self.sign == "all" else self.sign

    def settings_for(self, domain: str, owned: Collection[str]) -> SigningSettings | None:
        """The settings for ``domain``, or None when its mail is not to be signed.

        ``owned``: the customer's domains; pass a set when asking for many domains (a
        hosting customer has 100,000: a tuple made every call linear, the load quadratic).
        """
        if domain not in (owned if self.sign == "all" else self.sign):
            return None
        return self.signing_settings(domain)

    def signing_settings(self, domain: str) -> SigningSettings:
        """The settings for ``domain``, known to be signed (overrides applied)."""
        o = self.domains.get(domain, _NO_OVERRIDES)
        return SigningSettings(
            domain=domain,
            missing_key=o.missing_key or self.missing_key,
            expire_after=o.expire_after if o.expire_after is not None else self.expire_after,
            multiple_signatures=(
                o.multiple_signatures if o.multiple_signatures is not None
                else self.multiple_signatures
            ),
        )


def _utc(value: object) -> object:
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError("give a time zone, as in 2026-12-01T00:00:00Z")
    return value


class SelectorMeta(Strict):
    """``<keys_dir>/<domain>/<selector>.yaml``: what the key file alone does not say."""

    algorithm: Algorithm
    # The activity window (RFC 6376 has none: this is our rotation schedule).
    not_before: datetime | None = None
    not_after: datetime | None = None
    created: datetime | None = None

    @field_validator("not_before", "not_after", "created", mode="before")
    @classmethod
    def _aware(cls, value: object) -> object:
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return _utc(value)

    @model_validator(mode="after")
    def _window(self) -> SelectorMeta:
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError("not_after: must be later than not_before")
        return self

    def to_yaml_dict(self) -> dict[str, str]:
        out = {"algorithm": self.algorithm}
        for name in ("not_before", "not_after", "created"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return out
