"""docs/deployment.md's gateway file is a valid gateway file, as written."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config.load import load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "deployment.md"


def gateway_file_in_the_doc() -> dict:
    section = DOC.read_text().split("## The gateway file", 1)[1]
    return yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])


def test_the_deployment_gateway_file_loads(tmp_path, cert_files):
    config = gateway_file_in_the_doc()
    # Only the paths change: this machine has no /etc/portcullis.
    tls = {"cert": str(cert_files[0]), "key": str(cert_files[1])}
    for listener in config["listeners"].values():
        listener["tls"] = tls
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "acme.yaml").write_text("customer: acme\ndomains: [acme.example]\n")
    config["policy_dir"] = str(tmp_path / "policy")
    config["dkim"]["keys_dir"] = str(tmp_path / "keys")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path).config
    inbound = loaded.listeners.inbound
    assert inbound.address == ("0.0.0.0", "::")
    assert inbound.proxy_protocol.trusts("10.0.0.10") and not inbound.proxy_protocol.trusts("10.0.0.31")
    assert loaded.accounts.source == "sql" and loaded.default_policy.dkim.missing_key == "send-unsigned"
