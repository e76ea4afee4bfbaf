"""Pure logic, no services: error wording, batching, merging, ids, status precedence, cortex.yaml, body decoding."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import textwrap
from pathlib import Path

import pytest

from app.broker.dead_letters import queue_name
from app.config import MAX_BATCH_BYTES, Settings
from app.errors import DeployError, InvalidRequest
from app.jobs.batching import entry, item_batches
from app.web.schemas import MAX_NESTING, decode_body
from app.model import status
from app.model.job import DELIVERIES_WITHOUT_DLQ, build_spec, deep_merge, job_status, new_job_id, retry_limits
from app.store.registry import read_cortex_yaml
from app.web.schemas import describe

PREDICTOR = "class PythonPredictor:\n    def predict(self, payload):\n        return payload\n"


def decoded(entries: list[str]) -> list[tuple[int, list]]:
    """Backlog entries back into (batch id, payload)."""
    pairs = [e.split(" ", 1) for e in entries]
    return [(int(batch_id), json.loads(body)) for batch_id, body in pairs]


# --- app.web.schemas.describe -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ({"workers": ["Missing data for required field."]}, "workers: missing data for required field"),
        (
            {"item_list": {"batch_size": ["Must be greater than or equal to 1."]}},
            "item_list.batch_size: must be greater than or equal to 1",
        ),
        (
            {"sqs_dead_letter_queue": {"arn": ["Must not be empty."], "max_receive_count": ["Not a valid integer."]}},
            "sqs_dead_letter_queue.arn: must not be empty; "
            "sqs_dead_letter_queue.max_receive_count: not a valid integer",
        ),
        ({"_schema": ["Exactly one source is required."]}, "exactly one source is required"),
        ({"item_list": {"_schema": ["Invalid input type."]}}, "item_list: invalid input type"),
        (
            {"file_path_lister": {"s3_paths": {0: ["Not a valid string."]}}},
            "file_path_lister.s3_paths.0: not a valid string",
        ),
        ("Plain message.", "plain message"),
        ({"timeout": "Not a valid integer."}, "timeout: not a valid integer"),
    ],
)
def test_describe_flattens_marshmallow_messages_into_dotted_paths(messages, expected):
    assert describe(messages) == expected


@pytest.mark.parametrize("path", [{"batchsize": ["Unknown field."]}, {"item_list": {"batchsize": ["Unknown field."]}}])
def test_describe_says_an_unknown_field_may_be_misspelt(path):
    text = describe(path)
    name = "batchsize" if "batchsize" in path else "item_list.batchsize"
    assert text == f"{name}: unknown field (check its spelling against the job submission reference)"


def test_describe_joins_several_fields_with_semicolons_in_order():
    text = describe({"workers": ["Bad."], "timeout": ["Worse."]})
    assert text == "workers: bad; timeout: worse"


def test_describe_keeps_every_message_of_one_field():
    text = describe({"workers": ["First problem.", "Second problem."]})
    assert text.startswith("workers: first problem")
    assert "second problem" in text


# --- app.jobs.batching.item_batches --------------------------------------------------------------------


def test_entry_is_the_batch_id_a_space_then_the_json():
    assert entry(7, "[1,2]") == "7 [1,2]"


def test_item_batches_are_consecutive_slices_with_ids_from_zero():
    entries = item_batches(list(range(7)), 3)
    assert entries == ["0 [0,1,2]", "1 [3,4,5]", "2 [6]"]


def test_item_batches_keep_any_json_value_as_it_is():
    items = [{"a": [1, None]}, "text", 1.5, True, None, ["x"], "é ✓ 🐍"]
    entries = item_batches(items, 2)
    assert [batch_id for batch_id, _ in decoded(entries)] == [0, 1, 2, 3]
    assert [payload for _, payload in decoded(entries)] == [items[0:2], items[2:4], items[4:6], items[6:7]]
    assert "é ✓ 🐍" in entries[-1]  # not \u-escaped: the size limit is measured on what is sent


@pytest.mark.parametrize(("n", "size", "lengths"), [(1, 1, [1]), (5, 5, [5]), (5, 10, [5]), (10, 4, [4, 4, 2])])
def test_item_batches_last_batch_holds_the_rest(n, size, lengths):
    entries = decoded(item_batches(list(range(n)), size))
    assert [len(payload) for _, payload in entries] == lengths
    assert [batch_id for batch_id, _ in entries] == list(range(len(lengths)))
    assert [item for _, payload in entries for item in payload] == list(range(n))


def test_a_batch_just_under_256_kib_is_accepted_and_one_at_256_kib_is_not():
    # The payload is ["<s>"]: four bytes around the string.
    just_under = "x" * (MAX_BATCH_BYTES - 5)
    assert item_batches([just_under], 1) == [f'0 ["{just_under}"]']
    with pytest.raises(InvalidRequest) as caught:
        item_batches([just_under + "x"], 1)
    assert "batch 0 (items 0 to 0) is 256.0 KiB" in caught.value.message


def test_batch_size_is_measured_in_utf8_bytes_not_characters():
    # "é" is one character but two UTF-8 bytes: 131070 of them are 262144 bytes with the brackets.
    fits = "é" * ((MAX_BATCH_BYTES - 6) // 2)
    assert len(item_batches([fits], 1)) == 1
    too_big = fits + "é"
    assert len(f'["{too_big}"]') < MAX_BATCH_BYTES  # under the limit in characters ...
    with pytest.raises(InvalidRequest, match="256 KiB"):  # ... but not in bytes
        item_batches([too_big], 1)
    emoji = "🐍" * (MAX_BATCH_BYTES // 4)  # four bytes each
    with pytest.raises(InvalidRequest, match="256 KiB"):
        item_batches([emoji], 1)


def test_too_big_batch_error_names_the_batch_its_items_and_the_fix():
    items = ["small", "small", "y" * MAX_BATCH_BYTES, "small"]
    with pytest.raises(InvalidRequest) as caught:
        item_batches(items, 2)
    message = caught.value.message
    assert message.startswith("item_list: batch 1 (items 2 to 3) is ")
    assert "smaller than 256 KiB" in message
    assert "lower item_list.batch_size" in message


def test_a_lone_surrogate_item_is_batched_as_escaped_json_not_a_crash():
    # json.loads('"\\ud800"') is a valid str that UTF-8 cannot encode; it must still reach the predictor.
    entries = item_batches(["ok", "\ud800", "é"], 3)
    assert entries[0].isascii()
    assert decoded(entries) == [(0, ["ok", "\ud800", "é"])]
    entries[0].encode()  # storable in Redis


# --- app.model.job --------------------------------------------------------------------------------------


def test_deep_merge_merges_nested_mappings_and_the_override_wins():
    base = {"model": "resnet", "nested": {"keep": "api", "override": "api", "deeper": {"a": 1}}, "list": [1, 2]}
    override = {"nested": {"override": "job", "deeper": {"b": 2}, "new": "job"}, "list": [3], "extra": 1}
    assert deep_merge(base, override) == {
        "model": "resnet",
        "nested": {"keep": "api", "override": "job", "deeper": {"a": 1, "b": 2}, "new": "job"},
        "list": [3],
        "extra": 1,
    }


def test_deep_merge_a_non_mapping_replaces_a_mapping_and_back():
    assert deep_merge({"a": {"b": 1}}, {"a": 5}) == {"a": 5}
    assert deep_merge({"a": 5}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}


def test_deep_merge_does_not_mutate_or_alias_its_inputs():
    base = {"nested": {"keep": "api", "list": [1]}}
    override = {"nested": {"new": {"deep": [2]}}}
    base_copy, override_copy = json.loads(json.dumps(base)), json.loads(json.dumps(override))
    merged = deep_merge(base, override)
    merged["nested"]["list"].append(99)
    merged["nested"]["new"]["deep"].append(99)
    merged["nested"]["keep"] = "changed"
    assert base == base_copy
    assert override == override_copy


def test_new_job_id_is_16_hex_digits():
    job_id = new_job_id(1_700_000_000.123456)
    assert len(job_id) == 16
    int(job_id, 16)
    assert job_id == job_id.lower()


def test_new_job_ids_sort_by_creation_time():
    times = [1_600_000_000.0 + step * 0.001 for step in range(0, 50)] + [1_700_000_000.0, 2_000_000_000.0]
    ids = [new_job_id(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_job_ids_at_the_same_instant_differ():
    ids = {new_job_id(1_700_000_000.0) for _ in range(50)}
    assert len(ids) > 1  # 3 random hex digits: 50 draws all alike is practically impossible


def test_retry_limits_with_a_dead_letter_queue_are_its_max_receive_count():
    spec = {"sqs_dead_letter_queue": {"arn": "arn:aws:sqs:us-west-2:123456789:failed", "max_receive_count": 4}}
    assert retry_limits(spec) == (4, 4)


def test_retry_limits_without_a_dead_letter_queue_never_retry_a_raising_predict():
    assert retry_limits({}) == (DELIVERIES_WITHOUT_DLQ, 1)
    assert retry_limits({"sqs_dead_letter_queue": None}) == (DELIVERIES_WITHOUT_DLQ, 1)
    assert DELIVERIES_WITHOUT_DLQ >= 2  # a delivery lost with its worker is delivered again


def stored_state(job_status_code: str, **counts) -> dict:
    """A job's state as the store reads it: 4 batches, none done, unless `counts` says otherwise."""
    api = {"name": "sum", "api_id": "a1", "predictor": {"config": {}}}
    spec = build_spec(api, {"workers": 2, "config": {}}, "redis://host:6379/0/batchery", 1_700_000_000.0)
    state = {"spec": spec, "status": job_status_code, "total": 4, "succeeded": 0, "failed": 0, "failed_batches": 0}
    worker_counts = dict.fromkeys(("pending", "initializing", "running", "succeeded", "failed", "stalled"), 0)
    return {**state, "time_sum": 0.0, "worker_counts": worker_counts, "start": None, "end": None, **counts}


