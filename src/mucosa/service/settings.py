"""The settings of ``mucosa serve``: one typed class, the one place for their defaults and their checks.

They are read like a run config: a YAML file with a ``serve`` section (``mucosa serve --config serve.yaml``),
then the command's flags (``--port 8080`` is ``--set serve.port=8080``), then every ``--set serve.KEY=VALUE``.
Each problem is one line naming the file's key or the flag (``--port: must be at most 65535``), before the
server binds its port or loads its model. ``mucosa serve --print-config`` prints the result::

    serve:
      checkpoint: runs/pcle/best.ckpt
      host: 127.0.0.1
      port: 8000
      data_root: null
      max_upload_mb: 500.0
      queue_size: 8
      store: null
      ...
    # token: unset (never printed; set it with --token or MUCOSA_TOKEN)

The token is a secret: given by ``--token`` (or ``serve.token``), else read from the ``MUCOSA_TOKEN``
environment variable, and never printed. So is the pseudonym key (``--pseudonym-key``, else
``MUCOSA_PSEUDONYM_KEY``), the key of ``--pseudonymise`` (:mod:`mucosa.service.privacy`).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from mucosa.data.pseudonyms import KEY_VARIABLE, Pseudonym, pseudonymiser
from mucosa.errors import ConfigError
from mucosa.inference.verdict import check_threshold
from mucosa.settings import Bool, Float, Int, Pathname, Settings, Text, format_errors, read_yaml
from mucosa.store.tokens import MIN_CHOSEN

__all__ = ["SECTION", "TOKEN_VARIABLE", "ServeSettings", "load_serve_settings"]

SECTION = "serve"
TOKEN_VARIABLE = "MUCOSA_TOKEN"


def _secret(variable: str, shortest: int = 1):
    """A secret's check: the value given, else the one in the environment ``variable``; none when both are
    empty; at least ``shortest`` characters."""

    def secret(value: Any) -> Any:
        value = value or os.environ.get(variable) or None
        if value is not None and not isinstance(value, (str, SecretStr)):
            raise PydanticCustomError("mucosa", "expected text")  # a secret: not shown
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if text is not None and not shortest <= len(text) <= 200:
            raise PydanticCustomError("mucosa", f"must be {shortest} to 200 characters long (e.g. `openssl rand "
                                      "-hex 16`)")  # its length only: the secret is never shown
        return value

    return secret


def _threshold(value: float) -> float:
    try:
        return check_threshold(value, "value")
    except ConfigError as error:
        raise PydanticCustomError("mucosa", str(error)) from None


class ServeSettings(Settings):
    """How ``mucosa serve`` runs: its model, its address and what its API accepts.

    Attributes:
        checkpoint: the mucosa checkpoint (.ckpt) served.
        onnx: predict with this export of the checkpoint (Grad-CAM still uses the checkpoint).
        host, port: where it listens (port 0: any free port).
        token: required on every ``/v1`` route when set (default: ``MUCOSA_TOKEN``, else none); at least 16
            characters. Only this server accepts it, as the admin ``token-…`` it names
            (:meth:`mucosa.store.Store.use_token`).
        data_root: folder whose files ``POST /v1/cases`` may name by path (none: no file may be named).
        max_upload_mb: largest request body accepted.
        queue_size: cases that may wait for the background worker, uploads still arriving included.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (checked when the model loads).
        threshold: probability from which a case is positive.
        window: informative frames in the smoothed probability.
        parallel: model calls side by side (none: one per CPU core, or one on a GPU).
        temp_parent: where the server's temporary folder goes (none: the system's).
        store: the case store, a folder (SQLite) or a ``postgresql+psycopg://`` URL (none: ``$MUCOSA_STORE``, else
            ``~/.local/share/mucosa/store``); made when it is a new folder or an empty database.
        media: the media folder that the servers of a PostgreSQL store share (a store folder keeps its own).
        workers: case worker threads of this server (each takes jobs from the store's job table).
        lease_seconds: how long a job stays a worker's without a heartbeat: after that, another worker (of any
            server sharing the store) takes it up again.
        pseudonymise: every report and export the server hands out names patients, cases and files by keyed
            pseudonyms (:mod:`mucosa.service.privacy`).
        pseudonym_key: their key (default: ``MUCOSA_PSEUDONYM_KEY``, else a random key for the server's life);
            never printed.
    """

    SECTION: ClassVar[str] = SECTION

    checkpoint: Pathname | None = None
    onnx: Pathname | None = None
    host: Text = "127.0.0.1"
    port: Int = Field(8000, ge=0, le=65535)
    token: Annotated[SecretStr | None, BeforeValidator(_secret(TOKEN_VARIABLE, MIN_CHOSEN))] = Field(
        None, validate_default=True)
    data_root: Pathname | None = None
    max_upload_mb: Float = Field(500.0, gt=0)
    queue_size: Int = Field(8, ge=1)
    device: Text = "auto"
    threshold: Annotated[Float, AfterValidator(_threshold)] = 0.5
    window: Int = Field(16, ge=1)
    parallel: Int | None = Field(None, ge=1)
    temp_parent: Pathname | None = None
    store: Text | None = None
    media: Pathname | None = None
    workers: Int = Field(1, ge=1, le=64)
    lease_seconds: Float = Field(60.0, ge=1.0)
    pseudonymise: Bool = False
    pseudonym_key: Annotated[SecretStr | None, BeforeValidator(_secret(KEY_VARIABLE))] = Field(
        None, validate_default=True)

    @field_validator("data_root")
    @classmethod
    def _a_folder(cls, folder: Path | None) -> Path | None:
        if folder is not None and not folder.is_dir():
            raise PydanticCustomError("mucosa", "{folder}: not a folder", {"folder": str(folder)})
        return folder

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def secret(self) -> str | None:
        """The token itself (None: the API is open)."""
        return None if self.token is None else self.token.get_secret_value()

    @cached_property
    def pseudonym(self) -> Pseudonym | None:
        """The keyed pseudonym of an identifier under ``pseudonymise`` (one key for the server's life), else
        None."""
        if not self.pseudonymise:
            return None
        return pseudonymiser(None if self.pseudonym_key is None else self.pseudonym_key.get_secret_value())

    def to_yaml(self) -> str:
        """The settings as a config file that reads back the same, the token and the pseudonym key left out
        (a comment says whether each is set)."""
        values = self.model_dump(mode="json", exclude={"token", "pseudonym_key"})
        token = "set" if self.token is not None else "unset"
        key = "set" if self.pseudonym_key is not None else "unset"
        return (yaml.safe_dump({SECTION: values}, sort_keys=False)
                + f"# token: {token} (never printed; set it with --token or {TOKEN_VARIABLE})\n"
                + f"# pseudonym_key: {key} (never printed; set it with --pseudonym-key or {KEY_VARIABLE})\n")


def load_serve_settings(path: str | Path | None = None, changes: dict[str, Any] | None = None,
                        labels: dict[str, str] | None = None) -> ServeSettings:
    """The settings of a YAML file's ``serve`` section (no file: the defaults), then ``{"serve.KEY": value}``
    changes on top (the command line's).

    Args:
        labels: what to call each changed key in an error (its flag: ``{"serve.port": "--port"}``).

    Raises:
        ConfigError: one line per problem, naming the file and key, or the flag.
    """
    values = {} if path is None else _section(Path(path))
    if path is not None:
        _validate(values, f"{path}: ")
    if not changes:
        return _validate(values)
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if section != SECTION:
            raise ConfigError(f"{(labels or {}).get(key, key)}: mucosa serve has one section, {SECTION} "
                              f"(e.g. --set {SECTION}.port=8080)")
        values[name] = value
    return _validate(values, labels=labels)


def _section(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict) or set(data) - {SECTION}:
        raise ConfigError(f"{path}: expected one section, {SECTION} (e.g. '{SECTION}: {{port: 8080}}')")
    section = data.get(SECTION)
    return {} if section is None else section if not isinstance(section, dict) else dict(section)


def _validate(values: Any, where: str = "", labels: dict[str, str] | None = None) -> ServeSettings:
    try:
        return ServeSettings.model_validate(values)
    except ValidationError as error:
        lines = format_errors(error, ServeSettings, SECTION, labels)
        raise ConfigError("\n".join(where + line for line in lines)) from None
