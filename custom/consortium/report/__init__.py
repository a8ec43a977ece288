"""`consortium report RUN`: one page that answers "is the shared model better for my hospital?".

Reads a run folder (the run record `metrics.json` from the server workflow, see consortium.runrecord, and
optional baselines from `consortium baseline`) and writes `report/report.html` (self-contained, plots
embedded), `report/report.md` (plots next to it as PNG), and TensorBoard scalars under `report/tensorboard/`.

Modules: load (the run), tables and privacy (rows and text), sections (their order), plots and alone (PNG),
page (Markdown and HTML), write (the files, the end-of-job summary); `python -m consortium.report.png RUN`
screenshots the page in headless Chromium.
"""

from consortium.report.alone import alone_results, plot_shared_vs_alone
from consortium.report.load import ReportError, Run, load_run
from consortium.report.page import _html_table, _md_table, _section, html_page
from consortium.report.plots import _plt, plot_cross_site, plot_learning_curves, plot_privacy
from consortium.report.privacy import dp_line, privacy_by_round
from consortium.report.tables import answer_rows, availability_sections, comparison_rows, metadata_rows
from consortium.report.write import REPORT_DIR, print_job_summary, report_after_job, write_report, write_tensorboard

__all__ = [
    "REPORT_DIR",
    "ReportError",
    "Run",
    "_html_table",
    "_md_table",
    "_plt",
    "_section",
    "alone_results",
    "answer_rows",
    "availability_sections",
    "comparison_rows",
    "dp_line",
    "html_page",
    "load_run",
    "metadata_rows",
    "plot_cross_site",
    "plot_learning_curves",
    "plot_privacy",
    "plot_shared_vs_alone",
    "print_job_summary",
    "privacy_by_round",
    "report_after_job",
    "write_report",
    "write_tensorboard",
]
