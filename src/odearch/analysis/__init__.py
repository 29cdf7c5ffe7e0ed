"""Modified-equation analysis of the network schemes (paper, "Modified equations") and of trained LM-ResNets.

* :mod:`.modified_equation`: symbolic (sympy) modified equations of Runge-Kutta and linear multistep schemes,
  in the paper's derivative form and the classical backward-error form; :func:`truncation_order`.
* :mod:`.lm_table`: what each learned k_n means (effective step, damping, characteristic roots, zero-stability).
"""

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

__all__ = [
    "COLUMNS",
    "DT",
    "FORMS",
    "MAX_ORDER",
    "G",
    "K",
    "SymbolicMultistep",
    "T",
    "U",
    "analyze_model",
    "characteristic_roots",
    "classical_corrections",
    "format_table",
    "is_zero_stable",
    "k_by_stage_from_state_dict",
    "lm_multistep",
    "lm_row",
    "lm_table",
    "modified_equation",
    "stage_starts",
    "to_latex",
    "to_text",
    "truncation_order",
    "write_csv",
]
