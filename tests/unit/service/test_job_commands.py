"""adapterctl's live view of a job: what each event prints."""

from service.client.job_commands import _LiveView


def test_the_live_view_shows_each_curriculum_stage_as_it_begins(capsys):
    view = _LiveView("job-1")  # numbers arrive as a Struct's floats
    view.show(3, "stage", {"stage": "format", "index": 1.0, "step": 5.0, "rows": 4.0,
                           "epochs": 2.0})  # fmt: skip
    view.close()
    assert capsys.readouterr().out == "[3] stage format from step 5: 4 rows, 2 epochs\n"