def test_a_job_status_has_null_for_what_cortex_always_sent_and_has_no_value_yet():
    view = job_status(stored_state(status.ENQUEUING))
    assert {key: view[key] for key in ("timeout", "sqs_dead_letter_queue", "start_time")} == dict.fromkeys(
        ("timeout", "sqs_dead_letter_queue", "start_time")
    )
    assert view["batch_metrics"] == {"succeeded": 0, "failed": 0, "average_time_per_batch": None}
    assert "end_time" not in view  # the reference page's optional ones are left out


def test_a_job_status_of_a_job_stored_before_timeout_was_kept_still_has_it():
    state = stored_state(status.RUNNING, start=1_700_000_001.0)
    del state["spec"]["timeout"], state["spec"]["sqs_dead_letter_queue"]
    view = job_status(state)
    assert (view["timeout"], view["sqs_dead_letter_queue"], view["start_time"]) == (
        None,
        None,
        "2023-11-14T22:13:21Z",
    )


def test_the_average_time_per_batch_has_both_names_once_a_batch_succeeded():
    metrics = job_status(stored_state(status.RUNNING, succeeded=2, time_sum=3.0))["batch_metrics"]
    assert metrics == {"succeeded": 2, "failed": 0, "avg_time_per_batch": 1.5, "average_time_per_batch": 1.5}


