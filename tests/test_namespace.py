"""Each predictor imports its own modules, from the code deployed with it (app/store/code.py,
workers/namespace.py). Pure logic: no services."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import uuid
from pathlib import Path

import pytest

from app.errors import DeployError
from app.store import code
from app.store.registry import public_spec, read_cortex_yaml, read_deployments
from workers.runtime import Predictor, PredictorError, load_class

PREDICTOR = """
import helpers


class PythonPredictor:
    def __init__(self, config):
        self.label = (Path(__file__).parent / "label.txt").read_text()

    def predict(self, payload):
        import late  # imported during a batch, not at import time
        return helpers.WHO, late.WHO, self.label
"""


def project(folder: Path, who: str) -> Path:
    """A predictor folder whose helper modules say `who` they are."""
    folder.mkdir(parents=True)
    (folder / "predictor.py").write_text("from pathlib import Path\n" + PREDICTOR)
    (folder / "helpers.py").write_text(f"WHO = {who!r}\n")
    (folder / "late.py").write_text(f"WHO = {who!r}\n")
    (folder / "label.txt").write_text(f"label-{who}")
    return folder / "predictor.py"


def api_of(path: Path, root: Path | None = None, env: dict | None = None) -> dict:
    """An API spec as the registry keeps it, for a predictor file in project folder `root`."""
    root = root or path.parent
    return {
        "api_id": uuid.uuid4().hex,
        "predictor_file": str(path),
        "project_dir": str(root),
        "env": env or {},
        "code_id": "deployed",
    }


def deployed_from_disk(root: Path):
    """`deployed` for load_class: the project's code as a deploy reads it now."""
    sources = code.collect(root)
    return lambda api_id: sources


def build(path: Path, root: Path | None = None, env: dict | None = None) -> Predictor:
    api = api_of(path, root, env)
    return Predictor(load_class(api, deployed_from_disk(root or path.parent)), {}, {})


def test_two_predictors_with_a_helper_of_the_same_name_each_get_their_own(tmp_path):
    """Both folders hold helpers.py: one process used to give both APIs the first one imported."""
    a = build(project(tmp_path / "a", "a"))
    b = build(project(tmp_path / "b", "b"))
    for _ in range(2):  # in turn, as a pool process takes two jobs' batches
        assert a.predict([1], "0") == ("a", "a", "label-a")
        assert b.predict([1], "0") == ("b", "b", "label-b")
    assert "helpers" not in sys.modules and "late" not in sys.modules  # nothing left between calls


def test_a_job_runs_the_code_deployed_not_the_files_edited_since(tmp_path):
    """A fresh process of a running job imports the code of the job's api_id, not today's files."""
    path = project(tmp_path / "a", "v1")
    deployed = deployed_from_disk(path.parent)
    (path.parent / "helpers.py").write_text("WHO = 'edited'\n")
    (path.parent / "late.py").write_text("WHO = 'edited'\n")
    predictor = Predictor(load_class(api_of(path), deployed), {}, {})
    assert predictor.predict([1], "0")[:2] == ("v1", "v1")


def test_a_package_beside_the_predictor_imports_with_relative_imports(tmp_path):
    folder = tmp_path / "pkgs"
    (folder / "lib" / "inner").mkdir(parents=True)
    (folder / "lib" / "__init__.py").write_text("from .inner.deep import VALUE\n")
    (folder / "lib" / "inner" / "__init__.py").write_text("")
    (folder / "lib" / "inner" / "deep.py").write_text("VALUE = 42\n")
    (folder / "predictor.py").write_text(
        "import lib\nclass PythonPredictor:\n    def predict(self, payload):\n        return lib.VALUE\n"
    )
    assert build(folder / "predictor.py").predict([], "0") == 42


