"""The coordinator's registry of site public keys, on real key files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from consortia.common.crypto.pki import (
    PKIError,
    SiteKeyFiles,
    create_site_key,
    load_site_private_key,
)
from consortia.common.crypto.signing import SignedFields, sign, verify
from consortia.server.registry.site_registry import (
    REGISTRY_FILE,
    SiteRegistry,
    SiteRegistryError,
    UnknownSiteError,
    site_name_from_public_key,
)


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, SiteKeyFiles]:
    return {name: create_site_key(tmp_path / "keys", name) for name in ("hospital-a", "hospital-b")}


def test_register_get_and_verify_a_signature(tmp_path: Path, keys: dict[str, SiteKeyFiles]) -> None:
    registry = SiteRegistry(tmp_path / "sites")
    assert registry.names() == []
    assert registry.get("hospital-a") is None
    site = registry.register("hospital-a", keys["hospital-a"].public_key)
    assert site.name == "hospital-a"
    assert site.fingerprint == keys["hospital-a"].fingerprint
    assert abs(site.registered_at - datetime.now(UTC)) < timedelta(minutes=1)
    assert site.public_key_path == tmp_path / "sites" / "hospital-a.pub"
    assert site.flower_node_id is None
    assert registry.get("hospital-a") == site
    assert registry.find(site.fingerprint) == site

    signed = SignedFields("train", "1", 1, 5, "0" * 32, "hospital-a", "f" * 64)
    signature = sign(load_site_private_key(keys["hospital-a"].private_key), signed)
    verify(registry.public_key("hospital-a"), signed, signature)

    index = json.loads((tmp_path / "sites" / REGISTRY_FILE).read_text())
    entry = index["sites"]["hospital-a"]
    assert entry["fingerprint"] == site.fingerprint
    assert entry["registered_at"].endswith("Z")


def test_registry_survives_a_restart(tmp_path: Path, keys: dict[str, SiteKeyFiles]) -> None:
    first = SiteRegistry(tmp_path / "sites")
    first.register("hospital-a", keys["hospital-a"].public_key)
    first.register("hospital-b", keys["hospital-b"].public_key)
    first.record_flower_node("hospital-b", 4242)
    # The site's own key file may go away: the registry keeps its copy.
    keys["hospital-a"].public_key.unlink()
    again = SiteRegistry(tmp_path / "sites")
    assert again.names() == ["hospital-a", "hospital-b"]
    assert again.get("hospital-b") == first.get("hospital-b")
    entry = again.get("hospital-b")
    assert entry is not None and entry.flower_node_id == 4242
    assert (
        again.public_key("hospital-a")
        == load_site_private_key(keys["hospital-a"].private_key).public_key()
    )


def test_a_name_has_one_key_and_a_key_one_name(
    tmp_path: Path, keys: dict[str, SiteKeyFiles]
) -> None:
    registry = SiteRegistry(tmp_path / "sites")
    site = registry.register("hospital-a", keys["hospital-a"].public_key)
    assert registry.register("hospital-a", keys["hospital-a"].public_key) == site  # no change

    new_key = create_site_key(tmp_path / "new", "hospital-a")
    with pytest.raises(SiteRegistryError, match="already registered with another key"):
        registry.register("hospital-a", new_key.public_key)
    assert registry.get("hospital-a") == site
    replaced = registry.register("hospital-a", new_key.public_key, replace=True)
    assert replaced.fingerprint == new_key.fingerprint
    assert (
        registry.public_key("hospital-a") == load_site_private_key(new_key.private_key).public_key()
    )

    # The same key under another name: refused, also with replace.
    plain = tmp_path / "plain.pub"  # no consortia-site comment
    plain.write_text(" ".join(new_key.public_key.read_text().split()[:2]) + "\n")
    for replace in (False, True):
        with pytest.raises(SiteRegistryError, match="already registered for site 'hospital-a'"):
            registry.register("hospital-c", plain, replace=replace)
    # A key made for one site is not registered under another name.
    with pytest.raises(SiteRegistryError, match="made for site 'hospital-b', not 'hospital-c'"):
        registry.register("hospital-c", keys["hospital-b"].public_key)
    assert registry.names() == ["hospital-a"]


def test_unknown_and_unregistered_sites(tmp_path: Path, keys: dict[str, SiteKeyFiles]) -> None:
    registry = SiteRegistry(tmp_path / "sites")
    with pytest.raises(UnknownSiteError, match=r"site 'x' is not registered with this server"):
        registry.public_key("x")
    registry.register("hospital-a", keys["hospital-a"].public_key)
    removed = registry.unregister("hospital-a")
    assert not removed.public_key_path.exists()
    assert registry.names() == []
    with pytest.raises(UnknownSiteError, match=r"consortia site register hospital-a\.pub"):
        registry.public_key("hospital-a")
    with pytest.raises(UnknownSiteError):
        registry.unregister("hospital-a")
    with pytest.raises(UnknownSiteError):
        registry.record_flower_node("hospital-a", 1)
    # Now another name may take the key.
    plain = tmp_path / "plain.pub"
    plain.write_text(" ".join(keys["hospital-a"].public_key.read_text().split()[:2]) + "\n")
    assert registry.register("renamed", plain).fingerprint == keys["hospital-a"].fingerprint


def test_bad_keys_names_and_files_are_refused(
    tmp_path: Path, keys: dict[str, SiteKeyFiles]
) -> None:
    registry = SiteRegistry(tmp_path / "sites")
    with pytest.raises(SiteRegistryError, match="invalid site name"):
        registry.register("../etc", keys["hospital-a"].public_key)
    rsa_pub = tmp_path / "rsa.pub"
    rsa_pub.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(PKIError, match="is an RSA key"):
        registry.register("hospital-r", rsa_pub)
    with pytest.raises(PKIError, match="not found"):
        registry.register("hospital-r", tmp_path / "missing.pub")
    assert not (tmp_path / "sites").exists()  # nothing written on refusal

    registry.register("hospital-a", keys["hospital-a"].public_key)
    # The stored copy is swapped behind the registry's back.
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    (tmp_path / "sites" / "hospital-a.pub").write_bytes(
        other.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(SiteRegistryError, match="changed after registration"):
        registry.public_key("hospital-a")

    (tmp_path / "sites" / REGISTRY_FILE).write_text("{not json")
    with pytest.raises(SiteRegistryError, match=r"registry.json: cannot read the site registry"):
        registry.names()
    (tmp_path / "sites" / REGISTRY_FILE).write_text('{"sites": {}}')
    with pytest.raises(SiteRegistryError, match="not a Consortia site registry"):
        registry.names()


def test_site_name_from_public_key(tmp_path: Path, keys: dict[str, SiteKeyFiles]) -> None:
    assert site_name_from_public_key(keys["hospital-b"].public_key) == "hospital-b"
    plain = tmp_path / "clinic-9.pub"
    plain.write_text(" ".join(keys["hospital-a"].public_key.read_text().split()[:2]) + " me@pc\n")
    assert site_name_from_public_key(plain) == "clinic-9"
