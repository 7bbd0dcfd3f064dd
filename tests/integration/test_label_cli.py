"""Human labeling's commands as processes: `instructgpt agreement` names a bad line, `instructgpt label` refuses a
public address, each in one line. The store and the app's events are tested without processes in
tests/unit/test_label.py."""

from __future__ import annotations

from helpers import python_m, run_cli


def test_the_agreement_command_names_the_bad_line(tmp_path):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"prompt": "q", "responses": ["a", "b"], "labeler_id": "x"}\n{"prompt": "q", "responses": ["a"]}\n')
    result = run_cli(python_m("instructgpt", "agreement", str(bad)))
    assert result.returncode == 2 and "r.jsonl: line 2: needs `responses`" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_label_command_refuses_a_public_address_in_one_line(tmp_path):
    result = run_cli(
        python_m(
            "instructgpt",
            "label",
            "recipes/tiny/label.yaml",
            "--server_name",
            "0.0.0.0",
            "--output_dir",
            str(tmp_path / "out"),
        ),
        env={"INSTRUCTGPT_LABEL_PASSWORD": ""},
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: recipes/tiny/label.yaml: `server_name` 0.0.0.0")
    assert not (tmp_path / "out").exists()  # refused before anything was written
