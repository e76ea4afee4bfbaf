"""Deploying Batch APIs from a Cortex-style cortex.yaml, and looking them up."""

from __future__ import annotations

import ast
import datetime
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, cast

import redis
import yaml
from redis.typing import EncodableT, FieldT

from app import project_archive
from app.errors import ApiNotFound, DeployError, PayloadTooLarge
from app.model.queues import api_queue, queue_name_error
from app.project_archive import MAX_PROJECT_BYTES, Packed, ProjectError
from app.store import code, imports, keys
from app.store.replies import as_text

log = logging.getLogger(__name__)

KNOWN_API_KEYS = {"name", "kind", "predictor", "compute", "queue"}
KNOWN_PREDICTOR_KEYS = {"type", "path", "config", "env", "python_path"}
# Cortex keys that the job needs and Batchery cannot give it: a deploy error, not a warning (a
# python predictor with `models` expects a `python_client` argument in its __init__)
UNSUPPORTED_PREDICTOR_KEYS = {"models", "model_path", "multi_model_reloading"}
COMPUTE_KEYS = {"cpu", "gpu", "mem", "inf", "shm"}
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Deployment(NamedTuple):
    """An API as a cortex.yaml declares it: its spec, and the Python files of its predictor's folder."""

    spec: dict
    code: dict[str, str]
    project: Packed | None = None  # the packed project folder, stored with the API (project_archive)


def read_cortex_yaml(path: str | Path) -> list[dict]:
    """Parse and check a cortex.yaml: the specs of its APIs; raises DeployError saying which API
    and field is wrong."""
    return [deployment.spec for deployment in read_deployments(path)]


def read_deployments(
    path: str | Path, max_project_bytes: int = MAX_PROJECT_BYTES, strict: bool = False
) -> list[Deployment]:
    """Parse and check a cortex.yaml, and read its predictors' code and pack their project folders;
    `strict`: an API of another kind than BatchAPI is an error, not skipped with a warning. Raises
    DeployError, PayloadTooLarge (a project over `max_project_bytes` packed)."""
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
    packer = _Packer(max_project_bytes)
    deployments = [_api_spec(entry, path.parent, i, packer, strict) for i, entry in enumerate(documents)]
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


def _api_spec(entry: object, base: Path, index: int, packer: _Packer, strict: bool = False) -> Deployment | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise DeployError(f"API #{index + 1}: each API needs a `name`")
    name = entry["name"]
    if not NAME.match(name):
        raise DeployError(f"API {name!r}: names use lowercase letters, digits and '-' (at most 63)")
    if entry.get("kind") != "BatchAPI" and strict:
        raise DeployError(f"API {name}: kind {entry.get('kind')!r} is not BatchAPI (Batchery deploys BatchAPIs only)")
    if entry.get("kind") != "BatchAPI":
        log.warning("skipping API %s: kind %r is not BatchAPI", name, entry.get("kind"))
        return None
    _warn_unknown(name, entry, KNOWN_API_KEYS, "")
    predictor = _predictor(name, entry.get("predictor"))
    source = _predictor_file(name, base, predictor["path"])
    if strict and not source.is_relative_to(base.resolve()):  # an upload names no file of the server's
        raise DeployError(f"API {name}: predictor.path {predictor['path']} lies outside the project folder")
    # Cortex's project is the folder of cortex.yaml: its files, its imports, the predictors' cwd
    root = base if source.is_relative_to(base) else source.parent
    sources, env = _project(name, root, predictor.pop("env"))
    _python_path(name, root, predictor)
    _warn_unresolved_imports(name, source.relative_to(root).as_posix(), sources, predictor.get("python_path"))
    spec = {"name": name, "kind": "BatchAPI", "predictor": predictor}
    if "compute" in entry:
        spec["compute"] = _compute(name, entry["compute"])
    if "queue" in entry:  # none named: `gpu` for compute.gpu > 0, else the default (app/model/queues.py)
        spec["queue"] = _queue(name, entry["queue"])
    packed = packer.pack(name, root)
    code_digest = code.digest(sources)
    # the project's id too: an edit of any of its files (a model, a label list) makes a new api_id
    spec["api_id"] = _api_id(spec, code_digest + json.dumps(env, sort_keys=True).encode() + packed.project_id.encode())
    # kept out of public_spec:
    spec.update(predictor_file=str(source), project_dir=str(root), env=env, code_id=code_digest.hex()[:32])
    spec.update(project_id=packed.project_id, project_bytes=len(packed.blob))
    return Deployment(spec, sources, packed)


