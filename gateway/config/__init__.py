"""Typed, frozen configuration: the gateway file and the customers' policy files."""

from gateway.config.errors import ConfigError, ConfigErrors
from gateway.config.load import load_config
from gateway.config.model import Config

__all__ = ["Config", "ConfigError", "ConfigErrors", "load_config"]
