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
    "environ, message",
    [
        ({"CHATAPI_PORT": "http"}, "CHATAPI_PORT must be a whole number from 0 to 65535, got 'http'"),
        ({"CHATAPI_PORT": "70000"}, "CHATAPI_PORT must be a whole number from 0 to 65535, got '70000'"),
        ({"CHATAPI_TOKEN_TTL": "7 weeks"}, "CHATAPI_TOKEN_TTL must be a positive duration"),
        ({"CHATAPI_TOKEN_TTL": "0"}, "CHATAPI_TOKEN_TTL must be a positive duration"),
        ({"CHATAPI_EXPOSE_PASSWORD_HASH": "maybe"},
         "CHATAPI_EXPOSE_PASSWORD_HASH must be true or false"),
        ({"CHATAPI_SECRET": "short"}, "CHATAPI_SECRET must be at least 32 bytes long"),
        ({"CHATAPI_SECRET": ""}, "CHATAPI_SECRET must be at least 32 bytes long"),
        ({"CHATAPI_HEARTBEAT": "-1"}, "CHATAPI_HEARTBEAT must be a positive number of seconds, got '-1'"),
        ({"CHATAPI_HEARTBEAT": "nan"}, "CHATAPI_HEARTBEAT must be a positive number of seconds, got 'nan'"),
        ({"CHATAPI_HEARTBEAT": "-inf"}, "got '-inf'"),
        ({"CHATAPI_FRAMES_PER_SECOND": "nan"}, "CHATAPI_FRAMES_PER_SECOND must be a positive number, got 'nan'"),
        ({"CHATAPI_FRAMES_PER_SECOND": "inf"}, "got 'inf'"),
        ({"CHATAPI_MAX_SOCKETS_PER_USER": "abc"},
         "CHATAPI_MAX_SOCKETS_PER_USER must be a positive whole number, got 'abc'"),
        ({"CHATAPI_MAX_SOCKETS_PER_USER": "0"}, "got '0'"),
        ({"CHATAPI_LOGIN_FAILURES": "1.5"},
         "CHATAPI_LOGIN_FAILURES must be a positive whole number, got '1.5'"),
        ({"CHATAPI_LOGIN_FAILURES_PER_ADDRESS": "0"},
         "CHATAPI_LOGIN_FAILURES_PER_ADDRESS must be a positive whole number, got '0'"),
        ({"CHATAPI_BCRYPT_ROUNDS": "40"}, "CHATAPI_BCRYPT_ROUNDS must be a whole number from 4 to 31"),
        ({"CHATAPI_ALLOWED_ORIGINS": "chat.example.com"},
         "CHATAPI_ALLOWED_ORIGINS: 'chat.example.com' is not an origin"),
        ({"CHATAPI_ALLOWED_ORIGINS": "https://chat.example.com/"},
         "CHATAPI_ALLOWED_ORIGINS: 'https://chat.example.com/' is not an origin (no path"),
        ({"CHATAPI_ALLOWED_ORIGINS": "https://a.example?x=1"}, "is not an origin"),
        ({"CHATAPI_ALLOWED_ORIGINS": "https://user@a.example"}, "no user name"),
        ({"CHATAPI_ALLOWED_ORIGINS": "http://a.example:80"}, "drop ':80'"),
    ],
)
def test_bad_settings_raise_one_clear_error(environ, message):
    with pytest.raises(ConfigError) as info:
        from_env(environ)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert "int()" not in str(info.value) and "float" not in str(info.value)


def test_flags_are_named_as_flags():
    with pytest.raises(ConfigError, match="^--port must be a whole number from 0 to 65535, got -1$"):
        from_env({}, port=-1)
    with pytest.raises(ConfigError, match="^--db must be a file path, :memory: or a postgresql:// URL, got ''$"):
        from_env({}, db_path="")


def test_login_failures_per_address_has_its_own_variable():
    assert from_env({}).login_failures_per_address == 50
    assert from_env({"CHATAPI_LOGIN_FAILURES_PER_ADDRESS": "5000"}).login_failures_per_address == 5000


def test_origins_are_lower_cased_as_browsers_send_them():
    config = from_env({"CHATAPI_ALLOWED_ORIGINS": "HTTPS://Chat.Example.com, http://[::1]:3000"})
    assert config.allowed_origins == ("https://chat.example.com", "http://[::1]:3000")


def test_config_built_in_code_names_the_field():
    with pytest.raises(ConfigError, match="^max_sockets_per_user must be a positive whole number"):
        Config(max_sockets_per_user=0)
    with pytest.raises(ConfigError, match="^presence_interval must be a positive number"):
        Config(presence_interval=float("nan"))
    with pytest.raises(ConfigError, match="as a browser sends it: 'https://a.example'"):
        Config(allowed_origins=("https://A.example",))


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
        ({"CHATAPI_IDLE_TIMEOUT": "0"}, "CHATAPI_IDLE_TIMEOUT must be a positive"),
        ({"CHATAPI_IDLE_TIMEOUT": "soon"}, "CHATAPI_IDLE_TIMEOUT"),
        ({"CHATAPI_MAX_CONNECTIONS": "-1"}, "CHATAPI_MAX_CONNECTIONS must be 0 (automatic)"),
    ],
)
def test_bad_connection_settings_raise_one_clear_error(environ, fragment):
    with pytest.raises(ConfigError) as info:
        from_env(environ)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_connection_settings_are_read():
    config = from_env({"CHATAPI_IDLE_TIMEOUT": "5", "CHATAPI_MAX_CONNECTIONS": "300"})
    assert (config.idle_timeout, config.max_connections) == (5.0, 300)
