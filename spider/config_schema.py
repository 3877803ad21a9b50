"""The schemas of the fit configuration: types only (values live in the YAML files of ``configs/``).

:mod:`spider.config` composes and checks a configuration against these dataclasses and re-exports
them; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from omegaconf import MISSING

from spider.datamodules.tasks import TaskConfig

GROUPS = ("data", "model", "trainer", "logger")
# DataConfig fields that define the labels of the task bank (with the store's contents): runs
# that agree on them share one label cache, and a fit reuses a zoo's cache when they equal the
# zoo's. (``num_label_tasks`` is not one: a cache grows, keeping its first tasks.)
LABEL_FIELDS = ("general", "models", "pool_datasets", "split", "task", "seed", "baselines", "aggregator",
                "shard_size")
LOGGERS = ("wandb", "csv", "none")
# Lightning's accepted ``Trainer(precision=...)`` values (its ``_PRECISION_INPUT``), as strings.
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "64", "32", "16", "bf16")


# Schemas give types only: every value lives in the YAML files under ``configs/`` (shipped inside
# the package as ``spider/configs``). A field has a default here only where that default means
# "not set" (None, an empty list or mapping); ``tests/unit/test_config.py`` checks that no YAML file
# disagrees with one, and :func:`compose` rejects a composition that leaves a field unset.


@dataclass
class SyntheticConfig:
    """Generated demo zoo (:func:`spider.synthetic.make_synthetic_zoo`; field names are the
    generator's); never a benchmark. ``targets`` are test targets, ``val_targets`` validation
    targets (classes of their own, disjoint from the pool and the test targets)."""

    num_models: int = MISSING
    pool_datasets: int = MISSING
    classes_per_pool: int = MISSING
    targets: int = MISSING
    val_targets: int = MISSING
    classes_per_target: int = MISSING
    samples_per_class: int = MISSING
    general_dim: int = MISSING
    model_dims: list[int] = MISSING
    latent_dim: int = MISSING
    num_factors: int = MISSING
    source_classes: int = MISSING
    gt_noise: float = MISSING
    seed: int = MISSING


@dataclass
class DataConfig:
    """Where features, labels and ground truth live and how tasks are drawn.

    Field names are the arguments of :class:`spider.datamodules.episodes.EpisodeDataModule`
    (plus ``name``, ``zoo``, ``zoo_dir``, ``cache_dir`` and ``synthetic``, used by :mod:`spider.fit`).
    """

    name: str = MISSING
    # Zoo recipe of ``spider zoo build`` (e.g. "minizoo"): the CLI first builds what is missing,
    # then takes the store, ground truth, PTMs, pool, val and test targets from the zoo (and
    # starts from its label cache when the task settings below match the recipe's). null -> ``store``.
    zoo: Optional[str] = None
    # Output folder of that build; null -> ``artifacts/<zoo>`` (the build's default).
    zoo_dir: Optional[str] = None
    # Feature store root (``spider.store`` layout); null -> the zoo's, else the synthetic store.
    store: Optional[str] = None
    # Folder for the label cache and a generated store; null -> ``<run_dir>/cache``.
    cache_dir: Optional[str] = None
    # Label cache folder; null -> ``<cache_dir>/labels-<hash of the settings that define labels>``.
    label_cache: Optional[str] = None
    # CSV ``dataset,model,accuracy`` of the val and test targets; null -> the zoo's CSV.
    ground_truth: Optional[str] = None
    general: str = MISSING
    # PTM ids ranked by the scorer; null -> every model of the store except ``general``.
    models: Optional[list[str]] = None
    # Datasets that training tasks are drawn from; null -> every dataset that is not a target.
    pool_datasets: Optional[list[str]] = None
    # Validation targets (every decision: val/* metrics each epoch, checkpoint choice, sweeps);
    # null -> the zoo's. [] -> no validation (val/* metrics are skipped with a warning).
    val_datasets: Optional[list[str]] = None
    # Test targets (test/* metrics, computed once at the end, never used to decide anything);
    # null -> the zoo's, or every dataset of the ground-truth CSV that is not a val dataset.
    test_datasets: Optional[list[str]] = None
    split: str = MISSING
    target_split: str = MISSING
    # Task sizes (:class:`spider.datamodules.tasks.TaskConfig`; paper: 2-4 datasets, up to 100
    # classes, up to 50 samples per class).
    task: TaskConfig = MISSING
    # Size of the bank of labelled training tasks (the label cache) ...
    num_label_tasks: int = MISSING
    # ... of which this many are drawn per epoch (a function of seed and epoch); null -> the bank.
    tasks_per_epoch: Optional[int] = None
    # Evaluation tasks drawn per target dataset (0 -> the whole target dataset as one task).
    val_tasks_per_target: int = MISSING
    baselines: list[str] = MISSING
    aggregator: str = MISSING
    batch_size: int = MISSING
    val_batch_size: Optional[int] = None
    # PTMs per task that get PTM-specific tokens (re-ranker training); 0 -> none.
    specific_models: int = MISSING
    # In (0, 1]: each training episode's task tokens are the centres of a random subset of at least
    # this fraction of its task's classes (labels unchanged); 1 -> every class, as in the paper.
    class_keep: float = MISSING
    # n > 0: every validation target (whole, its ground truth as labels) is also a training task, n
    # copies each; the validation targets then judge nothing (no val/* metrics). The last step once
    # they have decided every setting (spider.datamodules.label_sources.plus_targets).
    val_targets_as_tasks: int = MISSING
    num_workers: int = MISSING
    # Parallel processes building the label cache.
    label_workers: int = MISSING
    shard_size: int = MISSING
    # Where label baselines compute (null = CPU; e.g. "cuda").
    label_device: Optional[str] = None
    # Training labels (spider.datamodules.label_sources): copeland (paper), finetune (the zoo's
    # fine-tuning bank only), finetune_nll (the same runs' test cross-entropy), mixed (bank where
    # present, Copeland elsewhere), selected (Copeland of the baselines that agree with the bank on
    # pool tasks).
    label_source: str = MISSING
    # Fine-tuning bank folder (spider.pipeline.bank); null -> the zoo's (none for a plain store).
    finetune_bank: Optional[str] = None
    # mixed: each fine-tuned task is drawn this many times as often as a Copeland task.
    mixed_weight: int = MISSING
    # selected: how many of the best-agreeing baselines are aggregated.
    selected_members: int = MISSING
    # Static prior (spider.priors) the trained scorer's rankings are shrunk towards, never trained
    # with: (1 - w) z(scores) + w z(prior), w = rank_prior_weight in [0, 1); null -> none.
    rank_prior: Optional[str] = None
    rank_prior_weight: float = MISSING
    # The weight a seed ensemble of these scorers ranks with (`spider rank` with several
    # checkpoints): averaging seeds removes part of the variance the prior shrinks; null -> rank_prior_weight.
    ensemble_rank_prior_weight: Optional[float] = None
    # The scorer's model tokens start from the fine-tuning bank (spider.priors.history_embedding),
    # scaled to this standard deviation, instead of at random (std 0.02); null -> random.
    history_tokens: Optional[float] = None
    seed: int = MISSING
    # Generated demo zoo, used when ``store`` and ``zoo`` are null; null -> none.
    synthetic: Optional[SyntheticConfig] = None


@dataclass
class ModelConfig:
    """The scorer (a name in :func:`spider.modules.list_scorers`) and its optimisation.

    Field names are the scorer's constructor arguments (``TokenScorer``/``ReRanker``); a field
    the chosen scorer does not take must stay null (else a ConfigError).
    """

    name: str = MISSING
    scorer: str = MISSING
    dim: int = MISSING
    depth: int = MISSING
    heads: int = MISSING
    mlp_ratio: float = MISSING
    dropout: float = MISSING
    attn_dropout: float = MISSING
    norm_first: bool = MISSING
    head_hidden: Optional[int] = None
    loss: str = MISSING
    loss_options: dict[str, Any] = field(default_factory=dict)
    lr: float = MISSING
    weight_decay: float = MISSING
    scheduler: str = MISSING
    warmup_steps: int = MISSING
    # Static prior added to every score (spider.priors: finetune_mean, label_mean, param_count);
    # null -> none. Its weight is learned, starting at prior_scale.
    prior: Optional[str] = None
    prior_scale: float = MISSING
    # Re-ranker only: PTM-specific tokens "replace" or are appended to ("append") the general ones.
    specific_mode: Optional[str] = None
    # Re-ranker only: how many top PTMs the results table re-scores with specific tokens.
    rerank_topk: Optional[int] = None
    # Re-ranker only: weight w in [0, 1] of the specific score fused with the coarse one.
    rerank_weight: Optional[float] = None


@dataclass
class TrainerConfig:
    """Arguments of :class:`lightning.Trainer` (same names)."""

    name: str = MISSING
    max_epochs: int = MISSING
    accelerator: str = MISSING
    devices: Union[int, str] = MISSING
    strategy: str = MISSING
    num_nodes: int = MISSING
    precision: str = MISSING
    log_every_n_steps: int = MISSING
    deterministic: bool = MISSING
    gradient_clip_val: Optional[float] = None
    check_val_every_n_epoch: int = MISSING
    num_sanity_val_steps: int = MISSING
    enable_progress_bar: bool = MISSING
    # torch CPU threads per process (torch.set_num_threads); null = torch's default. Episodes
    # are small tensors: on CPU, thread synchronisation can cost more than it saves.
    threads: Optional[int] = None


@dataclass
class LoggerConfig:
    """Experiment logging: ``wandb`` (offline by default), ``csv`` or ``none``."""

    name: str = MISSING
    project: str = MISSING
    # W&B only: true -> offline run files in ``<run_dir>/wandb`` (``wandb sync`` them later).
    offline: Optional[bool] = None
    entity: Optional[str] = None
    run_name: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class FitConfig:
    """Everything ``spider fit`` needs; see the module docstring for overrides."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Python modules imported first, so the scorers, losses and baselines they register can be
    # named below (e.g. ``imports=[my_project.scorers] model.scorer=my_scorer``).
    imports: list[str] = field(default_factory=list)
    # Checkpoints (``checkpoints/last.ckpt``), resolved ``config.yaml``, ``metrics.json``, logs.
    run_dir: str = MISSING
    seed: int = MISSING
    # Continue from ``<run_dir>/checkpoints/last.ckpt`` (optimizer, epoch and sampler state).
    resume: bool = MISSING
    # Start again in a run_dir that already holds checkpoints (they are deleted first).
    overwrite: bool = MISSING
    print_config: bool = MISSING
    # Skip training: evaluate this checkpoint with the configured trainer and write metrics.
    validate_checkpoint: Optional[str] = None
    # After training, compute the per-target results tables (scorer, baselines, aggregate).
    results_table: bool = MISSING
