"""Domain names as the gateway compares them: defined on the ground floor
(gateway/values/domains.py), named here too because every settings module uses them."""

from gateway.values.domains import DomainNames, normalise_domain, normalise_domains

__all__ = ["DomainNames", "normalise_domain", "normalise_domains"]
