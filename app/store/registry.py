"""Deploying Batch APIs from a Cortex-style cortex.yaml, and looking them up."""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, cast

import redis
import yaml
from redis.typing import EncodableT, FieldT

from app.errors import ApiNotFound, DeployError
from app.store import code, keys
from app.store.replies import as_text

log = logging.getLogger(__name__)

KNOWN_API_KEYS = {"name", "kind", "predictor"}
KNOWN_PREDICTOR_KEYS = {"type", "path", "config", "env"}
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Deployment(NamedTuple):
    """An API as a cortex.yaml declares it: its spec, and the Python files of its predictor's folder."""

    spec: dict
    code: dict[str, str]


def read_cortex_yaml(path: str | Path) -> list[dict]:
    """Parse and check a cortex.yaml: the specs of its APIs; raises DeployError saying which API
    and field is wrong."""
    return [deployment.spec for deployment in read_deployments(path)]


def read_deployments(path: str | Path) -> list[Deployment]:
    """Parse and check a cortex.yaml, and read its predictors' code; raises DeployError."""
    path = Path(path).resolve()
    try:
        text = path.read_text()
        documents, as_written = yaml.safe_load(text), yaml.load(text, Loader=yaml.BaseLoader)
    except (OSError, yaml.YAMLError) as err:
        raise DeployError(f"cannot read {path.name}: {err}") from None
    if isinstance(documents, dict):
        documents, as_written = [documents], [as_written]
    if not isinstance(documents, list) or not documents:
        raise DeployError(f"{path.name} must hold a list of APIs")
    for entry, written in zip(documents, as_written, strict=True):
        _env_as_written(entry, written)
    deployments = [_api_spec(entry, path.parent, i) for i, entry in enumerate(documents)]
    names: list[str] = [entry["name"] for entry in documents]  # each one a dict with a name (_api_spec)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DeployError(f"{path.name} declares API {', '.join(twice)} more than once")
    return [deployment for deployment in deployments if deployment is not None]


def _env_as_written(entry: Any, written: Any) -> None:
    """`predictor.env`'s values as written in the file (Cortex read them as text): YAML made
    `1.10` a float 1.1, `yes` true and `0755` the number 493. Other values are left for `_env`
    to refuse."""
    try:
        env, text = entry["predictor"]["env"], written["predictor"]["env"]
    except (KeyError, TypeError):
        return
    if isinstance(env, dict) and isinstance(text, dict):
        entry["predictor"]["env"] = {
            text_key if isinstance(key, str) else key: text_value if _scalar(value) else value
            for (key, value), (text_key, text_value) in zip(env.items(), text.items(), strict=True)
        }


def _scalar(value: object) -> bool:
    return value is not None and not isinstance(value, (dict, list))


def _api_spec(entry: object, base: Path, index: int) -> Deployment | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise DeployError(f"API #{index + 1}: each API needs a `name`")
    name = entry["name"]
    if not NAME.match(name):
        raise DeployError(f"API {name!r}: names use lowercase letters, digits and '-' (at most 63)")
    if entry.get("kind") != "BatchAPI":
        log.warning("skipping API %s: kind %r is not BatchAPI", name, entry.get("kind"))
        return None
    _warn_unknown(name, entry, KNOWN_API_KEYS, "")
    predictor = _predictor(name, entry.get("predictor"))
    source = _predictor_file(name, base, predictor["path"])
    # Cortex's project is the folder of cortex.yaml: its files, its imports, the predictors' cwd
    root = base if source.is_relative_to(base) else source.parent
    sources, env = _project(name, root, predictor.pop("env"))
    spec = {"name": name, "kind": "BatchAPI", "predictor": predictor}
    code_digest = code.digest(sources)
    spec["api_id"] = _api_id(spec, code_digest + json.dumps(env, sort_keys=True).encode())
    # kept out of public_spec:
    spec.update(predictor_file=str(source), project_dir=str(root), env=env, code_id=code_digest.hex()[:32])
    return Deployment(spec, sources)


def _predictor(name: str, predictor: object) -> dict:
    """The checked `predictor` section: type, path, config (as JSON) and env; raises DeployError."""
    if not isinstance(predictor, dict):
        raise DeployError(f"API {name}: `predictor` is required (type, path, config)")
    _warn_unknown(name, predictor, KNOWN_PREDICTOR_KEYS, "predictor.")
    if predictor.get("type", "python") != "python":
        raise DeployError(f"API {name}: predictor.type must be python (got {predictor.get('type')!r})")
    config = predictor.get("config") or {}
    if not isinstance(config, dict):
        raise DeployError(f"API {name}: predictor.config must be a mapping")
    config = _json_value(config, f"API {name}: predictor.config")
    env = _env(name, predictor.get("env") or {})
    return {"type": "python", "path": predictor.get("path"), "config": config, "env": env}


def _env(name: str, env: object) -> dict[str, str]:
    """`predictor.env` as Cortex takes it: names to string values; raises DeployError."""
    if not isinstance(env, dict):
        raise DeployError(f"API {name}: predictor.env must be a mapping of variable names to values")
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise DeployError(f"API {name}: predictor.env has a bad variable name {key!r}")
        if not isinstance(value, str):
            raise DeployError(f"API {name}: predictor.env.{key} must be a string (got {type(value).__name__})")
    return dict(env)


