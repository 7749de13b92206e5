"""Reading records: a bad row (bad JSON, a non-UTF-8 byte, a line over max_record_bytes, no reference where the
task needs one) is a one-line error naming the file and line."""

from __future__ import annotations

import pytest
from data_paths import data_file  # the shared datasets (a helper beside this file)

from datamodules import DataError, load_records
from datamodules.tasks import Arithmetic, load_task


def write(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    return path


def test_reads_prompt_and_chat_records(tmp_path):
    path = write(tmp_path, '{"id": "a", "prompt": "1+1=", "reference": "2"}\n\n'
                           '{"messages": [{"role": "user", "content": "hi"}], "reference": "x"}\n')
    records = load_records(path, task="t")
    assert [r.id for r in records] == ["a", "data.jsonl:3"]
    assert records[1].messages[0]["content"] == "hi" and records[1].task == "t"


@pytest.mark.parametrize("row, says", [
    ('{"id": 1, "prompt": "x"', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"id": "b"}', "exactly one of 'prompt'"),
    ('{"id": "b", "prompt": 3}', "field 'prompt' should be str"),
    ('{"id": "b", "messages": [{"role": "user"}]}', "'messages' must be a list"),
])
def test_bad_row_names_file_and_line(tmp_path, row, says):
    path = write(tmp_path, '{"id": "ok", "prompt": "fine"}\n' + row + "\n")
    with pytest.raises(DataError, match=says) as error:
        load_records(path)
    assert f"{path}:2:" in str(error.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="has no records"):
        load_records(write(tmp_path, "\n"))


def test_non_utf8_byte_is_one_line_naming_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "1+1=", "reference": "2"}\n'
                     b'{"id": "b", "prompt": "caf\xe9", "reference": "x"}\n')  # a Latin-1 byte
    with pytest.raises(DataError) as error:
        load_records(path)
    message = str(error.value)
    assert message.startswith(f"{path}:2: not UTF-8 (byte 0xe9") and "\n" not in message


def test_line_over_max_record_bytes_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "data.jsonl"
    with open(path, "w") as f:
        f.write('{"id": "a", "prompt": "1+1=", "reference": "2"}\n')
        f.write('{"id": "huge", "prompt": "' + "9" * (10 * 2**20) + '", "reference": "9"}\n')  # the probe's 10 MB line
    with pytest.raises(DataError, match=rf"{path}:2: the line is over max_record_bytes=8388608 bytes"):
        load_records(path)
    with pytest.raises(DataError, match="over max_record_bytes=100 bytes"):
        load_records(path, max_record_bytes=100)
    assert len(load_records(path, max_record_bytes=11 * 2**20)) == 2  # a raised cap reads it


def test_a_line_exactly_at_the_cap_is_read(tmp_path):
    line = '{"id": "a", "prompt": "1+1=", "reference": "2"}'
    path = write(tmp_path, line + "\n" + line + "\n")
    assert len(load_records(path, max_record_bytes=len(line))) == 2
    with pytest.raises(DataError, match=":1: the line is over"):
        load_records(path, max_record_bytes=len(line) - 1)


def test_records_say_where_they_were_read(tmp_path):
    path = write(tmp_path, '{"id": "a", "prompt": "1+1=", "reference": "2"}\n\n{"id": "b", "prompt": "x"}\n')
    assert [r.source for r in load_records(path)] == [f"{path}:1", f"{path}:3"]


@pytest.mark.parametrize("row", ['{"id": "b", "prompt": "2+2="}', '{"id": "b", "prompt": "2+2=", "reference": null}'])
def test_record_without_reference_is_refused_for_a_task_that_needs_one(tmp_path, row):
    path = write(tmp_path, '{"id": "a", "prompt": "1+1=", "reference": "2"}\n' + row + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'reference'"):
        Arithmetic(path=str(path))
    assert len(load_records(path)) == 2  # the generic reader leaves it to the task


@pytest.mark.parametrize("name, parts", [("gsm8k", ("gsm8k", "test.jsonl")), ("math", ("math", "math500.jsonl")),
                                         ("humaneval", ("humaneval", "HumanEval.jsonl")),
                                         ("mbpp", ("mbpp", "mbpp.jsonl")), ("stdio", ("apps", "selected150.jsonl"))])
def test_every_task_takes_the_reading_cap_and_the_verify_limit_and_says_where_records_are(name, parts):
    path = data_file(*parts)
    with pytest.raises(DataError, match=rf"^{path}:1: the line is over max_record_bytes=200 bytes"):
        load_task(name, path, max_record_bytes=200)
    task = load_task(name, path, verify_timeout_s=7)
    assert task.verify_timeout_s == 7.0 and task.records[0].source.startswith(f"{path}:")
    with pytest.raises(ValueError, match="verify_timeout_s must be > 0"):
        load_task(name, path, verify_timeout_s=0)