@pytest.mark.parametrize("code", [status.STOPPED, status.TIMED_OUT, status.WORKER_ERROR, status.ENQUEUE_FAILED])
def test_an_ended_job_has_no_batches_in_queue_as_on_cortex(code):
    assert job_status(stored_state(code, succeeded=1, end=1_700_000_009.0))["batches_in_queue"] == 0
    assert job_status(stored_state(status.RUNNING, succeeded=1))["batches_in_queue"] == 3


@pytest.mark.parametrize(
    ("arn", "name"),
    [
        ("arn:aws:sqs:us-west-2:123456789:failed.fifo", "failed.fifo"),
        ("arn:aws:sqs:eu-west-1:000000000000:dead-letters", "dead-letters"),
        ("just-a-name", "just-a-name"),
    ],
)
def test_dead_letter_queue_name_is_the_last_part_of_the_arn(arn, name):
    assert queue_name(arn) == name


# --- app.model.status.strongest -------------------------------------------------------------------------

# DESIGN.md: stopped > timed_out > worker_oom > worker_error > enqueue_failed > unexpected_error >
# completed_with_failures > succeeded > running > enqueuing
STRONGEST_FIRST = [
    status.STOPPED,
    status.TIMED_OUT,
    status.WORKER_OOM,
    status.WORKER_ERROR,
    status.ENQUEUE_FAILED,
    status.UNEXPECTED_ERROR,
    status.COMPLETED_WITH_FAILURES,
    status.SUCCEEDED,
    status.RUNNING,
    status.ENQUEUING,
]


