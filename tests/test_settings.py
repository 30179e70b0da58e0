"""Settings from the environment: REDIS_URL's form, and a password that nothing shows."""

from __future__ import annotations

import logging
import pickle

import pytest
from redis import Redis

from gateway import wiring
from gateway.exceptions import ConfigError
from gateway.settings import RedisURL, Settings, mask_url_password

PASSWORD = "s3cret-Pa55"


def test_no_repr_str_or_log_line_shows_the_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({"REDIS_URL": f"rediss://gw:{PASSWORD}@redis.example.com:6380/2"})
    assert settings.redis_url is not None
    for text in (
        repr(settings),
        str(settings),
        repr(settings.redis_url),
        str(settings.redis_url),
        f"{settings}",
    ):
        assert PASSWORD not in text
    assert str(settings.redis_url) == "rediss://gw:***@redis.example.com:6380/2"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("settings %s %r, url %s", settings, settings, settings.redis_url)
    assert PASSWORD not in caplog.text
    assert settings.redis_url.reveal().endswith(f"gw:{PASSWORD}@redis.example.com:6380/2")
    with pytest.raises(TypeError):
        pickle.dumps(settings.redis_url)


def test_the_client_gets_the_password_but_its_errors_do_not_show_it() -> None:
    settings = Settings.from_env({"REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0"})
    client = wiring.redis_client(settings)
    try:
        assert client.connection_pool.connection_kwargs["password"] == PASSWORD
        assert client.connection_pool.connection_kwargs["socket_timeout"] == wiring.SOCKET_TIMEOUT
        assert PASSWORD not in wiring.shown_url(settings)
    finally:
        client.close()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("localhost:6379", "'localhost:6379' has no scheme: expected redis://"),
        ("127.0.0.1", "'127.0.0.1' has no scheme"),
        (f"user:{PASSWORD}@host:6379", "has no scheme"),
        ("http://redis:6379", "scheme 'http' is not supported"),
        ("redis://", "names no host"),
        ("redis+sentinel://h:26379", "a Sentinel URL names its sentinels and the master"),
    ],
)
def test_a_malformed_redis_url_is_one_line_naming_the_expected_form(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": raw})
    text = str(info.value)
    assert says in text
    assert "\n" not in text
    assert PASSWORD not in text
    assert text.startswith("key 'REDIS_URL': ")


@pytest.mark.parametrize(
    "raw",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@host:6380/1?ssl_ca_certs=/etc/ca.pem",
        "unix:///run/redis.sock?db=3",
        "redis+sentinel://a:26379,b:26380/mymaster/0",
        "rediss+sentinel://user:pw@a:26379/mymaster",
    ],
)
def test_the_supported_forms_are_accepted(raw: str) -> None:
    url = Settings.from_env({"REDIS_URL": raw}).redis_url
    assert isinstance(url, RedisURL)
    assert url.reveal() == raw


def test_sentinel_urls_become_sentinel_clients() -> None:
    settings = Settings.from_env({"REDIS_URL": f"rediss+sentinel://gw:{PASSWORD}@a:26379,b/mymaster/3"})
    nodes, master, kwargs, sentinel_kwargs = wiring._sentinel(settings.redis_url.reveal(), 5.0)  # type: ignore[union-attr]
    assert nodes == [("a", 26379), ("b", 26379)]
    assert master == "mymaster"
    assert (kwargs["username"], kwargs["password"], kwargs["db"], kwargs["ssl"]) == ("gw", PASSWORD, 3, True)
    assert sentinel_kwargs["ssl"] is True
    assert "password" not in sentinel_kwargs
    client = wiring.redis_client(settings)
    assert isinstance(client, Redis)
    client.close()


def test_mask_url_password() -> None:
    assert mask_url_password("redis://u:p@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url_password("redis://:p@h:1/0") == "redis://:***@h:1/0"
    assert mask_url_password("redis://h:1/0") == "redis://h:1/0"
    assert mask_url_password("u:p@h:1") == "u:***@h:1"