def test_a_module_imported_by_something_else_is_not_shadowed(tmp_path):
    """A `json.py` beside the predictor did not replace the json module with the folder on
    sys.path either (sys.modules answers first): Batchery's own imports stay intact."""
    folder = tmp_path / "shadow"
    folder.mkdir()
    (folder / "json.py").write_text("FAKE = True\n")
    (folder / "predictor.py").write_text(
        "import json\nclass PythonPredictor:\n    def predict(self, payload):\n        return json.dumps(payload)\n"
    )
    assert build(folder / "predictor.py").predict([1], "0") == "[1]"
    assert not hasattr(sys.modules["json"], "FAKE")


def test_a_traceback_from_deployed_code_shows_its_lines(tmp_path):
    folder = tmp_path / "raises"
    folder.mkdir()
    (folder / "predictor.py").write_text(
        "class PythonPredictor:\n    def predict(self, payload):\n        raise ValueError('bad item')\n"
    )
    predictor = build(folder / "predictor.py")
    with pytest.raises(ValueError) as raised:
        predictor.predict([], "0")
    text = "".join(traceback.format_exception(raised.value))
    assert str(folder / "predictor.py") in text and "raise ValueError('bad item')" in text


def test_a_helper_that_fails_to_import_is_a_predictor_error_and_can_be_fixed_by_a_redeploy(tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "helpers.py").write_text("raise RuntimeError('no model')\n")
    (folder / "predictor.py").write_text("import helpers\nclass PythonPredictor:\n    pass\n")
    with pytest.raises(PredictorError, match=r"importing predictor\.py failed: RuntimeError: no model"):
        load_class(api_of(folder / "predictor.py"), deployed_from_disk(folder))
    assert "helpers" not in sys.modules
    (folder / "helpers.py").write_text("WHO = 'fixed'\n")
    (folder / "predictor.py").write_text(
        "import helpers\nclass PythonPredictor:\n    def predict(self):\n        return helpers.WHO\n"
    )
    assert build(folder / "predictor.py").predict([], "0") == "fixed"


# --- the deploy side: app/store/code.py and the registry -----------------------------------------------


def write_yaml(folder: Path, config: str = "{}") -> Path:
    path = folder / "cortex.yaml"
    path.write_text(f"- name: api\n  kind: BatchAPI\n  predictor:\n    path: a/predictor.py\n    config: {config}\n")
    return path


def test_the_deploy_keeps_the_folders_python_files_and_skips_hidden_folders_and_virtualenvs(tmp_path):
    project(tmp_path / "a", "a")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "mod.py").write_text("X = 1\n")
    for skipped in (".git", "__pycache__", "venv"):
        (tmp_path / "a" / skipped).mkdir()
        (tmp_path / "a" / skipped / "skipped.py").write_text("")
    (tmp_path / "a" / "venv" / "pyvenv.cfg").write_text("")
    ((deployment,),) = [read_deployments(write_yaml(tmp_path))]
    # the project: the folder of cortex.yaml, as on Cortex
    assert set(deployment.code) == {"a/predictor.py", "a/helpers.py", "a/late.py", "a/sub/mod.py"}
    assert deployment.code["a/helpers.py"] == "WHO = 'a'\n"
    assert deployment.spec["project_dir"] == str(tmp_path.resolve())


def test_an_edited_helper_makes_a_new_api_id(tmp_path):
    """So that a redeploy with a helper edited is a new API version, as an edited predictor was."""
    project(tmp_path / "a", "a")
    before = read_cortex_yaml(write_yaml(tmp_path))[0]["api_id"]
    (tmp_path / "a" / "helpers.py").write_text("WHO = 'b'\n")
    edited = read_cortex_yaml(tmp_path / "cortex.yaml")[0]["api_id"]
    assert edited != before
    # issue 18: the workers run from the deployed project, so a data file edited is a new version too
    (tmp_path / "a" / "label.txt").write_text("data files are deployed with the project")
    assert read_cortex_yaml(tmp_path / "cortex.yaml")[0]["api_id"] not in (before, edited)


def test_a_predictor_folder_with_too_much_python_is_refused_saying_why(tmp_path, monkeypatch):
    project(tmp_path / "a", "a")
    monkeypatch.setattr(code, "MAX_BYTES", 100)
    with pytest.raises(DeployError, match=r"API api: the project folder \S+/ holds more than .*folder of their own"):
        read_cortex_yaml(write_yaml(tmp_path))