@pytest.mark.parametrize(("higher", "lower"), list(itertools.pairwise(STRONGEST_FIRST)))
def test_strongest_follows_the_design_precedence_for_each_adjacent_pair(higher, lower):
    assert status.strongest(higher, lower) == higher
    assert status.strongest(lower, higher) == higher


def test_strongest_of_all_statuses_is_stopped_and_of_one_is_itself():
    assert status.strongest(*reversed(STRONGEST_FIRST)) == status.STOPPED
    assert status.strongest(status.RUNNING, status.ENQUEUING, status.SUCCEEDED) == status.SUCCEEDED
    for code in STRONGEST_FIRST:
        assert status.strongest(code) == code


def test_only_enqueuing_and_running_are_not_final():
    assert {code for code in STRONGEST_FIRST if not status.is_final(code)} == {status.ENQUEUING, status.RUNNING}
    assert set(STRONGEST_FIRST) == set(status.PRECEDENCE)


# --- app.store.registry.read_cortex_yaml ----------------------------------------------------------------


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
    assert set(spec) == {"name", "kind", "predictor", "api_id", "predictor_file", "project_dir", "env", "code_id"}
    assert set(spec["predictor"]) == {"type", "path", "config"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for key in ("compute", "networking", "predictor.image"):
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


# --- app.jobs.submission.decode_body -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"workers": 1}', {"workers": 1}),
        (b"  \n{}\n ", {}),
        (b"[1, 2.5]", [1, 2.5]),
        ('{"text": "é 🐍"}'.encode(), {"text": "é 🐍"}),
        (b'\xef\xbb\xbf{"bom": true}', {"bom": True}),
        (b"1e308", 1e308),
        (b'"\\ud800"', "\ud800"),
    ],
)
def test_decode_body_reads_json(raw, expected):
    assert decode_body(raw) == expected


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t\r\n "])
def test_decode_body_refuses_an_empty_body(raw):
    with pytest.raises(InvalidRequest, match="the request body is empty"):
        decode_body(raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "not valid JSON"),
        (b'{"workers": 1,}', "not valid JSON"),
        (b"{'workers': 1}", "not valid JSON"),
        (b'{"a": 1} trailing', "not valid JSON: Extra data"),
        (b"\xff\xfe\xfd", "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
        (b"NaN", "NaN is not a JSON value"),
        (b'{"a": Infinity}', "Infinity is not a JSON value"),
        (b'{"a": [-Infinity]}', "-Infinity is not a JSON value"),
        (b'{"a": 1e400}', "1e400 is out of range"),
        (b'{"a": -1e400}', "-1e400 is out of range"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"a":' * 100_000, "nested too deeply"),
    ],
)
def test_decode_body_refuses_what_is_not_json(raw, reason):
    with pytest.raises(InvalidRequest) as caught:
        decode_body(raw)
    assert reason in caught.value.message
    assert caught.value.status == 400


def nested(levels: int, inner: object = None) -> object:
    """`levels` lists, one inside the other, around `inner` (if given)."""
    value: object = [] if inner is None else [inner]
    for _ in range(levels - 1):
        value = [value]
    return value