class _Packer:
    """Packs each project folder once, however many APIs of the cortex.yaml it holds."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.packed: dict[Path, Packed] = {}

    def pack(self, name: str, root: Path) -> Packed:
        """The packed folder; raises DeployError, PayloadTooLarge."""
        if root not in self.packed:
            try:
                self.packed[root] = project_archive.pack(root, self.max_bytes)
            except ProjectError as err:
                if err.status == 413:
                    raise ProjectTooLarge(f"API {name}: {err.message}") from None
                raise DeployError(f"API {name}: {err.message}") from None
        return self.packed[root]


class ProjectTooLarge(PayloadTooLarge):
    """A project over BATCHERY_MAX_PROJECT_BYTES, packed."""

    kind = "project_too_large"


def _python_path(name: str, root: Path, predictor: dict) -> None:
    """Check `predictor.python_path` (Cortex: a folder of the project put on the import path) and
    keep it as a POSIX path relative to the project; raises DeployError."""
    value = predictor.pop("python_path", None)
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise DeployError(f"API {name}: predictor.python_path must be a folder of the project (a relative path)")
    folder = (root / value).resolve()
    if not folder.is_relative_to(root.resolve()):
        raise DeployError(f"API {name}: predictor.python_path {value} lies outside the project folder")
    if not folder.is_dir():
        raise DeployError(f"API {name}: predictor.python_path {value} is not a folder of the project")
    predictor["python_path"] = folder.relative_to(root.resolve()).as_posix()


def _warn_unresolved_imports(name: str, relative: str, sources: dict[str, str], python_path: str | None) -> None:
    """Warn of each module the predictor imports that neither the project nor this host provides
    (app/store/imports.py): a missing python_path fails every batch otherwise, found only then."""
    predictor_folder = PurePosixPath(relative).parent.as_posix()
    search = ["", "" if predictor_folder == "." else predictor_folder, *([python_path] if python_path else [])]
    for line, module in imports.unresolved(sources.get(relative, ""), set(sources), search):
        log.warning(
            "API %s: %s line %d imports %s, which is neither in the project (its root, the predictor's folder%s) "
            "nor installed where the API runs: if the workers lack it too, every batch fails with "
            "No module named '%s'%s",
            name,
            relative,
            line,
            module,
            ", python_path" if python_path else "",
            module,
            "" if python_path else " (set predictor.python_path to the project folder that holds it?)",
        )


def _compute(name: str, compute: object) -> dict:
    """`compute` as recorded with the API (cpu, gpu, mem: for the fleet to route on); raises DeployError."""
    if not isinstance(compute, dict):
        raise DeployError(f"API {name}: compute must be a mapping (cpu, gpu, mem)")
    _warn_unknown(name, compute, COMPUTE_KEYS, "compute.")
    kept = {key: value for key, value in compute.items() if key in COMPUTE_KEYS}
    return cast(dict, _json_value(kept, f"API {name}: compute"))


def _queue(name: str, queue: object) -> str:
    """cortex.yaml's `queue:`, checked; raises DeployError for a name that cannot be a queue's."""
    error = queue_name_error(queue)
    if error:
        raise DeployError(f"API {name}: {error}")
    return str(queue)


def _predictor(name: str, predictor: object) -> dict:
    """The checked `predictor` section: type, path, config (as JSON) and env; raises DeployError."""
    if not isinstance(predictor, dict):
        raise DeployError(f"API {name}: `predictor` is required (type, path, config)")
    unsupported = sorted(UNSUPPORTED_PREDICTOR_KEYS & set(predictor))
    if unsupported:
        raise DeployError(
            f"API {name}: predictor.{unsupported[0]} is not supported by Batchery (load the model in the "
            "predictor's __init__ from its project folder or S3 instead)"
        )
    _warn_unknown(name, predictor, KNOWN_PREDICTOR_KEYS, "predictor.")
    if predictor.get("type", "python") != "python":
        raise DeployError(f"API {name}: predictor.type must be python (got {predictor.get('type')!r})")
    config = predictor.get("config") or {}
    if not isinstance(config, dict):
        raise DeployError(f"API {name}: predictor.config must be a mapping")
    config = _json_value(config, f"API {name}: predictor.config")
    env = _env(name, predictor.get("env") or {})
    checked = {"type": "python", "path": predictor.get("path"), "config": config, "env": env}
    if "python_path" in predictor:
        checked["python_path"] = predictor["python_path"]
    return checked


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

    def deploy_file(
        self, path: str | Path, max_project_bytes: int = MAX_PROJECT_BYTES, strict: bool = False
    ) -> list[dict]:
        """Deploy every BatchAPI of a cortex.yaml, with its predictor's code and its project;
        raises DeployError if any is invalid (nothing is stored then), PayloadTooLarge if its
        project is over `max_project_bytes` packed."""
        return [deployment.spec for deployment in self.deploy(read_deployments(path, max_project_bytes, strict))]

    def deploy(self, deployments: list[Deployment]) -> list[Deployment]:
        """Store read deployments (over what was deployed under their names); returns them."""
        pipe = self.redis.pipeline()
        deployed_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        for spec, sources, project in deployments:
            spec["deployed_at"] = deployed_at
            if project is not None:  # once per content: the same files, the same key and value
                pipe.set(keys.project(project.project_id), project.blob, nx=True)
            # the code first: a worker loading the API finds it (the same id, the same code)
            # path -> source, all str: a Mapping's key type is invariant, so say it is redis-py's wider one
            pipe.hset(keys.code(spec["code_id"]), mapping=cast(Mapping[FieldT, EncodableT], sources))
            # seen deployed now: kept by the retention sweep while deployed (app/store/retention.py)
            pipe.zadd(keys.code_stored(), dict.fromkeys(keys.code_keys(spec), time.time()))
            pipe.hset(keys.api(spec["name"]), "spec", json.dumps(spec))
            pipe.sadd(keys.apis(), spec["name"])
            pipe.srem(keys.undeployed(), spec["name"])
            if api_queue(spec, ""):  # a dedicated pool's queue: /metrics reports it (demand 0) from now on
                pipe.sadd(keys.queues(), api_queue(spec, ""))
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
        pipe.smembers(keys.undeployed())
        *found, undeployed = pipe.execute()
        # an API undeployed on purpose (DELETE /apis/<name>) stays undeployed
        undeployed = {as_text(name) for name in undeployed}
        missing = [
            d for d, there in zip(deployments, found, strict=True) if not there and d.spec["name"] not in undeployed
        ]
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

    def undeploy(self, name: str) -> None:
        """Remove a deployed API: its routes answer 404 from then on. Its jobs' records stay until
        they expire (BATCHERY_JOB_RETENTION_SECONDS), as does its project while another API uses it;
        raises ApiNotFound."""
        project_id = self.get(name).get("project_id")
        pipe = self.redis.pipeline()
        pipe.delete(keys.api(name))
        pipe.srem(keys.apis(), name)
        pipe.sadd(keys.undeployed(), name)  # not restored by a process that deployed it at start
        pipe.execute()
        if project_id:
            self._forget_project(project_id)
        log.info("undeployed API %s", name)

    def _forget_project(self, project_id: str) -> None:
        """Delete a project no deployed API uses any more. Watched: a deploy of the same content
        meanwhile (any API record, or the set of names, written) keeps it."""
        with self.redis.pipeline() as pipe:
            try:
                names = [as_text(n) for n in self.redis.smembers(keys.apis())]
                pipe.watch(keys.apis(), *[keys.api(n) for n in names])
                specs = [pipe.hget(keys.api(n), "spec") for n in names]
                if any(spec and json.loads(spec).get("project_id") == project_id for spec in specs):
                    return
                pipe.multi()
                pipe.delete(keys.project(project_id))
                pipe.execute()
            except redis.WatchError:
                pass  # something was deployed meanwhile: keep the project (an orphan at worst)

    def code(self, code_id: str) -> dict[str, str] | None:
        """The Python files of a deployed project (by path in its folder); None if not kept."""
        stored = self.redis.hgetall(keys.code(code_id))
        return {as_text(path): as_text(source) for path, source in stored.items()} or None


HIDDEN = {"predictor_file", "project_dir", "env", "code_id"}


def public_spec(spec: dict) -> dict:
    """An API spec as shown to users: without this machine's paths, nor the predictors'
    environment (it may hold credentials)."""
    return {k: v for k, v in spec.items() if k not in HIDDEN}