def test_yaml_dates_in_a_config_reach_the_predictor_as_iso_strings(tmp_path):
    """YAML reads 2021-01-01 as a date, which JSON cannot carry (the deploy raised a TypeError);
    Cortex passed such values on as strings."""
    project(tmp_path / "a", "a")
    (spec,) = read_cortex_yaml(write_yaml(tmp_path, "{cutoff: 2021-01-01, at: 2021-01-01 10:00:00, 2021-02-03: k}"))
    assert spec["predictor"]["config"] == {"cutoff": "2021-01-01", "at": "2021-01-01T10:00:00", "2021-02-03": "k"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("{ratio: .inf}", r"API api: predictor.config.ratio is inf, which JSON cannot carry: quote it"),
        ("{deep: {x: [1, .nan]}}", r"API api: predictor.config.deep.x\[1\] is nan"),
        ("{blob: !!binary aGVsbG8=}", r"API api: predictor.config.blob is a bytes, which JSON cannot carry"),
    ],
)
def test_config_values_json_cannot_carry_are_refused_naming_them(tmp_path, config, message):
    """An `.inf` used to be deployed, and every job status then held `Infinity` (not JSON)."""
    project(tmp_path / "a", "a")
    with pytest.raises(DeployError, match=message):
        read_cortex_yaml(write_yaml(tmp_path, config))


CORTEX_PROJECT_PREDICTOR = """
import json
import os

import common


class PythonPredictor:
    def __init__(self, config):
        with open("values.json") as values:  # Cortex's own example: relative to the project
            self.values = json.load(values)

    def predict(self, payload):
        variables = [os.environ.get(name) for name in ("MODEL_BUCKET", "RETRIES", "TOKEN")]
        return common.NAME, self.values, variables, os.getcwd()
"""


def test_a_cortex_project_runs_unchanged(tmp_path, caplog):
    """Cortex's conventions for a project (the folder of cortex.yaml): its root importable, its
    files read relative to it, its `.env` and `predictor.env` in the environment."""
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "predictor.py").write_text(CORTEX_PROJECT_PREDICTOR)
    (root / "common.py").write_text("NAME = 'common at the root'\n")
    (root / "values.json").write_text('{"v": 1}')
    (root / ".env").write_text("# secrets\nTOKEN='from dotenv'\nMODEL_BUCKET=overridden\n")
    (root / "requirements.txt").write_text("pyfiglet\n")
    (root / "cortex.yaml").write_text(
        "- name: proj\n  kind: BatchAPI\n  predictor:\n    path: src/predictor.py\n"
        "    env: {MODEL_BUCKET: models, RETRIES: 3}\n"
    )
    with caplog.at_level(logging.WARNING, logger="app.store.registry"):
        (deployment,) = read_deployments(root / "cortex.yaml")
    assert "requirements.txt is not installed by Batchery" in caplog.text
    cwd = os.getcwd()
    predictor = Predictor(load_class(deployment.spec, lambda api_id: deployment.code), {}, {})
    assert predictor.predict([], "0") == (
        "common at the root",
        {"v": 1},
        ["models", "3", "from dotenv"],
        str(root.resolve()),
    )
    assert os.getcwd() == cwd and "MODEL_BUCKET" not in os.environ  # both restored after each call
    shown = json.dumps(public_spec(deployment.spec))
    assert "from dotenv" not in shown and "MODEL_BUCKET" not in shown and str(root) not in shown


def test_a_bad_predictor_env_is_refused_naming_it(tmp_path):
    project(tmp_path / "a", "a")
    with pytest.raises(DeployError, match=r"API api: predictor.env.X must be a string \(got list\)"):
        (tmp_path / "cortex.yaml").write_text(
            "- name: api\n  kind: BatchAPI\n  predictor:\n    path: a/predictor.py\n    env: {X: [1]}\n"
        )
        read_cortex_yaml(tmp_path / "cortex.yaml")