def test_decode_body_takes_nesting_up_to_the_limit():
    assert decode_body(json.dumps(nested(MAX_NESTING)).encode()) == nested(MAX_NESTING)
    objects = {"a": 1}
    for _ in range(MAX_NESTING - 1):
        objects = {"a": objects}
    assert decode_body(json.dumps(objects).encode()) == objects
    mixed = {"items": nested(MAX_NESTING - 2, {"x": 1})}  # MAX_NESTING levels: body, lists, the innermost object
    assert decode_body(json.dumps(mixed).encode()) == mixed


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(nested(MAX_NESTING + 1), id="lists"),
        pytest.param({"config": nested(MAX_NESTING)}, id="lists-in-an-object"),
        pytest.param(nested(MAX_NESTING - 1, {"a": {"b": 1}}), id="objects-in-lists"),
        pytest.param([1, 2, [3], nested(MAX_NESTING), "x"], id="one-deep-branch-among-shallow-ones"),
        pytest.param(nested(600), id="600-levels"),  # parses, but deep_merge's copy and the worker would not cope
    ],
)
def test_decode_body_refuses_nesting_over_the_limit(value):
    with pytest.raises(InvalidRequest) as caught:
        decode_body(json.dumps(value).encode())
    assert f"nested too deeply (more than {MAX_NESTING} levels" in caught.value.message


def test_brackets_that_do_not_nest_deeply_are_not_counted_as_depth():
    wide = {"items": [[{"a": [1]}]] * 10_000}  # 40,000 brackets, four levels
    assert decode_body(json.dumps(wide).encode()) == wide
    in_strings = {"text": "[" * 1000 + "{" * 1000}
    assert decode_body(json.dumps(in_strings).encode()) == in_strings


def test_read_cortex_yaml_refuses_an_api_declared_twice(tmp_path):
    entry = "- name: twin\n  kind: BatchAPI\n  predictor: {type: python, path: predictor.py}\n"
    path = write_project(tmp_path, entry + entry)
    with pytest.raises(DeployError, match="twin more than once"):
        read_cortex_yaml(path)


def loaded(cls: type):
    """A predictor class as load_class gives it, with an empty namespace of modules."""
    from workers.namespace import Namespace
    from workers.runtime import LoadedClass

    return LoadedClass(cls, Namespace(".", {}))


def test_predictor_is_called_with_the_arguments_its_methods_name():
    from workers.runtime import Predictor

    class Named:
        def __init__(self, config):
            self.config = config

        def predict(self, payload):
            return ("named", payload, self.config)

    class Anything:
        def __init__(self, **kwargs):
            self.seen = kwargs

        def predict(self, **kwargs):
            return kwargs

    assert Predictor(loaded(Named), {"k": 1}, {"job_id": "j"}).predict([1], "7") == ("named", [1], {"k": 1})
    anything = Predictor(loaded(Anything), {"k": 1}, {"job_id": "j"})
    assert anything.instance.seen == {"config": {"k": 1}, "job_spec": {"job_id": "j"}}
    assert anything.predict([1], "7") == {"payload": [1], "batch_id": "7"}


def test_predictor_without_a_predict_method_is_a_predictor_error():
    from workers.runtime import Predictor, PredictorError

    class NoPredict:
        def __init__(self, config):
            pass

    with pytest.raises(PredictorError, match=r"PythonPredictor\.predict cannot be called"):
        Predictor(loaded(NoPredict), {}, {})


def test_the_store_pushes_batch_messages_only_when_the_broker_is_its_own_redis():
    from app.jobs.services import direct_queue

    same = Settings(redis_url="redis://h:6379/0", queue="q")
    assert direct_queue(same) == "q"
    assert direct_queue(dataclasses.replace(same, broker_url="redis://h:6379/0")) == "q"
    assert direct_queue(dataclasses.replace(same, broker_url="redis://h:6379/1")) == ""  # another database
    assert direct_queue(dataclasses.replace(same, broker_url="redis://other:6379/0")) == ""
    assert direct_queue(dataclasses.replace(same, broker_url="sqs://")) == ""


def test_task_events_are_off_unless_asked_for():
    from app.broker.config import celery_config

    assert celery_config(Settings())["worker_send_task_events"] is False
    assert celery_config(Settings.from_env({"BATCHERY_TASK_EVENTS": "1"}))["worker_send_task_events"] is True
    assert celery_config(Settings.from_env({"BATCHERY_TASK_EVENTS": "no"}))["worker_send_task_events"] is False
