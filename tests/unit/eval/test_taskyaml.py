import pytest

from eval.taskyaml import TaskYamlError, load_task_yaml

TASK = """
task: arith
dataset_path: json
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
metric_list:
  - metric: exact_match
"""


@pytest.fixture
def root(tmp_path):
    (tmp_path / "tasks").mkdir()
    return tmp_path / "tasks"


def write(root, name, text):
    path = root / name
    path.write_text(text)
    return path


def test_a_plain_task_loads_and_an_include_merges_under_it(root):
    write(root, "base.yaml", TASK)
    child = write(root, "child.yaml", "include: base.yaml\ntask: arith-child\n")
    task = load_task_yaml(child, root)
    assert task["task"] == "arith-child"
    assert task["metric_list"] == [{"metric": "exact_match"}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: x\nprocess_docs: !function utils.process_docs\n", "tag '!function' is not allowed"),
        ("task: x\nvalue: !!python/object:os.system {}\n", "is not allowed"),
        ("task: x\nclass: my.Task\n", "class: custom code is not allowed"),
        ("task: x\nmetric_list:\n  - metric: acc\n    process_results: f\n", "custom code"),
        ("task: x\ndoc_to_text: \"{{ ''.__class__ }}\"\n", "'__' is not allowed"),
        ("task: x\ninclude: /etc/passwd\n", "is absolute"),
        ("task: x\ninclude: ../outside.yaml\n", "contains '..'"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("task: [unclosed\n", "not a readable YAML file"),
    ],
)
def test_uploaded_tasks_that_could_run_code_or_escape_are_refused(root, text, message):
    path = write(root, "task.yaml", text)
    with pytest.raises(TaskYamlError, match=message) as caught:
        load_task_yaml(path, root)
    assert str(caught.value).startswith("task.yaml: ")


def test_an_include_through_a_symlink_out_of_the_directory_is_refused(root, tmp_path):
    (tmp_path / "secret.yaml").write_text(TASK)
    (root / "link.yaml").symlink_to(tmp_path / "secret.yaml")
    path = write(root, "task.yaml", "include: link.yaml\n")
    with pytest.raises(TaskYamlError, match="leads outside"):
        load_task_yaml(path, root)
