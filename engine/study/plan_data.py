"""Data jobs of a plan: synthetic data (demo), the cohort, its subsets and cache, pre-training pools and their
per-dataset caches. Paths under ``work_dir``: synthetic/, cohort/, cache/, pools/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError
from engine.study.config import Study
from engine.study.jobs import Job

# synthetic studies: the stand-in weights of the ResNet slots (`synth weights`, engine/models/demo_weights.py)
DEMO_WEIGHTS = {name: "{work}/weights/" + f"{name}-demo-random-resnetv2_50x1_bit.npz" for name in ("bit", "remedis")}


@dataclass(frozen=True)
class DataLayout:
    work: Path
    chexpert_train_csv: str
    chexpert_valid_csv: str | None
    chexpert_demographics: str
    chexpert_root: str
    chexpert_split: str | None
    nih_data_entry: str | None
    nih_root: str | None
    nih_train_val_list: str | None
    synthetic: bool

    @classmethod
    def of(cls, study: Study) -> DataLayout:
        work = Path(study.work_dir)
        if study.synthetic is not None:
            chexpert, nih = work / "synthetic" / "chexpert", work / "synthetic" / "nih"
            small = chexpert / "CheXpert-v1.0-small"
            return cls(work, str(small / "train.csv"), str(small / "valid.csv"), str(chexpert / "CHEXPERT DEMO.xlsx"),
                       str(small), str(chexpert / "chexpert_split.csv"), str(nih / "Data_Entry_2017_v2020.csv"),
                       str(nih), str(nih / "train_val_list.txt"), True)
        p = study.paths
        for key in ("chexpert_train_csv", "chexpert_demographics", "chexpert_root"):
            if getattr(p, key) is None:
                raise ConfigError("required unless 'synthetic' is set", key=f"paths.{key}")
        return cls(work, p.chexpert_train_csv, p.chexpert_valid_csv, p.chexpert_demographics, p.chexpert_root,
                   p.chexpert_split, p.nih_data_entry, p.nih_root, p.nih_train_val_list, False)

    @property
    def cohort(self) -> str:
        return str(self.work / "cohort" / "cohort.parquet")

    @property
    def subsets(self) -> str:
        return str(self.work / "cohort" / "subsets.parquet")

    @property
    def cohort_cache(self) -> str:
        return str(self.work / "cache" / "cohort")

    cohort_cache_job = "cache-cohort"


def data_jobs(study: Study, layout: DataLayout) -> list[Job]:
    """synth (demo) -> prepare -> subsets -> cache of the fine-tuning cohort."""
    jobs: list[Job] = []
    deps: tuple[str, ...] = ()
    if study.synthetic is not None:
        s = study.synthetic
        out = str(Path(layout.chexpert_root).parent)
        jobs.append(Job("synth-chexpert", "synth", ["synth", "chexpert", "--out", out, "--patients",
                                                    str(s.chexpert_patients), "--seed", str(s.seed), "--force"]))
        deps = ("synth-chexpert",)
        jobs.append(Job("synth-weights", "synth", ["synth", "weights", "--out", str(layout.work / "weights"),
                                                   "--seed", str(s.seed)]))
    argv = ["prepare", "chexpert", "--train-csv", layout.chexpert_train_csv, "--demographics",
            layout.chexpert_demographics, "--out", layout.cohort, "--force"]
    argv += ["--valid-csv", layout.chexpert_valid_csv] if layout.chexpert_valid_csv else []
    argv += ["--split", layout.chexpert_split] if layout.chexpert_split else []
    jobs.append(Job("prepare-cohort", "prepare", argv, deps))
    jobs.append(Job("subsets", "subsets", ["subsets", "--cohort", layout.cohort, "--seed",
                                           str(study.cohort.subsets_seed), "--force"], ("prepare-cohort",)))
    jobs.append(Job(layout.cohort_cache_job, "cache", _cache_argv(study, layout.cohort, layout.chexpert_root,
                                                                  layout.cohort_cache), ("prepare-cohort",)))
    return jobs


def _cache_argv(study: Study, table: str, root: str, out: str, dataset: str | None = None) -> list[str]:
    argv = ["cache", "--table", table, "--image-root", root, "--out", out, "--size", str(study.cohort.cache_size),
            "--no-progress"]
    argv += ["--workers", str(study.cohort.workers)] if study.cohort.workers else []
    return argv + (["--dataset", dataset] if dataset else [])


def _nih_jobs(study: Study, layout: DataLayout) -> list[Job]:
    if layout.nih_data_entry is None or layout.nih_root is None:
        raise ConfigError("a pool uses nih: set paths.nih_data_entry and paths.nih_root", key="paths.nih_data_entry")
    jobs, deps = [], ()
    if study.synthetic is not None:
        jobs.append(Job("synth-nih", "synth", ["synth", "nih", "--out", layout.nih_root, "--images",
                                               str(study.synthetic.nih_images), "--seed", str(study.synthetic.seed),
                                               "--force"]))
        deps = ("synth-nih",)
    table = str(layout.work / "pools" / "nih.parquet")
    argv = ["prepare", "nih", "--data-entry", layout.nih_data_entry, "--out", table, "--force"]
    argv += ["--train-val-list", layout.nih_train_val_list] if layout.nih_train_val_list else []
    return [*jobs, Job("prepare-nih", "prepare", argv, deps)]


def _pool_argv(layout: DataLayout, sources: tuple[str, ...], out: Path) -> tuple[list[str], tuple[str, ...]]:
    argv, deps = ["prepare", "pool", "--out", str(out), "--force"], []
    if "nih" in sources:
        argv += ["--source", str(layout.work / "pools" / "nih.parquet")]
        # NIH's official test images stay out of pre-training (the list marks them; docs/reproduce.md)
        argv += ["--keep-split", "nih=train_val"] if layout.nih_train_val_list else []
        deps.append("prepare-nih")
    if "chexpert" in sources:
        argv += ["--chexpert-train-csv", layout.chexpert_train_csv, "--chexpert-demographics",
                 layout.chexpert_demographics]
        deps += ["synth-chexpert"] if layout.synthetic else []
    return argv, tuple(deps)


def pool_jobs(study: Study, layout: DataLayout, spec) -> tuple[Job, dict[str, tuple[str, str]]]:
    """The pool of one pre-training job and {dataset: (cache folder, cache job)} of its datasets.

    Every pool's images come from one cache per dataset, built from the union of every pool's sources at fraction
    1 (``pools/all``), so pools that differ only in fraction or exclusions share their caches.
    """
    pool = spec.pool
    out = layout.work / "pools" / spec.name / "pool.parquet"
    argv, deps = _pool_argv(layout, pool.sources, out)
    argv += ["--fraction", str(pool.fraction), "--fraction-unit", pool.fraction_unit, "--seed", str(pool.seed)]
    argv += ["--include-laterals"] if pool.include_laterals else []
    argv += ["--cohort", layout.cohort, "--exclude-eval-patients"] if pool.exclude_eval_patients else []
    deps += ("prepare-cohort",) if pool.exclude_eval_patients else ()
    roots = {"nih": layout.nih_root, "chexpert": layout.chexpert_root}
    caches = {dataset: (str(layout.work / "cache" / f"pool-{dataset}"), f"cache-pool-{dataset}")
              for dataset in pool.sources}
    return Job(f"pool-{spec.name}", "pool", argv, deps), {d: (path, job) for d, (path, job) in caches.items()
                                                            if roots[d] is not None}


def shared_pool_jobs(study: Study, layout: DataLayout) -> list[Job]:
    """NIH table, the union pool of every source any pre-training uses, and one cache per dataset of it."""
    sources = tuple(sorted({s for spec in study.pretrain for s in spec.pool.sources}))
    if not sources:
        return []
    jobs = _nih_jobs(study, layout) if "nih" in sources else []
    union = layout.work / "pools" / "all" / "pool.parquet"
    argv, deps = _pool_argv(layout, sources, union)
    if any(spec.pool.include_laterals for spec in study.pretrain):
        argv.append("--include-laterals")
    jobs.append(Job("pool-all", "pool", argv, deps))
    roots = {"nih": layout.nih_root, "chexpert": layout.chexpert_root}
    for dataset in sources:
        jobs.append(Job(f"cache-pool-{dataset}", "cache",
                        _cache_argv(study, str(union), roots[dataset], str(layout.work / "cache" / f"pool-{dataset}"),
                                    dataset), ("pool-all",)))
    return jobs
