"""A study config -> the plan: jobs with dependencies (synth/prepare -> subsets -> cache -> pool -> pretrain ->
finetune -> predict -> report), each one ``run_experiments.py`` command, resolved and validated before any compute."""

from __future__ import annotations

from pathlib import Path

from engine.config import ConfigError, apply_overrides, from_dict, to_dict
from engine.pretrain_config import PretrainConfig, resolve_pretrain
from engine.recipes import FinetuneConfig, check_policies, resolve_recipe
from engine.study.config import Study, check_study
from engine.study.estimates import estimate
from engine.study.jobs import Job, assign_hashes, config_path, topological
from engine.study.plan_data import DEMO_WEIGHTS, DataLayout, data_jobs, pool_jobs, shared_pool_jobs


def build_plan(study: Study) -> list[Job]:
    """Every job of ``study`` in dependency order, with hashes and estimates; ConfigError naming the key otherwise."""
    check_study(study)
    layout = DataLayout.of(study)
    jobs = data_jobs(study, layout) + shared_pool_jobs(study, layout)
    pretrained: dict[str, str] = {}
    for i, spec in enumerate(study.pretrain):
        pool_job, caches = pool_jobs(study, layout, spec)
        jobs.append(pool_job)
        job = _pretrain_job(study, spec, i, pool_job, caches)
        jobs.append(job)
        pretrained[spec.name] = job.name
    runs = []
    for i, spec in enumerate(study.finetune):
        for seed in study.seeds:
            for balancing in spec.balancing:
                for mode in spec.modes:
                    jobs.extend(_finetune_jobs(study, layout, spec, i, seed, balancing, mode, pretrained))
                    runs.append(jobs[-1].name)
    jobs.append(_report_job(study, runs))
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"two entries produce the same job(s) {', '.join(duplicates)}; give them different names, "
                          "balancing or modes", key="finetune")
    ordered = topological(jobs)
    assign_hashes(ordered)
    for job in ordered:
        job.images, job.gpu_hours = estimate(job, study)
    return ordered


def _pretrain_job(study: Study, spec, index: int, pool_job: Job, caches: dict[str, tuple[str, str]]) -> Job:
    out = Path(study.work_dir) / "pretrain" / spec.name
    base = {"run_id": spec.name, "method": spec.method, "out_dir": str(out),
            "data": {"pool": pool_job.argv[pool_job.argv.index("--out") + 1],
                     "caches": {dataset: path for dataset, (path, _) in caches.items()}},
            "tags": {"data": spec.data_label, "domain": spec.domain}}
    config = _resolved(PretrainConfig, base, study.pretrain_defaults, spec.overrides,
                       f"pretrain[{index}] ({spec.name})")
    name = f"pretrain-{spec.name}"
    deps = (pool_job.name, *(job for _, job in caches.values()))
    return Job(name, "pretrain", ["pretrain", str(config_path(study.work_dir, name))], deps, config, str(out))


def _checkpoint(study: Study, spec, pretrained: dict[str, str]) -> tuple[str | None, tuple[str, ...]]:
    if spec.pretrained is not None:
        return str(Path(study.work_dir) / "pretrain" / spec.pretrained / "encoder.pth"), (pretrained[spec.pretrained],)
    if spec.model not in study.paths.checkpoints and study.synthetic is not None and spec.model in DEMO_WEIGHTS:
        return DEMO_WEIGHTS[spec.model].format(work=study.work_dir), ("synth-weights",)
    return study.paths.checkpoints.get(spec.model), ()


def _finetune_jobs(study: Study, layout: DataLayout, spec, index: int, seed: int, balancing: str, mode: str,
                   pretrained: dict[str, str]) -> list[Job]:
    run_id = f"{spec.name}-{balancing}{'-lp' if mode == 'linear-probe' else ''}-s{seed}"
    out = Path(study.work_dir) / "finetune" / run_id
    checkpoint, deps = _checkpoint(study, spec, pretrained)
    study_tag = "linear-probe" if mode == "linear-probe" and spec.study == "foundation" else spec.study
    base = {"run_id": run_id, "out_dir": str(out), "store": study.store,
            "data": {"cohort": layout.cohort, "cache": layout.cohort_cache, "subsets": layout.subsets,
                     "balancing": balancing},
            "model": {"name": spec.model, "checkpoint": checkpoint},
            "train": {"seed": seed, "mode": mode}, "tags": {"study": study_tag}}
    if spec.display_name:
        base["display_name"] = spec.display_name
    where = f"finetune[{index}] ({spec.name})"
    config = _resolved(FinetuneConfig, base, study.finetune_defaults, spec.overrides, where)
    name = f"finetune-{run_id}"
    data_deps = ("subsets", layout.cohort_cache_job)
    finetune = Job(name, "finetune", ["finetune", str(config_path(study.work_dir, name))], (*data_deps, *deps),
                   config, str(out))
    predict = Job(f"predict-{run_id}", "predict", ["predict", str(config_path(study.work_dir, name)), "--force"],
                  (name,), config)
    return [finetune, predict]


def _report_job(study: Study, predict_jobs: list[str]) -> Job:
    report = study.report
    argv = ["report", "--store", study.store, "--out", str(Path(study.work_dir) / "report"), "--force",
            "--attributes", ",".join(report.attributes), "--format", ",".join(report.formats),
            "--bootstrap", str(report.bootstrap)]
    if not report.paper:
        argv.append("--no-paper")
    return Job("report", "report", argv, tuple(predict_jobs))


def _resolved(cls, base: dict, defaults: dict, overrides: dict, where: str) -> dict:
    """``base`` + dotted ``defaults`` + dotted ``overrides``, validated as ``cls``; the plain dict of the result."""
    data = base
    for label, extra in (("defaults", defaults), (where, overrides)):
        try:
            data = apply_overrides(data, [f"{k}={_yaml(v)}" for k, v in extra.items()])
        except ConfigError as exc:
            raise ConfigError(str(exc), key=label) from exc
    try:
        config = from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(str(exc), key=f"{where}.overrides") from exc
    try:  # the checks a stage makes before compute, made now: registry, architecture, policies, recipe values
        if cls is FinetuneConfig:
            resolve_recipe(config)
            check_policies(config)
        else:
            resolve_pretrain(config)
    except ValueError as exc:
        raise ConfigError(str(exc), key=where) from exc
    return to_dict(config)


def _yaml(value) -> str:
    import json

    return json.dumps(value)  # JSON is YAML: apply_overrides parses it back with the right type
