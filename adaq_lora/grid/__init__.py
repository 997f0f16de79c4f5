"""The paper's grid and its report (Sec. 3; book chapters 7 and 8): one cell run and recorded (`experiment`),
Tables 1-2 regenerated beside the published rows (`tables`), the paper's claims judged (`claims`), what a test set of
its size can resolve (`power`), and the `adaq-lora` command line (`cli`)."""
from .experiment import plan_experiment, run_experiment
from .tables import build_tables, collect_results

__all__ = ["build_tables", "collect_results", "plan_experiment", "run_experiment"]