def test_a_packages_data_file_reads_from_disk(tmp_path):
    """pkgutil.get_data asks the module's loader: the deployed code's loader reads other files
    from the project on disk, as Python's own loader did."""
    folder = tmp_path / "data"
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "__init__.py").write_text("")
    (folder / "lib" / "labels.txt").write_text("cat\ndog\n")
    (folder / "predictor.py").write_text(
        "import pkgutil\nclass PythonPredictor:\n    def predict(self):\n"
        "        return pkgutil.get_data('lib', 'labels.txt').decode().split()\n"
    )
    assert build(folder / "predictor.py").predict([], "0") == ["cat", "dog"]


def write(folder: Path, files: dict[str, str]) -> Path:
    """Files of a project (path relative to `folder`: text); the folder."""
    for relative, text in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(text)
    return folder


def test_the_predictor_module_is_importable_while_it_runs_and_named_as_on_cortex(tmp_path):
    """Dataclasses with string annotations (`from __future__ import annotations`) look their module
    up in sys.modules while the class is made: the predictor failed to import. Pickles of its
    classes name `cortex_predictor`, as on Cortex, whatever the api_id."""
    folder = write(
        tmp_path / "dc",
        {
            "predictor.py": "from __future__ import annotations\nimport pickle\nfrom dataclasses import dataclass\n"
            "@dataclass\nclass Row:\n    text: str\n"
            "class PythonPredictor:\n    def predict(self, payload):\n"
            "        return pickle.loads(pickle.dumps(Row('x'))).text, Row.__module__\n"
        },
    )
    assert build(folder / "predictor.py").predict([], "0") == ("x", "cortex_predictor")
    assert "cortex_predictor" not in sys.modules


def test_a_project_module_shadows_a_package_another_api_imported(tmp_path, monkeypatch):
    """As on Cortex (the project on PYTHONPATH, ahead of site-packages): which module an API got
    depended on whether another API had imported the installed package in that process before."""
    site = write(tmp_path / "site", {"lib_like_xmltodict.py": "WHO = 'installed'\n"})
    monkeypatch.syspath_prepend(str(site))
    importer = "import lib_like_xmltodict\nclass PythonPredictor:\n    def predict(self):\n"
    importer += "        import lib_like_xmltodict as again\n        return lib_like_xmltodict.WHO, again.WHO\n"
    mine = write(tmp_path / "mine", {"predictor.py": importer, "lib_like_xmltodict.py": "WHO = 'project'\n"})
    other = write(tmp_path / "other", {"predictor.py": importer})
    uses_installed = build(other / "predictor.py")  # imports the installed one first
    own = build(mine / "predictor.py")
    for _ in range(2):
        assert own.predict([], "0") == ("project", "project")
        assert uses_installed.predict([], "0") == ("installed", "installed")


def test_namespace_packages_and_folders_the_predictor_puts_on_sys_path_are_its_own(tmp_path):
    """A folder without __init__.py imports (a namespace package); and a project folder put on
    sys.path by the predictor serves each API its own files (two APIs' src/model.py met)."""
    predictor = (
        "import os, sys\nsys.path.insert(0, os.path.join(os.path.dirname(__file__), 'src'))\n"
        "import model\nfrom models import net\n"
        "class PythonPredictor:\n    def predict(self):\n        return model.WHO, net.WHO\n"
    )
    apis = []
    for who in ("s1", "s2"):
        folder = write(
            tmp_path / who,
            {"predictor.py": predictor, "src/model.py": f"WHO = {who!r}\n", "models/net.py": f"WHO = {who!r}\n"},
        )
        apis.append(build(folder / "predictor.py"))
    assert [api.predict([], "0") for api in apis] == [("s1", "s1"), ("s2", "s2")]


def test_importlib_resources_reads_a_project_packages_files(tmp_path):
    folder = write(
        tmp_path / "res",
        {
            "pkg/__init__.py": "",
            "pkg/data.txt": "hello",
            "predictor.py": "import importlib.resources\nclass PythonPredictor:\n    def predict(self):\n"
            "        return importlib.resources.files('pkg').joinpath('data.txt').read_text()\n",
        },
    )
    assert build(folder / "predictor.py").predict([], "0") == "hello"


