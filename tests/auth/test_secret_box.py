import base64
import logging
import os
import stat

import pytest
import structlog

from router_impl.auth.secret_box import SecretBox, SecretBoxError

MASTER = b"m" * 32


def test_sealed_secret_opens_back_to_the_original():
    box = SecretBox(MASTER)
    token = box.encrypt("rs_signing-secret-ü", context="key_1")
    assert token.startswith("v1.")
    assert "signing" not in token
    assert box.decrypt(token, context="key_1") == "rs_signing-secret-ü"


def test_each_seal_uses_a_fresh_nonce():
    box = SecretBox(MASTER)
    assert box.encrypt("same") != box.encrypt("same")


def test_nonce_comes_from_the_injected_random_source():
    box = SecretBox(MASTER, random_bytes=lambda n: b"\x00" * n)
    assert box.encrypt("same") == box.encrypt("same")


@pytest.mark.parametrize("position", [3, 10, 20, -1])
def test_tampered_token_is_refused(position):
    box = SecretBox(MASTER)
    token = box.encrypt("secret-value")
    raw = bytearray(base64.urlsafe_b64decode(token[3:] + "=" * (-len(token[3:]) % 4)))
    raw[position] ^= 0x01
    tampered = "v1." + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(SecretBoxError, match="tampered"):
        box.decrypt(tampered)


def test_token_sealed_under_another_master_key_is_refused():
    token = SecretBox(MASTER).encrypt("secret-value")
    with pytest.raises(SecretBoxError, match="another master key"):
        SecretBox(b"n" * 32).decrypt(token)


def test_sealed_secret_cannot_be_moved_to_another_key():
    box = SecretBox(MASTER)
    token = box.encrypt("secret-value", context="key_a")
    with pytest.raises(SecretBoxError):
        box.decrypt(token, context="key_b")


@pytest.mark.parametrize("token", ["", "v1", "v2.AAAA", "v1.", "v1.!!!!", "v1.AAAA", "plain text"])
def test_malformed_tokens_are_refused_with_a_clear_error(token):
    with pytest.raises(SecretBoxError):
        SecretBox(MASTER).decrypt(token)


def test_short_master_key_is_rejected():
    with pytest.raises(ValueError):
        SecretBox(b"short")


def test_repr_shows_no_key_material():
    assert repr(SecretBox(MASTER)) == "SecretBox(<sealed>)"


def test_configured_secret_key_is_used_and_needs_enough_characters(tmp_path):
    a = SecretBox.from_settings("x" * 32, tmp_path)
    b = SecretBox.from_settings("x" * 32, tmp_path / "elsewhere")
    assert b.decrypt(a.encrypt("v")) == "v"
    assert not (tmp_path / "secret.key").exists()
    with pytest.raises(ValueError, match="ROUTER_SECRET_KEY"):
        SecretBox.from_settings("too-short", tmp_path)


def test_without_secret_key_a_private_key_file_is_generated_once_and_reused(tmp_path):
    with structlog.testing.capture_logs() as logs:
        first = SecretBox.from_settings(None, tmp_path / "data")
        second = SecretBox.from_settings(None, tmp_path / "data")
    key_file = tmp_path / "data" / "secret.key"
    assert len(key_file.read_bytes()) == 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert second.decrypt(first.encrypt("v")) == "v"
    assert [e["event"] for e in logs] == ["secret_key_generated"]
    assert logs[0]["path"] == str(key_file) and logs[0]["log_level"] == "warning"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["secret.key"]  # no temp files left


def test_a_corrupt_key_file_is_never_silently_replaced(tmp_path):
    (tmp_path / "secret.key").write_bytes(b"short")
    os.chmod(tmp_path / "secret.key", 0o600)
    with pytest.raises(ValueError, match="exactly 32 bytes"):
        SecretBox.from_settings(None, tmp_path)
    assert (tmp_path / "secret.key").read_bytes() == b"short"


def test_a_key_file_readable_by_others_is_warned_about(tmp_path):
    (tmp_path / "secret.key").write_bytes(os.urandom(32))
    os.chmod(tmp_path / "secret.key", 0o644)
    with structlog.testing.capture_logs() as logs:
        SecretBox.from_settings(None, tmp_path)
    assert [e["event"] for e in logs] == ["secret_key_permissions_too_open"]


def test_workers_racing_to_create_the_key_file_agree_on_one_key(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork is unsafe in a process with threads
    with context.Pool(6) as pool:
        tokens = pool.map(_seal_in_worker, [str(tmp_path)] * 6, chunksize=1)
    box = SecretBox.from_settings(None, tmp_path)
    assert {box.decrypt(t) for t in tokens} == {"hello"}


def _seal_in_worker(data_dir: str) -> str:
    from pathlib import Path

    logging.disable(logging.CRITICAL)
    return SecretBox.from_settings(None, Path(data_dir), log=_Silent()).encrypt("hello")


class _Silent:
    def warning(self, *args, **kwargs):
        pass
