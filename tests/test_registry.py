"""Reading cortex.yaml (app/store/registry.py): the Batch APIs it declares, what it ignores, what it refuses."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from app.errors import DeployError
from app.store.registry import read_cortex_yaml

PREDICTOR = "class PythonPredictor:\n    def predict(self, payload):\n        return payload\n"


def write_project(tmp_path: Path, yaml_text: str, predictors: dict[str, str] | None = None) -> Path:
    for name, source in (predictors if predictors is not None else {"predictor.py": PREDICTOR}).items():
        (tmp_path / name).write_text(source)
    path = tmp_path / "cortex.yaml"
    path.write_text(textwrap.dedent(yaml_text))
    return path


def test_read_cortex_yaml_reads_batch_apis(tmp_path):
    path = write_project(
        tmp_path,
        """
        - name: image-classifier
          kind: BatchAPI
          predictor:
            type: python
            path: predictor.py
            config: {model: resnet50, nested: {a: 1}}
        - name: second
          kind: BatchAPI
          predictor:
            path: predictor.py
        """,
    )
    first, second = read_cortex_yaml(path)
    assert first["name"] == "image-classifier"
    assert first["kind"] == "BatchAPI"
    config = {"model": "resnet50", "nested": {"a": 1}}
    assert first["predictor"] == {"type": "python", "path": "predictor.py", "config": config}
    assert first["predictor_file"] == str((tmp_path / "predictor.py").resolve())
    assert len(first["api_id"]) == 20
    int(first["api_id"], 16)
    assert second["predictor"]["config"] == {}
    assert second["api_id"] != first["api_id"]


def test_read_cortex_yaml_api_id_changes_with_the_predictor_source(tmp_path):
    yaml_text = "- {name: api, kind: BatchAPI, predictor: {path: predictor.py}}\n"
    before = read_cortex_yaml(write_project(tmp_path, yaml_text))[0]["api_id"]
    assert read_cortex_yaml(tmp_path / "cortex.yaml")[0]["api_id"] == before
    (tmp_path / "predictor.py").write_text(PREDICTOR + "# changed\n")
    assert read_cortex_yaml(tmp_path / "cortex.yaml")[0]["api_id"] != before


def test_read_cortex_yaml_accepts_a_single_mapping(tmp_path):
    path = write_project(tmp_path, "name: solo\nkind: BatchAPI\npredictor: {path: predictor.py}\n")
    assert [spec["name"] for spec in read_cortex_yaml(path)] == ["solo"]


def test_read_cortex_yaml_ignores_unknown_keys_with_a_warning(tmp_path, caplog):
    path = write_project(
        tmp_path,
        """
        - name: api
          kind: BatchAPI
          compute: {cpu: 1, gpu: 1}
          networking: {endpoint: /x}
          predictor:
            path: predictor.py
            image: quay.io/cortexlabs/python-predictor-cpu
        """,
    )
    with caplog.at_level(logging.WARNING, logger="app.store.registry"):
        (spec,) = read_cortex_yaml(path)
    assert set(spec) == {
        "name", "kind", "predictor", "api_id", "predictor_file", "project_dir", "env", "code_id",
        "compute", "project_id", "project_bytes",
    }  # fmt: skip
    assert spec["compute"] == {"cpu": 1, "gpu": 1}  # recorded for the fleet (issue 18), no longer ignored
    assert set(spec["predictor"]) == {"type", "path", "config"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in ("networking", "predictor.image"):
        assert any("API api" in w and key in w and "ignored" in w for w in warnings), (key, warnings)


def test_read_cortex_yaml_skips_other_kinds_with_a_warning(tmp_path, caplog):
    path = write_project(
        tmp_path,
        """
        - name: realtime
          kind: RealtimeAPI
          predictor: {path: missing.py}
        - name: batch
          kind: BatchAPI
          predictor: {path: predictor.py}
        - name: task
          kind: TaskAPI
        """,
    )
    with caplog.at_level(logging.WARNING, logger="app.store.registry"):
        specs = read_cortex_yaml(path)
    assert [spec["name"] for spec in specs] == ["batch"]
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert any("realtime" in s and "RealtimeAPI" in s for s in skipped)
    assert any("task" in s and "TaskAPI" in s for s in skipped)


@pytest.mark.parametrize(
    ("api_yaml", "predictors", "expected"),
    [
        ("{name: api, kind: BatchAPI, predictor: {type: python}}", None, "API api: predictor.path is required"),
        ("{name: api, kind: BatchAPI, predictor: {path: ''}}", None, "API api: predictor.path is required"),
        ("{name: api, kind: BatchAPI, predictor: {path: gone.py}}", None, "API api: predictor.path gone.py does not"),
        ("{name: api, kind: BatchAPI, predictor: {path: .}}", None, "API api: predictor.path . does not exist"),
        (
            "{name: api, kind: BatchAPI, predictor: {path: predictor.py}}",
            {"predictor.py": "class Predictor:\n    pass\n"},
            "API api: predictor.py must define class PythonPredictor",
        ),
        (
            "{name: api, kind: BatchAPI, predictor: {path: predictor.py}}",
            {"predictor.py": "def PythonPredictor():\n    pass\n"},
            "API api: predictor.py must define class PythonPredictor",
        ),
        (
            "{name: api, kind: BatchAPI, predictor: {path: predictor.py}}",
            {"predictor.py": "class PythonPredictor(:\n"},
            "API api: predictor.py line 1",
        ),
        ("{name: Bad_Name, kind: BatchAPI, predictor: {path: predictor.py}}", None, "API 'Bad_Name': names use"),
        ("{name: -dash, kind: BatchAPI, predictor: {path: predictor.py}}", None, "API '-dash': names use"),
        (f"{{name: {'a' * 64}, kind: BatchAPI, predictor: {{path: predictor.py}}}}", None, "at most 63"),
        ("{kind: BatchAPI, predictor: {path: predictor.py}}", None, "API #1: each API needs a `name`"),
        ("{name: api, kind: BatchAPI}", None, "API api: `predictor` is required"),
        ("{name: api, kind: BatchAPI, predictor: {type: tensorflow, path: predictor.py}}", None, "predictor.type"),
        ("{name: api, kind: BatchAPI, predictor: {path: predictor.py, config: [1]}}", None, "predictor.config"),
    ],
)
def test_read_cortex_yaml_rejects_a_bad_api_naming_it(tmp_path, api_yaml, predictors, expected):
    path = write_project(tmp_path, f"- {api_yaml}\n", predictors)
    with pytest.raises(DeployError) as caught:
        read_cortex_yaml(path)
    assert expected in caught.value.message
    assert caught.value.kind == "deploy_error"


def test_read_cortex_yaml_of_a_missing_file_names_the_file(tmp_path):
    with pytest.raises(DeployError, match=r"cannot read nowhere\.yaml"):
        read_cortex_yaml(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("text", ["", "42\n", "[]\n", "- name: [unclosed\n"])
def test_read_cortex_yaml_of_no_list_of_apis_is_refused(tmp_path, text):
    path = tmp_path / "cortex.yaml"
    path.write_text(text)
    with pytest.raises(DeployError, match=r"cortex\.yaml"):
        read_cortex_yaml(path)


def test_read_cortex_yaml_does_not_import_the_predictor(tmp_path):
    # Class names are read from the syntax tree: user code (and its heavy imports) runs on workers only.
    marker = tmp_path / "imported"
    source = f"open({str(marker)!r}, 'w').close()\n" + PREDICTOR
    yaml_text = "- {name: api, kind: BatchAPI, predictor: {path: predictor.py}}\n"
    path = write_project(tmp_path, yaml_text, {"predictor.py": source})
    assert read_cortex_yaml(path)[0]["name"] == "api"
    assert not marker.exists()


def test_read_cortex_yaml_refuses_an_api_declared_twice(tmp_path):
    entry = "- name: twin\n  kind: BatchAPI\n  predictor: {type: python, path: predictor.py}\n"
    path = write_project(tmp_path, entry + entry)
    with pytest.raises(DeployError, match="twin more than once"):
        read_cortex_yaml(path)
