"""The task loader's allowlist, and the SSTI payloads a client might upload."""

import pytest
from jinja2 import UndefinedError

from eval.sandbox import UnsafeTemplateError, render
from eval.taskyaml import TaskYamlError, load_task_yaml

TASK = """
task: arith
dataset_path: json
doc_to_text: "Q: {{question}}\\nA:"
doc_to_target: "{{answer}}"
metric_list:
  - metric: exact_match
"""

# lm-eval 0.4.13's own lm_eval/tasks/gsm8k/gsm8k.yaml, with only dataset_path and
# dataset_kwargs.data_files changed: tag, dataset_name, num_fewshot, fewshot_split, metadata kept.
STOCK_GSM8K = r"""
tag:
  - math_word_problems
task: gsm8k
dataset_path: json
dataset_name: main
dataset_kwargs:
  data_files:
    train: train.jsonl
    test: test.jsonl
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{question}}\nAnswer:"
doc_to_target: "{{answer}}" #" {{answer.split('### ')[-1].rstrip()}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\$"
      - "(?s).*#### "
      - "\\.$"
generation_kwargs:
  until:
    - "Question:"
    - "</s>"
    - "<|im_end|>"
  do_sample: false
  temperature: 0.0
repeats: 1
num_fewshot: 5
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\-?[0-9\\.\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""

# Published Jinja SSTI payloads (PayloadsAllTheThings, HackTricks): attribute chains, escaped
# underscores, |attr, ~ concatenation, self, cycler, joiner, namespace, lipsum, config, and
# the sizes that exhaust memory inside the sandbox itself.
SSTI = [
    '{{ (cycler|attr("\\x5f\\x5finit\\x5f\\x5f")|attr("\\x5f\\x5fglobals\\x5f\\x5f"))["os"]'
    '.popen("touch {marker}").read() }}',
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').popen('touch {marker}') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ namespace.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch {marker}').read() }}",
    "{{ config.__class__.__init__.__globals__['os'].popen('touch {marker}') }}",
    "{{ question[('_'~'_'~'class'~'_'~'_')][('_'~'_'~'mro'~'_'~'_')] }}",
    "{{ question|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ request|attr('application')|attr('\\x5f\\x5fglobals\\x5f\\x5f') }}",
    "{% set x = question.__class__ %}{{ x }}",
    "{{ 'x' * 10 ** 10 }}",
    "{{ 'x'.ljust(10 ** 9) }}",
    "{{ '%999999999s' % 'x' }}",
    "{{ '{:>999999999}'.format('x') }}",
    "{% for i in range(99999) %}{% for j in range(99999) %}xx{% endfor %}{% endfor %}",
    "{% for a in question %}{% for b in question %}{% for c in question %}"
    "{% endfor %}{% endfor %}{% endfor %}",
]


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


def test_lm_evals_stock_gsm8k_yaml_loads_with_its_keys_kept(root):
    task = load_task_yaml(write(root, "gsm8k.yaml", STOCK_GSM8K), root)
    assert task["tag"] == ["math_word_problems"] and task["dataset_name"] == "main"
    assert (task["num_fewshot"], task["fewshot_split"]) == (5, "train")
    assert task["metadata"] == {"version": 3.0}
    assert task["filter_list"][1]["filter"][0] == {
        "function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("task: x\nprocess_docs: !function utils.process_docs\n", "tag '!function' is not allowed"),
        ("task: x\nvalue: !!python/object:os.system {}\n", "is not allowed"),
        ("task: x\nclass: my.Task\n", "class: unknown field"),
        ("task: x\nprocess_results: f\n", "process_results: unknown field"),
        ("task: x\nunsafe_code: true\n", "unsafe_code: unknown field"),
        ("task: x\nmetric_list:\n  - metric: acc\n    process_results: f\n",
         "metric_list.0.process_results"),
        ("task: x\nmetric_list:\n  - metric: acc\n    hf_evaluate: true\n",
         "metric_list.0.hf_evaluate"),
        ("task: x\nmetric_list:\n  - metric: ./my_metric.py\n",
         "'./my_metric.py' is not a metric of lm-eval's registry"),
        ("task: x\nmetric_list:\n  - metric: acc\n    aggregation: os.system\n",
         "'os.system' is not an aggregation"),
        ("task: x\nfilter_list:\n  - name: f\n    filter:\n      - function: custom\n",
         "metric_list|filter_list.0.filter.0.function"),
        ("task: x\nfilter_list:\n  - name: f\n    filter:\n      - function: decontaminate\n",
         "filter_list.0.filter.0.function"),
        ("task: x\ndataset_kwargs:\n  data_files: a.jsonl\n  trust_remote_code: true\n",
         "dataset_kwargs.trust_remote_code"),
        ("task: x\nrepeats: 1000\n", "repeats = 1000"),
        ("task: x\nnum_fewshot: 1000\n", "num_fewshot = 1000"),
        ("task: x\ngeneration_kwargs:\n  max_gen_toks: 100000\n", "generation_kwargs.max_gen_toks"),
        ("task: x\nfilter_list:\n  - name: f\n    filter:\n      - function: regex\n"
         "        regex_pattern: '(a)\\1'\n", "is not a linear-time \\(RE2\\) pattern"),
        ("task: x\ndoc_to_text: \"{{ ''.__class__ }}\"\n",
         "doc_to_text = .*the attribute '__class__' is not allowed"),
        ("task: x\ndoc_to_text: '{{ unclosed'\n", "doc_to_text = .*not a valid template"),
        ("task: x\ninclude: /etc/passwd\n", "is absolute"),
        ("task: x\ninclude: ../outside.yaml\n", "contains '..'"),
        ("- just\n- a list\n", "must be a YAML mapping"),
        ("task: [unclosed\n", "not a readable YAML file"),
        ("task: " + "[" * 20_000 + "]" * 20_000 + "\n", "nested too deep|not a readable"),
        ("task: " + "x" * 300_000 + "\n", "larger than 262144 bytes"),
    ],
)  # fmt: skip
def test_tasks_that_could_run_code_or_escape_are_refused_naming_file_and_key(root, text, message):
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


@pytest.mark.parametrize("payload", SSTI)
def test_ssti_payloads_are_refused_by_the_loader_and_by_rendering_and_none_runs(
    root, tmp_path, payload
):
    marker = tmp_path / "pwned"
    template = payload.replace("{marker}", str(marker))
    quoted = template.replace("'", "''")
    path = write(root, "task.yaml", f"task: x\ndoc_to_text: '{quoted}'\n")
    # The loader refuses it, naming the file and the key; or, where the loader cannot tell,
    # rendering refuses it or renders text that reached no Python internals.
    try:
        load_task_yaml(path, root)
    except TaskYamlError as exc:
        assert str(exc).startswith("task.yaml: doc_to_text = ")
    with pytest.raises((UnsafeTemplateError, UndefinedError)):
        render(template, {"question": "What is 2+2?"})
    assert not marker.exists()


def test_the_sandbox_still_renders_what_real_tasks_need():
    doc = {"question": "2+2?", "answer": "It is 4.\n#### 4", "choices": ["3", "4"]}
    assert render("Question: {{question}}\nAnswer:", doc) == "Question: 2+2?\nAnswer:"
    assert render("{{answer.split('#### ')[-1]}}", doc) == "4"
    assert render("{{choices}}", doc) == "['3', '4']"
    assert render("{% for c in choices %}{{ loop.index }}. {{ c }} {% endfor %}", doc) == (
        "1. 3 2. 4 "
    )
    assert render("{{ answer|regex_replace('#+ ', '') }}", doc) == "It is 4.\n4"
    # Long numbers in the data and '%' in text are no format widths.
    big = {"answer": "1234567 + 1 = 1234568\n#### 1234568"}
    assert render("{{ answer.split('#### ')[-1] }}", big) == "1234568"
    assert render("{{ '%d%% of 1234567' % 5 }}", big) == "5% of 1234567"
    assert render("{{ 'Total 1234567: {}'.format(3) }}", big) == "Total 1234567: 3"


def test_a_redos_pattern_in_regex_replace_runs_in_re2():
    # Python's re takes 3.5 s at 26 characters for this pattern, doubling with each one: at
    # 60 it would not finish in this suite's lifetime (and pytest-timeout would fail it).
    template = "{{ t|regex_replace('^(?:(x+x+)+y|x+)$', 'ok') }}"
    assert render(template, {"t": "x" * 60}) == "ok"
