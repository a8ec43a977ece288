"""`consortium report RUN`: one page that answers "is the shared model better for my hospital?".

Reads a run folder (`metrics.json` from the server workflow, optional baselines from `consortium baseline`)
and writes `report/report.html` (self-contained, plots embedded), `report/report.md` (plots next to it as
PNG), and TensorBoard scalars under `report/tensorboard/`.
"""

from consortium.report.plots import _plt
from consortium.report.run import REPORT_DIR, ReportError, Run, load_run
from consortium.report.tables import _html_table, _md_table, availability_sections
from consortium.report.write import html_page, print_job_summary, report_after_job, write_report

__all__ = [
    "REPORT_DIR", "ReportError", "Run", "load_run", "write_report", "print_job_summary", "report_after_job",
    "availability_sections", "html_page", "_html_table", "_md_table", "_plt",
]  # fmt: skip
