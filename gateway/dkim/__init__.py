"""DKIM signing of outbound mail: the key store, the signer and the `keys` commands."""
