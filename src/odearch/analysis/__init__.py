"""Modified-equation analysis of the network schemes (paper, "Modified equations") and of trained LM-ResNets.

* :mod:`.modified_equation`: symbolic (sympy) modified equations of Runge-Kutta and linear multistep schemes,
  in the paper's derivative form and the classical backward-error form; :func:`truncation_order`.
* :mod:`.lm_table`: what each learned k_n means (effective step, damping, characteristic roots, zero-stability).
* :mod:`.dense_table`: DenseResNet's learned weight matrix and each step's frozen multistep method (consistency,
  order, zero-stability).
* :mod:`.plots`: k_n against depth and over training epochs, dense weight matrices (PNG).
* :mod:`.command`: the ``odearch analyze`` subcommand (:func:`add_analyze_arguments`, :func:`run_analyze`).
"""

from .command import (
    AnalyzeError,
    RunSource,
    add_analyze_arguments,
    load_source,
    read_dense_k,
    read_lm_k,
    run_analyze,
    write_report,
)
from .dense_table import DENSE_COLUMNS, dense_table, weight_matrix, write_dense_report
from .lm_table import (
    COLUMNS,
    analyze_model,
    characteristic_roots,
    format_table,
    is_zero_stable,
    k_by_stage_from_state_dict,
    lm_row,
    lm_table,
    stage_starts,
    write_csv,
)
from .modified_equation import (
    DT,
    FORMS,
    MAX_ORDER,
    G,
    K,
    SymbolicMultistep,
    T,
    U,
    classical_corrections,
    lm_multistep,
    modified_equation,
    to_latex,
    to_text,
    truncation_order,
)
from .plots import k_history, plot_dense_weights, plot_k_over_epochs, plot_k_vs_depth

__all__ = [
    "COLUMNS",
    "DENSE_COLUMNS",
    "DT",
    "FORMS",
    "MAX_ORDER",
    "AnalyzeError",
    "G",
    "K",
    "RunSource",
    "SymbolicMultistep",
    "T",
    "U",
    "add_analyze_arguments",
    "analyze_model",
    "characteristic_roots",
    "classical_corrections",
    "dense_table",
    "format_table",
    "is_zero_stable",
    "k_by_stage_from_state_dict",
    "k_history",
    "lm_multistep",
    "lm_row",
    "lm_table",
    "load_source",
    "modified_equation",
    "plot_dense_weights",
    "plot_k_over_epochs",
    "plot_k_vs_depth",
    "read_dense_k",
    "read_lm_k",
    "run_analyze",
    "stage_starts",
    "to_latex",
    "to_text",
    "truncation_order",
    "weight_matrix",
    "write_csv",
    "write_dense_report",
    "write_report",
]