def test_a_project_folder_named_like_a_worker_package_is_not_grafted_onto_it(tmp_path):
    """`yaml/extra.py` in a project became `yaml.extra` of the installed PyYAML the worker uses."""
    import yaml  # noqa: F401 - the worker's own

    folder = write(
        tmp_path / "graft",
        {
            "yaml/extra.py": "X = 1\n",
            "predictor.py": "class PythonPredictor:\n    def predict(self):\n        import yaml.extra\n",
        },
    )
    with pytest.raises(ModuleNotFoundError):
        build(folder / "predictor.py").predict([], "0")
    assert "yaml.extra" not in sys.modules


def test_a_process_keeps_the_classes_of_the_latest_few_apis_only(tmp_path, monkeypatch):
    """Each redeploy is a new api_id: a process kept every version's modules (and the models
    they hold) for its whole life."""
    from workers import runtime

    monkeypatch.setattr(runtime._loaded, "size", 2)
    for n in range(4):
        build(project(tmp_path / f"v{n}", f"v{n}"))
    assert len(runtime._loaded) == 2


def test_predictor_env_values_are_the_text_written_in_the_yaml(tmp_path):
    """YAML read `1.10` as 1.1, `yes` as true, `0755` as 493: Cortex passed the text as written."""
    project(tmp_path / "a", "a")
    env = "{VERSION: 1.10, ENABLED: yes, PERMS: 0755, AT: 12:30, NAME: 'quoted', RETRIES: 3}"
    (tmp_path / "cortex.yaml").write_text(
        f"- name: api\n  kind: BatchAPI\n  predictor:\n    path: a/predictor.py\n    env: {env}\n"
    )
    (spec,) = read_cortex_yaml(tmp_path / "cortex.yaml")
    assert spec["env"] == {
        "VERSION": "1.10",
        "ENABLED": "yes",
        "PERMS": "0755",
        "AT": "12:30",
        "NAME": "quoted",
        "RETRIES": "3",
    }


ENV_PREDICTOR = """
import os

os.environ["{name}"] = "{who}"  # at import, as ML code sets TOKENIZERS_PARALLELISM or OMP_NUM_THREADS
os.environ.pop("{gone}", None)


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        if payload == ["set"]:
            os.environ["{name}_LATER"] = "{who}"
        return os.environ.get("{name}"), os.environ.get("{name}_LATER"), os.environ.get("{gone}")
"""

PLAIN_PREDICTOR = """
import os


class PythonPredictor:
    def __init__(self, config):
        pass

    def predict(self, payload):
        return os.environ.get("{name}"), os.environ.get("{name}_LATER"), os.environ.get("{gone}")
"""


def test_what_a_predictor_sets_in_os_environ_stays_its_own(tmp_path, monkeypatch):
    """On Cortex each API had its own process: a variable one predictor sets (or deletes) is
    there for its later calls, and not for another API's, nor for the worker between calls."""
    name, gone = f"BATCHERY_TEST_{uuid.uuid4().hex[:8].upper()}", f"BATCHERY_TEST_GONE_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(gone, "worker")
    paths = {}
    for who, source in (("a", ENV_PREDICTOR), ("b", PLAIN_PREDICTOR)):
        (tmp_path / who).mkdir()
        paths[who] = tmp_path / who / "predictor.py"
        paths[who].write_text(source.format(name=name, who=who, gone=gone))
    a = build(paths["a"])
    assert (os.environ.get(name), os.environ.get(gone)) == (None, "worker")  # the import's change is a's
    b = build(paths["b"])
    assert a.predict(["set"], "0") == ("a", "a", None)
    assert b.predict([1], "0") == (None, None, "worker")
    assert a.predict([1], "0") == ("a", "a", None)  # kept for a's later calls
    assert (os.environ.get(name), os.environ.get(f"{name}_LATER"), os.environ.get(gone)) == (None, None, "worker")
