"""``vqa ablate``: test the textbook claims about hard and soft attention with numbers.

| aspect           | hard (claimed)                                | soft (claimed)                |
|------------------|-----------------------------------------------|-------------------------------|
| training         | non-differentiable, REINFORCE, high variance  | differentiable, smooth        |
| compute          | lower, looks at key inputs only               | higher, processes every input |
| interpretability | high, clear focus points                      | moderate, diffuse weights     |
| accuracy         | lower, less stable                            | higher, more stable           |

Hybrid (hard top-k, then softmax weights over the k) is meant to get the best of both.
:func:`run_ablation` trains every (mode, k, estimator, seed) of a grid on the same data (hard and
hybrid optionally crossed with selections inside the vision encoder: ``select_after``,
``encoder_k``, ``encoder_rule``; and with adaptive k: ``k_rule``, ``top_p``, ``k_penalty``,
``k_max``), measures each run and writes::

    OUT/
      ablation.json          the settings that a --resume must match, and the machine
      results.csv            one row per finished run, rewritten atomically after each run
      runs/<name>/           each run's model, metrics.json, checkpoint, regions_used.json
      table.md               mean ± standard deviation over seeds per configuration
      report.md              each claim, the tests of it (Welch's t-test), and a verdict
      accuracy_vs_k.png  accuracy_vs_mean_k.png  accuracy_vs_flops.png  training_curves.png
      pointing.png  attention_gallery.png

Modules: ``run`` (the grid and the loop), ``probes`` (FLOPs, gradient noise, blind baseline),
``statistics`` (results.csv, aggregation, the tests), ``claims`` (what each claim implies and
the comparisons that test it), ``report`` (table.md, report.md) and ``plots``. torch,
matplotlib, scipy and the training stack are imported inside functions, so that ``vqa --help``
stays fast.
"""

from vqa.ablation.claims import CLAIMS, Comparison, verdict
from vqa.ablation.plots import (
    plot_accuracy_vs_flops,
    plot_accuracy_vs_k,
    plot_accuracy_vs_mean_k,
    plot_attention_gallery,
    plot_pointing,
    plot_training_curves,
)
from vqa.ablation.probes import blind_accuracy, count_flops, score_gradient_noise
from vqa.ablation.report import DEFINITIONS, summarise, write_report
from vqa.ablation.run import (
    DEFAULT_GRID,
    PLOT_FILES,
    REGIONS_FILE,
    REPORT_FILE,
    RESULTS_FILE,
    RUNS_DIR,
    SETTINGS_FILE,
    TABLE_FILE,
    AblationArguments,
    RunSpec,
    grid,
    run_ablation,
)
from vqa.ablation.statistics import (
    Difference,
    aggregate,
    append_result,
    read_results,
    variance_test,
    welch_test,
)

__all__ = [
    "CLAIMS",
    "DEFAULT_GRID",
    "DEFINITIONS",
    "PLOT_FILES",
    "REGIONS_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "RUNS_DIR",
    "SETTINGS_FILE",
    "TABLE_FILE",
    "AblationArguments",
    "Comparison",
    "Difference",
    "RunSpec",
    "aggregate",
    "append_result",
    "blind_accuracy",
    "count_flops",
    "grid",
    "plot_accuracy_vs_flops",
    "plot_accuracy_vs_k",
    "plot_accuracy_vs_mean_k",
    "plot_attention_gallery",
    "plot_pointing",
    "plot_training_curves",
    "read_results",
    "run_ablation",
    "score_gradient_noise",
    "summarise",
    "variance_test",
    "verdict",
    "welch_test",
    "write_report",
]
