"""The production profile's MLflow server app: MLflow's basic-auth app, plus three things of ours.

``mlflow server --app-name fraud-basic-auth`` (registered in pyproject.toml) runs
:func:`create_app` in the server's worker. It is MLflow's own ``basic-auth`` app
(``mlflow.server.auth:create_app``: users, permissions and the admin in the database of
``MLFLOW_AUTH_CONFIG_PATH``'s ``database_uri``), and before it serves:

1. the Flask secret key (CSRF of the sign-up form) comes from the config file's ``[fraud]``
   section, not from the server's environment or argv;
2. the pipeline and read-only users are created, or their password set, from their credentials
   files (``[fraud] pipeline_credentials`` / ``reader_credentials``: the files are the truth,
   see :mod:`flows.registry.mlflow_auth`); the pipeline user gets ``MANAGE`` on every
   experiment and registered model, the reader keeps ``default_permission`` (``READ``);
3. creating an experiment, a registered model (or prompt) or a gateway resource is refused
   (403) to anyone but admins and the users in ``[fraud] creators``. MLflow's app lets any
   authenticated user create those (its create check is only "not explicitly denied", and a
   ``DENY`` grant on ``registered_model`` ``*`` would also hide every model from the reader).
"""

from __future__ import annotations

import configparser
import logging
import os
from pathlib import Path
from typing import Any

from flows.registry.mlflow_auth import read_credentials

APP_NAME = "fraud-basic-auth"
SECTION = "fraud"
# MLflow's validators of requests that create a new top-level resource in the workspace
CREATE_VALIDATORS = (
    "validate_can_create_experiment",
    "validate_can_create_registered_model",
    "validate_can_create_gateway_secret",
    "validate_can_create_gateway_endpoint",
    "validate_can_create_gateway_model_definition",
)
WRITABLE = ("experiment", "registered_model")

_log = logging.getLogger(__name__)


def fraud_section(path: str | os.PathLike[str] | None = None) -> configparser.SectionProxy:
    """The ``[fraud]`` section of the auth config file (``MLFLOW_AUTH_CONFIG_PATH``)."""
    path = path or os.environ.get("MLFLOW_AUTH_CONFIG_PATH")
    if not path:
        raise RuntimeError(f"{APP_NAME} needs MLFLOW_AUTH_CONFIG_PATH")
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(path) or not parser.has_section(SECTION):
        raise RuntimeError(f"MLFLOW_AUTH_CONFIG_PATH={path}: no [{SECTION}] section")
    return parser[SECTION]


def create_app() -> Any:
    """MLflow's basic-auth app with our secret key, users and create gate (see the module)."""
    cfg = fraud_section()
    os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = cfg["secret_key"]
    from mlflow.server import app as flask_app
    from mlflow.server import auth

    served = auth.create_app(flask_app)  # creates the admin user on a new database
    ensure_users(auth.store, cfg)
    creators = frozenset(cfg.get("creators", "").split())
    create_routes = creation_routes(auth)

    def refuse_creation() -> Any:
        """After MLflow's own check: only admins and creators may create new resources."""
        from flask import g, request

        if (request.path, request.method) not in create_routes:
            return None
        user = getattr(g, "mlflow_authenticated_user", None)
        if user is None or user in creators or auth.store.get_user(user).is_admin:
            return None
        return auth.make_forbidden_response()

    flask_app.before_request(refuse_creation)  # runs after MLflow's authentication
    return served


def creation_routes(auth: Any) -> frozenset[tuple[str, str]]:
    """``(path, method)`` of every route MLflow guards with a create validator."""
    validators = {getattr(auth, name) for name in CREATE_VALIDATORS if hasattr(auth, name)}
    return frozenset(
        key for key, validator in auth.BEFORE_REQUEST_VALIDATORS.items() if validator in validators
    )


def ensure_users(store: Any, cfg: configparser.SectionProxy) -> None:
    """The pipeline and reader users exist with their files' passwords; the pipeline writes."""
    for key in ("pipeline_credentials", "reader_credentials"):
        user, password = read_credentials(Path(cfg[key]))
        if not store.has_user(user, use_primary=True):
            store.create_user(user, password)
            _log.info("created MLflow user %s", user)
        elif not store.authenticate_user(user, password, use_primary=True):
            store.update_user(user, password=password)
            _log.info("set the password of MLflow user %s from its credentials file", user)
        if key == "pipeline_credentials":
            for resource in WRITABLE:
                store.grant_user_permission(user, resource, "*", "MANAGE")
