"""``mucosa serve``'s settings: one typed class read from a file, the flags and ``--set``; bad values refused in
one line before anything starts; the token read from MUCOSA_TOKEN and never printed."""

import pytest
import yaml

from mucosa.cli import main
from mucosa.data.pseudonyms import pseudonymiser
from mucosa.errors import ConfigError
from mucosa.service import server
from mucosa.service.settings import ServeSettings, load_serve_settings


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch):
    monkeypatch.delenv("MUCOSA_TOKEN", raising=False)
    monkeypatch.delenv("MUCOSA_PSEUDONYM_KEY", raising=False)


@pytest.fixture
def nothing_starts(monkeypatch):
    """A server that would bind its port fails the test at once (instead of serving until killed)."""
    def bind(host, port):
        raise AssertionError(f"the server started binding {host}:{port}")

    monkeypatch.setattr(server, "bind", bind)


def printed(capsys, *args: str) -> tuple[dict, str]:
    assert main(["serve", *args, "--print-config"]) == 0
    text = capsys.readouterr().out
    return yaml.safe_load(text)["serve"], text


@pytest.mark.slow
def test_print_config_shows_the_documented_defaults_and_reads_back(capsys, tmp_path):
    values, text = printed(capsys)
    assert {k: values[k] for k in ("host", "port", "max_upload_mb", "queue_size", "threshold", "window")} == {
        "host": "127.0.0.1", "port": 8000, "max_upload_mb": 500.0, "queue_size": 8, "threshold": 0.5, "window": 16}
    assert values["checkpoint"] is values["data_root"] is values["parallel"] is None
    assert "token" not in values and "\n# token: unset (never printed; set it with --token or MUCOSA_TOKEN)" in text
    (tmp_path / "serve.yaml").write_text(text)
    assert load_serve_settings(tmp_path / "serve.yaml") == ServeSettings()


def test_a_config_file_then_the_flags_then_set_change_the_settings(capsys, tmp_path):
    config = tmp_path / "serve.yaml"
    config.write_text(f"serve:\n  port: 9000\n  queue_size: 3\n  data_root: {tmp_path}\n  checkpoint: m.ckpt\n")
    values, _ = printed(capsys, "--config", str(config))
    assert (values["port"], values["queue_size"], values["data_root"], values["checkpoint"]) == (
        9000, 3, str(tmp_path), "m.ckpt")
    values, _ = printed(capsys, "--config", str(config), "--port", "9100", "--queue", "5",
                        "--set", "serve.queue_size=6", "--set", "serve.window=4", "--threshold", "0.7")
    assert (values["port"], values["queue_size"], values["window"], values["threshold"]) == (9100, 6, 4, 0.7)
    assert values["data_root"] == str(tmp_path)  # what the command line leaves alone stays the file's


def test_the_token_comes_from_the_flag_else_mucosa_token_and_is_never_printed(capsys, monkeypatch):
    assert ServeSettings().token is None
    monkeypatch.setenv("MUCOSA_TOKEN", "from-the-environment")
    assert ServeSettings().secret == "from-the-environment"
    assert ServeSettings(token="given, 16 or more").secret == "given, 16 or more"
    assert "from-the-environment" not in repr(ServeSettings())
    for args in ([], ["--token", "given-on-the-command-line"], ["--set", "serve.token=given-by-set-16-chars"]):
        values, text = printed(capsys, *args)
        assert "token" not in values and "# token: set" in text
        assert "given" not in text and "from-the-environment" not in text


def test_the_pseudonym_key_comes_from_the_flag_else_the_environment_and_is_never_printed(capsys, monkeypatch):
    assert ServeSettings().pseudonym is None and ServeSettings(pseudonym_key="k").pseudonym is None  # not asked
    monkeypatch.setenv("MUCOSA_PSEUDONYM_KEY", "from-the-environment")
    settings = ServeSettings(pseudonymise=True)
    assert settings.pseudonym("Roe_Richard_1980") == pseudonymiser("from-the-environment")("Roe_Richard_1980")
    assert settings == ServeSettings(pseudonymise=True)  # its pseudonym, once made, is no setting
    for args in (["--pseudonymise"], ["--pseudonymise", "--pseudonym-key", "given-on-the-command-line"],
                 ["--set", "serve.pseudonymise=true", "--set", "serve.pseudonym_key=given-by-set"]):
        values, text = printed(capsys, *args)
        assert values["pseudonymise"] is True and "pseudonym_key" not in values and "# pseudonym_key: set" in text
        assert "given" not in text and "from-the-environment" not in text


