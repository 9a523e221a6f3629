"""peersync.toml: written by `peersync init`, read back, overridden by the environment,
and every kind of bad value refused at load with the file and the dotted key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from connector.config import (
    CONFIG_NAME,
    Config,
    EhrConfig,
    SyncConfig,
    check_url_scheme,
    load_config,
    write_config,
)
from connector.errors import ConfigError
from mappings.profile import default_profile_path

HTTPS = "https://ehr.example.org/fhir"


def config_text(
    *,
    top: str = "",
    ehr: str = f'base_url = "{HTTPS}"',
    auth: str = 'type = "none"',
    sync: str = "",
) -> str:
    """A small peersync.toml; each part replaceable."""
    return (
        f'profile = "default"\ndefault_source = "peer-tool"\n{top}\n'
        f"[ehr]\n{ehr}\n\n[ehr.auth]\n{auth}\n\n[sync]\n{sync}\n"
    )


def write(folder: Path, text: str) -> Path:
    path = folder / CONFIG_NAME
    path.write_text(text, encoding="utf-8")
    return path


# -- written and read back --------------------------------------------------------


def test_write_config_then_load_config_round_trips(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "home",
        base_url=HTTPS + "/",
        database_url="sqlite:///peersync.db",
        default_source="tool-a",
        profile="profiles/agency.toml",
    )
    assert path == tmp_path / "home" / CONFIG_NAME

    config = load_config(path, environ={})

    assert config == Config(
        path=path.resolve(),
        profile="profiles/agency.toml",
        database_url=f"sqlite:///{(tmp_path / 'home' / 'peersync.db').resolve()}",
        default_source="tool-a",
        ehr=EhrConfig(base_url=HTTPS),  # the template spells out every default
        sync=SyncConfig(lease_s=30.0, renew_every_s=10.0, max_wait_s=120.0, max_attempts=8),
    )
    # the capability keys are commented out in the template: the preset gives them
    assert config.ehr.preset == "generic" and config.ehr.explicit == frozenset()
    for key in ("mode", "conditional", "note_content_type", "create_encounters"):
        assert f"\n# {key} = " in path.read_text(encoding="utf-8"), key
    epic = write_config(tmp_path / "epic", base_url=HTTPS, preset="epic")
    assert load_config(epic, environ={}).ehr.preset == "epic"
    assert config.folder == path.parent.resolve()
    assert config.profile_path() == path.parent.resolve() / "profiles" / "agency.toml"
    assert isinstance(config.ehr.timeout_s, float)
    assert isinstance(config.sync.lease_s, float)


def test_write_config_keeps_awkward_values_exactly(tmp_path: Path) -> None:
    """Values go into TOML strings: quotes and backslashes must not break the file."""
    url = 'postgresql+psycopg://peersync:p"w\\d@db.internal:5432/peersync'
    profile = str(tmp_path / 'agency "north"' / "profile.toml")

    path = write_config(tmp_path, base_url=HTTPS, database_url=url, profile=profile)

    config = load_config(path, environ={})
    assert config.database_url == url
    assert config.profile == profile
    assert config.profile_path() == Path(profile)


def test_write_config_refuses_to_replace_a_file_unless_asked(tmp_path: Path) -> None:
    path = write_config(tmp_path, base_url=HTTPS)

    with pytest.raises(ConfigError, match="already exists") as caught:
        write_config(tmp_path, base_url="https://other.example.org/fhir")
    assert str(path) in str(caught.value)
    assert load_config(path, environ={}).ehr.base_url == HTTPS

    write_config(tmp_path, base_url="https://other.example.org/fhir", overwrite=True)
    assert load_config(path, environ={}).ehr.base_url == "https://other.example.org/fhir"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"base_url": "http://ehr.example.org/fhir"}, "ehr.base_url"),
        ({"base_url": HTTPS, "default_source": "peer tool"}, "default_source"),
    ],
)
def test_write_config_leaves_no_file_behind_when_refused(
    tmp_path: Path, kwargs: dict[str, str], key: str
) -> None:
    with pytest.raises(ConfigError, match=key):
        write_config(tmp_path, **kwargs)
    assert not (tmp_path / CONFIG_NAME).exists()


def test_defaults_fill_in_what_the_file_leaves_out(tmp_path: Path) -> None:
    path = write(tmp_path, f'[ehr]\nbase_url = "{HTTPS}"\n')

    config = load_config(path, environ={})

    assert config.profile == "default"
    assert config.profile_path() == default_profile_path()
    assert config.default_source == "peer-tool"
    assert config.database_url == f"sqlite:///{(tmp_path / 'peersync.db').resolve()}"
    assert config.ehr == EhrConfig(base_url=HTTPS)
    assert config.ehr.auth == {"type": "none"}
    assert config.sync == SyncConfig()


def test_every_setting_is_read(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not checked here", encoding="utf-8")
    path = write(
        tmp_path,
        config_text(
            top='database_url = "postgresql+psycopg://peersync@db.internal/peersync"',
            ehr="\n".join(
                [
                    'base_url = "https://ehr.example.org/fhir/R4/"',
                    'preset = "oracle-health"',
                    'organization_id = "org-7.a"',
                    'mode = "batch"',
                    "conditional = false",
                    "max_bundle_entries = 3",
                    'note_content_type = "application/xhtml+xml"',
                    "create_encounters = false",
                    "timeout_s = 12",
                    'ca_file = "ca.pem"',
                ]
            ),
            auth='type = "basic"\nusername = "svc"\npassword_env = "EHR_PASSWORD"',
            sync="lease_s = 60\nrenew_every_s = 20.5\nmax_wait_s = 0\nmax_attempts = 1",
        ),
    )

    config = load_config(path, environ={})

    assert config.database_url == "postgresql+psycopg://peersync@db.internal/peersync"
    assert config.ehr == EhrConfig(
        base_url="https://ehr.example.org/fhir/R4",
        preset="oracle-health",
        organization_id="org-7.a",
        mode="batch",
        conditional=False,
        max_bundle_entries=3,
        note_content_type="application/xhtml+xml",
        create_encounters=False,
        timeout_s=12.0,
        ca_file="ca.pem",
        auth={"type": "basic", "username": "svc", "password_env": "EHR_PASSWORD"},
        # the capability keys set in the file: they override the preset
        explicit=frozenset({"mode", "conditional", "note_content_type", "create_encounters"}),
    )
    assert config.sync == SyncConfig(
        lease_s=60.0, renew_every_s=20.5, max_wait_s=0.0, max_attempts=1
    )


def test_load_config_finds_the_file_in_peersync_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, config_text())
    monkeypatch.setenv("PEERSYNC_HOME", str(tmp_path))
    monkeypatch.delenv("PEERSYNC_EHR_URL", raising=False)
    monkeypatch.delenv("PEERSYNC_DATABASE_URL", raising=False)

    assert load_config().path == (tmp_path / CONFIG_NAME).resolve()


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as caught:
        load_config(tmp_path / CONFIG_NAME, environ={})
    assert str(tmp_path / CONFIG_NAME) in str(caught.value)


# -- the environment ------------------------------------------------------------------


def test_the_environment_overrides_the_ehr_url_and_the_database(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(top='database_url = "sqlite:///file.db"'))
    env = {
        "PEERSYNC_EHR_URL": "https://ehr-test.example.org/fhir/",
        "PEERSYNC_DATABASE_URL": "postgresql+psycopg://peersync@db.internal/peersync",
    }

    config = load_config(path, environ=env)

    assert config.ehr.base_url == "https://ehr-test.example.org/fhir"
    assert config.database_url == "postgresql+psycopg://peersync@db.internal/peersync"
    # Empty variables count as unset.
    config = load_config(path, environ={"PEERSYNC_EHR_URL": "", "PEERSYNC_DATABASE_URL": ""})
    assert config.ehr.base_url == HTTPS
    assert config.database_url == f"sqlite:///{(tmp_path / 'file.db').resolve()}"


def test_the_process_environment_is_used_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, config_text())
    monkeypatch.setenv("PEERSYNC_EHR_URL", "http://127.0.0.1:8080/fhir")
    monkeypatch.setenv("PEERSYNC_DATABASE_URL", "sqlite:////var/lib/peersync/peersync.db")

    config = load_config(path)

    assert config.ehr.base_url == "http://127.0.0.1:8080/fhir"
    assert config.database_url == "sqlite:////var/lib/peersync/peersync.db"


def test_an_ehr_url_from_the_environment_supplies_a_missing_one(tmp_path: Path) -> None:
    path = write(tmp_path, config_text(ehr='mode = "single"'))

    config = load_config(path, environ={"PEERSYNC_EHR_URL": "https://ehr.example.org/x"})
    assert config.ehr.base_url == "https://ehr.example.org/x"


def test_a_plain_http_ehr_url_from_the_environment_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, config_text())

    with pytest.raises(ConfigError, match="PEERSYNC_EHR_URL") as caught:
        load_config(path, environ={"PEERSYNC_EHR_URL": "http://ehr.example.org/fhir"})
    assert str(path.resolve()) in str(caught.value)
    assert "ehr.base_url" in str(caught.value)


# -- SQLite paths ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///peersync.db", "sqlite:///{folder}/peersync.db"),
        ("sqlite:///data/../db/peersync.db", "sqlite:///{folder}/db/peersync.db"),
        ("sqlite+pysqlite:///peersync.db", "sqlite+pysqlite:///{folder}/peersync.db"),
        ("sqlite:////srv/peersync.db", "sqlite:////srv/peersync.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite://", "sqlite://"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_a_relative_sqlite_path_is_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    folder = tmp_path / "home"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working folder must not matter
    path = write(folder, config_text(top=f'database_url = "{url}"'))

    config = load_config(path, environ={})
    assert config.database_url == expected.format(folder=folder.resolve())
    # The same rule for the environment variable.
    config = load_config(path, environ={"PEERSYNC_DATABASE_URL": url})
    assert config.database_url == expected.format(folder=folder.resolve())


# -- the EHR URL ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://ehr.example.org/fhir",
        "https://10.0.0.5:8443/fhir",
        "http://127.0.0.1:8080/fhir",
        "http://127.0.0.2/fhir",
        "http://localhost/fhir",
        "http://LOCALHOST:8080/fhir",
        "http://[::1]:8080/fhir",
    ],
)
def test_https_anywhere_and_plain_http_on_loopback_are_allowed(url: str) -> None:
    assert check_url_scheme(url + "/") == url


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.example.org/fhir",
        "http://10.0.0.5/fhir",
        "http://localhost.example.org/fhir",
        "http://[2001:db8::1]/fhir",
        "ftp://ehr.example.org/fhir",
        "ehr.example.org/fhir",
        "https:///fhir",
        "http://[::1",
        "",
    ],
)
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="ehr.base_url"):
        check_url_scheme(url)


# -- bad configs ----------------------------------------------------------------------

BAD = [
    # (id, file text, the dotted key the message must name)
    ("unknown top-level key", config_text(top='colour = "blue"'), "colour"),
    ("unknown [ehr] key", config_text(ehr=f'base_url = "{HTTPS}"\nretries = 3'), "ehr.retries"),
    ("unknown [sync] key", config_text(sync="workers = 4"), "sync.workers"),
    ("no [ehr] table", 'profile = "default"\n', "ehr"),
    ("[ehr] not a table", 'ehr = "https://ehr.example.org"\n', "ehr"),
    ("bad mode", config_text(ehr=f'base_url = "{HTTPS}"\nmode = "stream"'), "ehr.mode"),
    ("unknown preset", config_text(ehr=f'base_url = "{HTTPS}"\npreset = "cerner"'), "ehr.preset"),
    (
        "missing preset file",
        config_text(ehr=f'base_url = "{HTTPS}"\npreset = "./nowhere.toml"'),
        "ehr.preset",
    ),
    (
        "bad organization_id",
        config_text(ehr=f'base_url = "{HTTPS}"\norganization_id = "org/7"'),
        "ehr.organization_id",
    ),
    (
        "bad note_content_type",
        config_text(ehr=f'base_url = "{HTTPS}"\nnote_content_type = "text/markdown"'),
        "ehr.note_content_type",
    ),
    (
        "max_bundle_entries too small",
        config_text(ehr=f'base_url = "{HTTPS}"\nmax_bundle_entries = 2'),
        "ehr.max_bundle_entries",
    ),
    (
        "max_bundle_entries too large",
        config_text(ehr=f'base_url = "{HTTPS}"\nmax_bundle_entries = 1001'),
        "ehr.max_bundle_entries",
    ),
    (
        "bool for an int",
        config_text(ehr=f'base_url = "{HTTPS}"\nmax_bundle_entries = true'),
        "ehr.max_bundle_entries",
    ),
    (
        "float for an int",
        config_text(ehr=f'base_url = "{HTTPS}"\nmax_bundle_entries = 50.0'),
        "ehr.max_bundle_entries",
    ),
    ("bool for sync.max_attempts", config_text(sync="max_attempts = true"), "sync.max_attempts"),
    ("bool for a number", config_text(sync="lease_s = true"), "sync.lease_s"),
    (
        "string for a bool",
        config_text(ehr=f'base_url = "{HTTPS}"\nconditional = "yes"'),
        "ehr.conditional",
    ),
    ("timeout_s zero", config_text(ehr=f'base_url = "{HTTPS}"\ntimeout_s = 0'), "ehr.timeout_s"),
    (
        "timeout_s nan",
        config_text(ehr=f'base_url = "{HTTPS}"\ntimeout_s = nan'),
        "ehr.timeout_s",
    ),
    (
        "ca_file missing",
        config_text(ehr=f'base_url = "{HTTPS}"\nca_file = "nowhere.pem"'),
        "ehr.ca_file",
    ),
    (
        "http to a non-loopback host",
        config_text(ehr='base_url = "http://ehr.example.org/fhir"'),
        "ehr.base_url",
    ),
    ("not an http(s) URL", config_text(ehr='base_url = "ehr.example.org"'), "ehr.base_url"),
    ("unparsable URL", config_text(ehr='base_url = "https://[fe80::1"'), "ehr.base_url"),
    ("missing base_url", config_text(ehr='mode = "batch"'), "ehr.base_url"),
    ("empty base_url", config_text(ehr='base_url = ""'), "ehr.base_url"),
    ("bad auth type", config_text(auth='type = "kerberos"'), "ehr.auth.type"),
    ("auth type not a string", config_text(auth="type = 3"), "ehr.auth.type"),
    (
        "unknown auth key for the type",
        config_text(auth='type = "basic"\nusername = "svc"\ntoken_file = "t"'),
        "ehr.auth.token_file",
    ),
    ("a key for auth none", config_text(auth='username = "svc"'), "ehr.auth.username"),
    (
        "auth not a table",
        f'[ehr]\nbase_url = "{HTTPS}"\nauth = "basic"\n',
        "ehr.auth",
    ),
    (
        "renew_every_s = lease_s",
        config_text(sync="lease_s = 10\nrenew_every_s = 10"),
        "sync.renew_every_s",
    ),
    ("renew_every_s > lease_s", config_text(sync="lease_s = 5"), "sync.renew_every_s"),
    ("lease_s zero", config_text(sync="lease_s = 0\nrenew_every_s = 0"), "sync.lease_s"),
    ("lease_s infinite", config_text(sync="lease_s = inf"), "sync.lease_s"),
    ("renew_every_s negative", config_text(sync="renew_every_s = -1"), "sync.renew_every_s"),
    ("max_wait_s negative", config_text(sync="max_wait_s = -5"), "sync.max_wait_s"),
    ("max_attempts zero", config_text(sync="max_attempts = 0"), "sync.max_attempts"),
    ("[sync] not a table", f'sync = 3\n[ehr]\nbase_url = "{HTTPS}"\n', "sync"),
    (
        "default_source with a space",
        f'default_source = "peer tool"\n[ehr]\nbase_url = "{HTTPS}"\n',
        "default_source",
    ),
    (
        "default_source too long",
        f'default_source = "{"a" * 65}"\n[ehr]\nbase_url = "{HTTPS}"\n',
        "default_source",
    ),
    (
        "empty default_source",
        f'default_source = ""\n[ehr]\nbase_url = "{HTTPS}"\n',
        "default_source",
    ),
    (
        "default_source not a string",
        f'default_source = 7\n[ehr]\nbase_url = "{HTTPS}"\n',
        "default_source",
    ),
    (
        "database_url not a string",
        f'database_url = 5\n[ehr]\nbase_url = "{HTTPS}"\n',
        "database_url",
    ),
]


@pytest.mark.parametrize(("text", "key"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_a_bad_config_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})

    message = str(caught.value)
    assert message.startswith(f"{path.resolve()}: {key}"), message


@pytest.mark.parametrize(
    "content",
    [b'[ehr\nbase_url = "x"\n', b'base_url = "unterminated\n', b"\xff\xfe[ehr]\n"],
    ids=["unclosed table", "unterminated string", "not UTF-8"],
)
def test_a_file_that_is_not_toml_is_refused_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / CONFIG_NAME
    path.write_bytes(content)

    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(f"{path.resolve()}: ")


def test_a_config_path_that_cannot_be_read_is_refused(tmp_path: Path) -> None:
    (tmp_path / CONFIG_NAME).mkdir()

    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / CONFIG_NAME, environ={})


def test_no_secret_is_echoed_in_a_refusal(tmp_path: Path) -> None:
    """An auth key in the wrong place is named, its value is not."""
    path = write(tmp_path, config_text(auth='type = "none"\npassword = "hunter2-secret"'))

    with pytest.raises(ConfigError, match="ehr.auth.password") as caught:
        load_config(path, environ={})
    assert "hunter2" not in str(caught.value)
