"""Settings from the environment, and their validation."""

from __future__ import annotations

import pytest

from chatapi.config import Config, ConfigError, from_env


def test_defaults():
    config = from_env({})
    assert (config.host, config.port, config.db_path) == ("127.0.0.1", 8080, "./chatapi.db")
    assert config.secret is None
    assert config.token_ttl == 7 * 86400
    assert config.expose_password_hash is False
    assert config.heartbeat == 30.0


def test_environment_is_read():
    config = from_env({
        "CHATAPI_HOST": "0.0.0.0",
        "CHATAPI_PORT": "9000",
        "CHATAPI_DB": "/tmp/x.db",
        "CHATAPI_SECRET": "k" * 32,
        "CHATAPI_TOKEN_TTL": "12h",
        "CHATAPI_EXPOSE_PASSWORD_HASH": "yes",
        "CHATAPI_ALLOWED_ORIGINS": "https://a.example, https://b.example",
    })
    assert (config.host, config.port, config.db_path) == ("0.0.0.0", 9000, "/tmp/x.db")
    assert config.token_ttl == 12 * 3600
    assert config.expose_password_hash is True
    assert config.allowed_origins == ("https://a.example", "https://b.example")


def test_flags_win_over_the_environment():
    config = from_env({"CHATAPI_PORT": "9000"}, port=9001, host=None)
    assert config.port == 9001 and config.host == "127.0.0.1"


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({"CHATAPI_PORT": "http"}, "CHATAPI_PORT"),
        ({"CHATAPI_PORT": "70000"}, "port"),
        ({"CHATAPI_TOKEN_TTL": "7 weeks"}, "CHATAPI_TOKEN_TTL"),
        ({"CHATAPI_TOKEN_TTL": "0"}, "token lifetime"),
        ({"CHATAPI_EXPOSE_PASSWORD_HASH": "maybe"}, "CHATAPI_EXPOSE_PASSWORD_HASH"),
        ({"CHATAPI_SECRET": "short"}, "32 bytes"),
        ({"CHATAPI_SECRET": ""}, "32 bytes"),
        ({"CHATAPI_HEARTBEAT": "-1"}, "heartbeat"),
    ],
)
def test_bad_settings_raise_one_clear_error(environ, fragment):
    with pytest.raises(ConfigError) as info:
        from_env(environ)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_a_rejected_secret_is_not_echoed():
    with pytest.raises(ConfigError) as info:
        from_env({"CHATAPI_SECRET": "hunter2-hunter2"})
    assert "hunter2" not in str(info.value)


def test_replace_validates_again():
    with pytest.raises(ConfigError):
        Config().replace(bcrypt_rounds=2)


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({"CHATAPI_IDLE_TIMEOUT": "0"}, "idle timeout"),
        ({"CHATAPI_IDLE_TIMEOUT": "soon"}, "CHATAPI_IDLE_TIMEOUT"),
        ({"CHATAPI_MAX_CONNECTIONS": "-1"}, "max connections"),
    ],
)
def test_bad_connection_settings_raise_one_clear_error(environ, fragment):
    with pytest.raises(ConfigError) as info:
        from_env(environ)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_connection_settings_are_read():
    config = from_env({"CHATAPI_IDLE_TIMEOUT": "5", "CHATAPI_MAX_CONNECTIONS": "300"})
    assert (config.idle_timeout, config.max_connections) == (5.0, 300)
