"""Reading a run folder: the HTML report, its figures, TensorBoard logs and live progress.

The modules, one concept each:

- ``cli``: `consortia report RUN_DIR`: the run's HTML report, its figures as PNG, the same data
  as JSON, and optionally TensorBoard event files.
- ``data``: What a run report says, as plain data: read from a run folder's `results.json` and
  `provenance.json` (and shared saliency maps), never from anything a site did not send.
- ``figures``: The report's figures, drawn with matplotlib (headless Agg canvas) from
  `report_data.build_report`'s data, one PNG per figure.
- ``mlflow_log``: MLflow tracking of a run from its folder: params, per-round and per-site
  metrics, the report.
- ``page``: The report as one self-contained HTML page (figures embedded as data URIs), rendered
  with Jinja2 (every value escaped) from `report_data.build_report`'s data.
- ``progress``: Live progress of a run on the console, read from the run folder's audit log
  (`audit.jsonl`), and its final tables, read from the typed run record.
- ``tensorboard_log``: TensorBoard event files from the `rounds[]` entries of results.json.
- ``writer``: A run's report written from its folder: `report.html`, `figures/*.png` and, when
  asked, `report.json` (`consortia report` and the demo call `write_report`).
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.server.report.data import (
        REPORT_SCHEMA as REPORT_SCHEMA,
    )
    from consortia.server.report.data import (
        ReportError as ReportError,
    )
    from consortia.server.report.data import (
        build_report as build_report,
    )
    from consortia.server.report.data import (
        distance_unit as distance_unit,
    )
    from consortia.server.report.data import (
        load_results as load_results,
    )
    from consortia.server.report.data import (
        metric_units as metric_units,
    )
    from consortia.server.report.data import (
        primary_metric as primary_metric,
    )
    from consortia.server.report.figures import (
        FIGURE_EPSILON as FIGURE_EPSILON,
    )
    from consortia.server.report.figures import (
        FIGURE_LEARNING_CURVES as FIGURE_LEARNING_CURVES,
    )
    from consortia.server.report.figures import (
        FIGURE_PARTICIPATION as FIGURE_PARTICIPATION,
    )
    from consortia.server.report.figures import (
        FIGURES_DIR as FIGURES_DIR,
    )
    from consortia.server.report.figures import (
        write_figures as write_figures,
    )
    from consortia.server.report.mlflow_log import (
        INSTALL_HINT as INSTALL_HINT,
    )
    from consortia.server.report.mlflow_log import (
        LOGGED_ROUND_TAG as LOGGED_ROUND_TAG,
    )
    from consortia.server.report.mlflow_log import (
        RUN_NAME_TAG as RUN_NAME_TAG,
    )
    from consortia.server.report.mlflow_log import (
        log_run as log_run,
    )
    from consortia.server.report.mlflow_log import (
        run_params as run_params,
    )
    from consortia.server.report.mlflow_log import (
        track_run as track_run,
    )
    from consortia.server.report.page import (
        render_html as render_html,
    )
    from consortia.server.report.progress import (
        RunProgress as RunProgress,
    )
    from consortia.server.report.progress import (
        final_table as final_table,
    )
    from consortia.server.report.progress import (
        follow_run as follow_run,
    )
    from consortia.server.report.progress import (
        headline_metric as headline_metric,
    )
    from consortia.server.report.progress import (
        privacy_table as privacy_table,
    )
    from consortia.server.report.progress import (
        watch_run as watch_run,
    )
    from consortia.server.report.tensorboard_log import (
        EVAL_PREFIX as EVAL_PREFIX,
    )
    from consortia.server.report.tensorboard_log import (
        EVENT_FILE_PATTERN as EVENT_FILE_PATTERN,
    )
    from consortia.server.report.tensorboard_log import (
        PRIVACY_PREFIX as PRIVACY_PREFIX,
    )
    from consortia.server.report.tensorboard_log import (
        ROUND_PREFIX as ROUND_PREFIX,
    )
    from consortia.server.report.tensorboard_log import (
        SETTINGS_TAG as SETTINGS_TAG,
    )
    from consortia.server.report.tensorboard_log import (
        SITE_SCOPE as SITE_SCOPE,
    )
    from consortia.server.report.tensorboard_log import (
        TENSORBOARD_DIR as TENSORBOARD_DIR,
    )
    from consortia.server.report.tensorboard_log import (
        TRAIN_PREFIX as TRAIN_PREFIX,
    )
    from consortia.server.report.tensorboard_log import (
        TensorBoardLog as TensorBoardLog,
    )
    from consortia.server.report.tensorboard_log import (
        export_run as export_run,
    )
    from consortia.server.report.tensorboard_log import (
        open_tensorboard as open_tensorboard,
    )
    from consortia.server.report.tensorboard_log import (
        round_scalars as round_scalars,
    )
    from consortia.server.report.writer import (
        REPORT_DIR as REPORT_DIR,
    )
    from consortia.server.report.writer import (
        REPORT_HTML as REPORT_HTML,
    )
    from consortia.server.report.writer import (
        REPORT_JSON as REPORT_JSON,
    )
    from consortia.server.report.writer import (
        write_report as write_report,
    )

__all__ = [
    "EVAL_PREFIX",
    "EVENT_FILE_PATTERN",
    "FIGURES_DIR",
    "FIGURE_EPSILON",
    "FIGURE_LEARNING_CURVES",
    "FIGURE_PARTICIPATION",
    "INSTALL_HINT",
    "LOGGED_ROUND_TAG",
    "PRIVACY_PREFIX",
    "REPORT_DIR",
    "REPORT_HTML",
    "REPORT_JSON",
    "REPORT_SCHEMA",
    "ROUND_PREFIX",
    "RUN_NAME_TAG",
    "SETTINGS_TAG",
    "SITE_SCOPE",
    "TENSORBOARD_DIR",
    "TRAIN_PREFIX",
    "ReportError",
    "RunProgress",
    "TensorBoardLog",
    "build_report",
    "distance_unit",
    "export_run",
    "final_table",
    "follow_run",
    "headline_metric",
    "load_results",
    "log_run",
    "metric_units",
    "open_tensorboard",
    "primary_metric",
    "privacy_table",
    "render_html",
    "round_scalars",
    "run_params",
    "track_run",
    "watch_run",
    "write_figures",
    "write_report",
]

_EXPORTS = {
    "EVAL_PREFIX": "tensorboard_log",
    "EVENT_FILE_PATTERN": "tensorboard_log",
    "FIGURES_DIR": "figures",
    "FIGURE_EPSILON": "figures",
    "FIGURE_LEARNING_CURVES": "figures",
    "FIGURE_PARTICIPATION": "figures",
    "INSTALL_HINT": "mlflow_log",
    "LOGGED_ROUND_TAG": "mlflow_log",
    "PRIVACY_PREFIX": "tensorboard_log",
    "REPORT_DIR": "writer",
    "REPORT_HTML": "writer",
    "REPORT_JSON": "writer",
    "REPORT_SCHEMA": "data",
    "ROUND_PREFIX": "tensorboard_log",
    "RUN_NAME_TAG": "mlflow_log",
    "ReportError": "data",
    "RunProgress": "progress",
    "SETTINGS_TAG": "tensorboard_log",
    "SITE_SCOPE": "tensorboard_log",
    "TENSORBOARD_DIR": "tensorboard_log",
    "TRAIN_PREFIX": "tensorboard_log",
    "TensorBoardLog": "tensorboard_log",
    "build_report": "data",
    "distance_unit": "data",
    "export_run": "tensorboard_log",
    "final_table": "progress",
    "follow_run": "progress",
    "headline_metric": "progress",
    "load_results": "data",
    "log_run": "mlflow_log",
    "metric_units": "data",
    "open_tensorboard": "tensorboard_log",
    "primary_metric": "data",
    "privacy_table": "progress",
    "render_html": "page",
    "round_scalars": "tensorboard_log",
    "run_params": "mlflow_log",
    "track_run": "mlflow_log",
    "watch_run": "progress",
    "write_figures": "figures",
    "write_report": "writer",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