def _project(name: str, root: Path, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The project's Python files and its predictors' environment (its `.env`, then
    predictor.env); raises DeployError."""
    try:
        sources = code.collect(root)
        dotenv = code.read_dotenv(root)
    except DeployError as err:
        raise DeployError(f"API {name}: {err}") from None
    if (root / "requirements.txt").exists():
        log.warning(
            "API %s: requirements.txt is not installed by Batchery: install its packages where the workers run", name
        )
    return sources, {**dotenv, **env}


def _json_value(value: object, where: str) -> object:
    """A YAML value as the JSON the predictor receives: dates become ISO strings, as Cortex passed
    them (Go's YAML reads them as strings); raises DeployError for what JSON cannot carry."""
    if isinstance(value, dict):
        return {_json_key(key, where): _json_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise DeployError(f"{where} is {value}, which JSON cannot carry: quote it to pass a string")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise DeployError(f"{where} is a {type(value).__name__}, which JSON cannot carry: use a string, number or list")


def _json_key(key: object, where: str) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (datetime.date, datetime.datetime)):
        return key.isoformat()
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # as json.dumps would write the key: true, 1, null
    raise DeployError(f"{where} has a key {key!r}, which JSON cannot carry: use a string")


def _warn_unknown(name: str, mapping: dict, known: set, prefix: str) -> None:
    for key in sorted(set(mapping) - known):
        log.warning("API %s: %s%s is not used by Batchery and is ignored", name, prefix, key)


def _predictor_file(name: str, base: Path, path: object) -> Path:
    if not isinstance(path, str) or not path:
        raise DeployError(f"API {name}: predictor.path is required (a .py file beside the yaml)")
    source = (base / path).resolve()
    if not source.is_file():
        raise DeployError(f"API {name}: predictor.path {path} does not exist")
    # Read the class names without importing: user code (and its heavy imports) runs on workers only.
    try:
        tree = ast.parse(source.read_text(), filename=str(source))
    except SyntaxError as err:
        raise DeployError(f"API {name}: {path} line {err.lineno}: {err.msg}") from None
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    if "PythonPredictor" not in classes:
        raise DeployError(f"API {name}: {path} must define class PythonPredictor")
    return source


def _api_id(spec: dict, code_digest: bytes) -> str:
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + code_digest)
    return digest.hexdigest()[:20]


class Registry:
    """The deployed APIs, kept in Redis so that every API and worker process sees the same."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def deploy_file(self, path: str | Path) -> list[dict]:
        """Deploy every BatchAPI of a cortex.yaml, with its predictor's code; raises DeployError
        if any is invalid."""
        return [deployment.spec for deployment in self.deploy(read_deployments(path))]

    def deploy(self, deployments: list[Deployment]) -> list[Deployment]:
        """Store read deployments (over what was deployed under their names); returns them."""
        pipe = self.redis.pipeline()
        for spec, sources in deployments:
            # the code first: a worker loading the API finds it (the same id, the same code)
            # path -> source, all str: a Mapping's key type is invariant, so say it is redis-py's wider one
            pipe.hset(keys.code(spec["code_id"]), mapping=cast(Mapping[FieldT, EncodableT], sources))
            pipe.hset(keys.api(spec["name"]), "spec", json.dumps(spec))
            pipe.sadd(keys.apis(), spec["name"])
        pipe.execute()
        for deployment in deployments:
            log.info("deployed API %s (api_id %s)", deployment.spec["name"], deployment.spec["api_id"])
        return deployments

    def restore_missing(self, deployments: list[Deployment]) -> list[str]:
        """Deploy again those of `deployments` whose name Redis no longer has (it lost its data: a
        restart without persistence, a failover to an empty replica), leaving the others as they
        are (a later `batchery deploy` wins); the names restored."""
        pipe = self.redis.pipeline(transaction=False)
        for deployment in deployments:
            pipe.exists(keys.api(deployment.spec["name"]))
        missing = [d for d, found in zip(deployments, pipe.execute(), strict=True) if not found]
        for deployment in missing:
            log.warning("API %s is no longer in Redis (it lost its data?): deploying it again", deployment.spec["name"])
        return [deployment.spec["name"] for deployment in self.deploy(missing)] if missing else []

    def get(self, name: str) -> dict:
        """The spec of a deployed API; raises ApiNotFound."""
        raw = self.redis.hget(keys.api(name), "spec")
        if raw is None:
            deployed = ", ".join(sorted(self.names())) or "none"
            raise ApiNotFound(f"api {name} is not deployed (deployed: {deployed})")
        return json.loads(raw)

    def names(self) -> list[str]:
        """Names of the deployed APIs."""
        return sorted(as_text(n) for n in self.redis.smembers(keys.apis()))

    def code(self, code_id: str) -> dict[str, str] | None:
        """The Python files of a deployed project (by path in its folder); None if not kept."""
        stored = self.redis.hgetall(keys.code(code_id))
        return {as_text(path): as_text(source) for path, source in stored.items()} or None


HIDDEN = {"predictor_file", "project_dir", "env", "code_id"}


def public_spec(spec: dict) -> dict:
    """An API spec as shown to users: without this machine's paths, nor the predictors'
    environment (it may hold credentials)."""
    return {k: v for k, v in spec.items() if k not in HIDDEN}
