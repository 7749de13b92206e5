"""Reading records: a bad row is an error naming the file and line."""

from __future__ import annotations

import pytest

from datamodules import DataError, load_records


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