BAD = [  # the argument list, and what the one line says
    (["--port", "70000"], "--port: must be at most 65535"),
    (["--port", "-1"], "--port: must be at least 0"),
    (["--queue", "0"], "--queue: must be at least 1"),
    (["--threshold", "2"], "--threshold: value 2.0 must be a number in [0, 1]"),
    (["--max-upload-mb", "-5"], "--max-upload-mb: must be more than 0"),
    (["--window", "0"], "--window: must be at least 1"),
    (["--parallel", "0"], "--parallel: must be at least 1"),
    (["--port", "eighty"], "--port: expected a whole number, got 'eighty'"),
    (["--set", "serve.queue_size=0"], "--set serve.queue_size: must be at least 1"),
    (["--set", "serve.queue=4"], "--set serve.queue: unknown setting; did you mean 'queue_size'?"),
    (["--set", "training.lr=0.1"], "--set training.lr: mucosa serve has one section, serve"),
    (["--set", "serve.token=5"], "--set serve.token: expected text"),
    (["--token", "x"], "--token: must be 16 to 200 characters long"),
    (["--set", "serve.token=fifteen-chars.."], "--set serve.token: must be 16 to 200 characters long"),
]


@pytest.mark.parametrize("args, line", BAD)
def test_each_bad_value_is_one_line_before_anything_starts(nothing_starts, capsys, args, line):
    assert main(["serve", "--checkpoint", "m.ckpt", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {line}"), err


@pytest.mark.parametrize("text, line", [
    ("serve:\n  port: 0.5\n", "serve.port: expected a whole number, got 0.5"),
    ("serve:\n  window: 0\n", "serve.window: must be at least 1"),
    ("serve:\n  max_upload_mb: -1\n", "serve.max_upload_mb: must be more than 0"),
    ("port: 8000\n", "expected one section, serve"),
    ("serve: [8000]\n", "serve: expected a mapping of settings, got list"),
    ("serve: {port: 8000\n", "not valid YAML"),
])
def test_a_bad_config_file_is_one_line_naming_it(nothing_starts, capsys, tmp_path, text, line):
    (tmp_path / "serve.yaml").write_text(text)
    assert main(["serve", "--checkpoint", "m.ckpt", "--config", str(tmp_path / "serve.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'serve.yaml'}: ") and line in err[0], err


def test_serve_needs_a_checkpoint_but_print_config_does_not(nothing_starts, capsys):
    assert main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: mucosa serve needs --checkpoint (or serve.checkpoint in "
                                                    "its --config)"]
    assert printed(capsys)[0]["checkpoint"] is None


def test_help_shows_each_settings_default(capsys):
    assert main(["serve", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split()).partition("options:")[2]
    for flag, default in (("--port PORT", "8000"), ("--queue QUEUE", "8"), ("--max-upload-mb MAX_UPLOAD_MB", "500.0")):
        start = help_text.index(flag)
        assert f"(default {default})" in help_text[start:help_text.index(" --", start + len(flag))], flag


def test_the_settings_are_checked_when_made_in_python_too():
    with pytest.raises(ConfigError, match=r"^serve\.queue_size: must be at least 1$"):
        ServeSettings(queue_size=0)
    with pytest.raises(ConfigError, match="serve.data_root: .*: not a folder"):
        ServeSettings(data_root=__file__)
    assert ServeSettings(port=0).port == 0  # any free port


def test_without_the_serve_extra_serve_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    """The import of uvicorn sat inside serve(), so a missing extra ended as an internal error (exit 70)."""
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"not read before the check")
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)  # as if it were not installed
    assert main(["serve", "--checkpoint", str(checkpoint)]) == 2
    assert "pip install 'mucosa[serve]'" in capsys.readouterr().err


def test_serve_checks_its_store_and_token_before_binding(monkeypatch, capsys, tmp_path, cheap_tokens):
    """A --token whose user an admin disabled is refused (not silently enabled again); a store that has a user
    named admin takes a --token all the same; a run's folder is no store (one rule with ``store upgrade``)."""
    from mucosa.store import Store

    def bind(host, port):
        raise ConfigError("the server would bind now")

    monkeypatch.setattr(server, "bind", bind)
    monkeypatch.setattr("mucosa.service.engine.Engine", lambda *args, **kwargs: None)  # the model loads first
    store, token = tmp_path / "store", "the laptop's token, 16 or more"

    def serve(*args):
        code = main(["serve", "--checkpoint", "m.ckpt", *args])
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and len(err) == 1, err
        return err[0]

    with Store.open(store, create=True) as opened:
        opened.add_user("admin", "viewer")
    assert serve("--store", str(store), "--token", token) == "error: the server would bind now"
    with Store.open(store) as opened:
        name = next(user.name for user in opened.users() if user.name.startswith("token-"))
        opened.disable_user(name)
    assert f"the user of this --token, {name}, was disabled" in serve("--store", str(store), "--token", token)
    with Store.open(store) as opened:
        assert not opened.user(name).active and opened.user("admin").role.value == "viewer"
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.ckpt").write_bytes(b"weights")
    assert "holds no store but other files (best.ckpt)" in serve("--store", str(run))
    assert [p.name for p in run.iterdir()] == ["best.ckpt"]
