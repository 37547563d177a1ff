"""Typed parameters: every conf environment validates, and an unknown key or a wrong type
fails a run at its start, by name."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from machining_t2v.parameters import PIPELINE_PARAMETERS, ParameterError, Params, check_parameters

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def load_parameters(env: str | None, conf_source: Path = PROJECT_ROOT / "conf") -> dict:
    """The merged parameters of ``env`` as ``kedro run --env <env>`` sees them (settings.py's loader)."""
    from machining_t2v import settings

    loader = settings.CONFIG_LOADER_CLASS(conf_source=str(conf_source), env=env, **settings.CONFIG_LOADER_ARGS)
    return loader["parameters"]


@pytest.fixture(scope="module")
def base_parameters() -> dict:
    return load_parameters("base")


def problems(parameters: dict) -> list[str]:
    with pytest.raises(ParameterError) as error:
        check_parameters(parameters)
    return error.value.problems


def changed(parameters: dict, path: str, value) -> dict:
    """A copy of ``parameters`` with the dotted ``path`` set to ``value``."""
    parameters = copy.deepcopy(parameters)
    *parents, leaf = path.split(".")
    target = parameters
    for name in parents:
        target = target[name]
    target[leaf] = value
    return parameters


@pytest.mark.parametrize("env", ["base", "local", "sd15"])
def test_every_conf_environment_validates_as_it_is(env):
    typed = check_parameters(load_parameters(env))
    assert set(typed) == set(PIPELINE_PARAMETERS)


def default_tree(model: type[Params]) -> dict:
    """A model's defaults as nested dicts; a field without one is left out, a block without one
    contributes its own fields' defaults."""
    tree = {}
    for name, field in model.model_fields.items():
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            tree[name] = default.model_dump() if isinstance(default, Params) else default
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Params):
            tree[name] = default_tree(field.annotation)
    return tree


def assert_defaults_are_conf(defaults: dict, conf: dict, path: str) -> None:
    """Where a model has a default, it is the conf's value (the prompt lists have none)."""
    for key, value in conf.items():
        if key not in defaults:
            continue
        if isinstance(value, dict) and isinstance(defaults[key], dict):
            assert_defaults_are_conf(defaults[key], value, f"{path}.{key}")
        else:
            assert defaults[key] == value, f"{path}.{key}: model default {defaults[key]!r}, conf {value!r}"


def test_the_models_defaults_are_conf_base(base_parameters):
    for key, conf in base_parameters.items():
        assert_defaults_are_conf(default_tree(PIPELINE_PARAMETERS[key]), conf, key)


@pytest.mark.parametrize("env", ["base", "gpu"])
def test_the_starter_projects_conf_validates_against_its_own_model(env):
    """tools/starter has one key, ``starter``, with the model's defaults in its conf/base."""
    from machining_t2v_starter.parameters import STARTER_PARAMETERS, StarterParams

    parameters = load_parameters(env, PROJECT_ROOT / "tools" / "starter" / "conf")
    assert set(check_parameters(parameters, STARTER_PARAMETERS)) == {"starter"}
    if env == "base":
        assert_defaults_are_conf(default_tree(StarterParams), parameters["starter"], "starter")
    with pytest.raises(ParameterError, match=r"Unknown parameter starter\.unet\.trainig: did you mean starter\.unet\.training\?"):
        check_parameters(changed(parameters, "starter.unet.trainig", {}), STARTER_PARAMETERS)
    # The product's keys are not the starter's.
    with pytest.raises(ParameterError, match="Unknown parameter image_ft "):
        check_parameters({**parameters, "image_ft": {}}, STARTER_PARAMETERS)


def test_an_unknown_key_is_refused_by_its_dotted_path_with_the_valid_ones(base_parameters):
    (problem,) = problems(changed(base_parameters, "image_ft.scheme", "textual_inversion"))
    assert problem.startswith("Unknown parameter image_ft.scheme ")
    assert ("valid keys of image_ft: method, lora, loss, training, dreambooth, textual_inversion, "
            "gradient_checkpointing, checkpoint_dir, validation") in problem

    (problem,) = problems(changed(base_parameters, "motion_ft.loss.snr", 5.0))
    assert "Unknown parameter motion_ft.loss.snr" in problem and "snr_gamma" in problem

    (problem,) = problems(changed(base_parameters, "evaluation.prompts", [
        *base_parameters["evaluation"]["prompts"][:1], {"id": "a", "text": "b", "process": "milling",
                                                          "split": "seen", "seed": 3}]))
    assert problem.startswith("Unknown parameter evaluation.prompts[1].seed ")
    assert "valid keys of evaluation.prompts[1]: id, text, process, split" in problem

    # A top-level key that no pipeline reads.
    (problem,) = problems({**base_parameters, "lora_rank": 16})
    assert problem.startswith("Unknown parameter lora_rank ")
    assert "valid keys of the parameters: base_model, captions, frames, image_ft" in problem


def test_a_misspelling_suggests_the_key_it_meant(base_parameters):
    (problem,) = problems(changed(base_parameters, "image_ft.training.max_step", 5))
    assert problem.startswith("Unknown parameter image_ft.training.max_step: did you mean "
                              "image_ft.training.max_steps?")
    (problem,) = problems(changed(base_parameters, "image_ft.trainig", {"max_steps": 5}))
    assert "did you mean image_ft.training?" in problem
    (problem,) = problems({**base_parameters, "imag_ft": {"training": {"max_steps": 5}}})
    assert problem.startswith("Unknown parameter imag_ft: did you mean image_ft?")


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("image_ft.training.max_steps", "abc", "image_ft.training.max_steps must be a whole number, got 'abc'"),
    ("image_ft.training.max_steps", 2.5, "image_ft.training.max_steps must be a whole number, got 2.5"),
    ("image_ft.training.learning_rate", "1e-4", "image_ft.training.learning_rate must be a number, got '1e-4'"),
    ("image_ft.gradient_checkpointing", "yes", "image_ft.gradient_checkpointing must be true or false, got 'yes'"),
    ("frames.resolution", None, "frames.resolution must be a whole number, got None"),
    ("motion_ft.mode", "tempral", "motion_ft.mode must be one of temporal, dual, got 'tempral'"),
    # YAML reads an unquoted `no` as false.
    ("image_ft.training.mixed_precision", False,
     "image_ft.training.mixed_precision must be one of auto, no, fp16, bf16, got False"),
    ("image_ft.lora", 8, "image_ft.lora must be a mapping with keys rank, alpha, dropout, target_modules, got 8"),
    ("image_ft.validation.prompts", "one prompt",
     "image_ft.validation.prompts must be a list of strings, got 'one prompt'"),
    ("evaluation.processes.milling", "mill", "evaluation.processes.milling must be a list of strings, got 'mill'"),
    ("evaluation.variants", "base",
     "evaluation.variants must be a list of values among base, image, motion, both, dreambooth, "
     "textual_inversion, got 'base'"),
])
def test_a_value_of_the_wrong_type_is_refused_by_name(base_parameters, path, value, expected):
    assert problems(changed(base_parameters, path, value)) == [expected]


def test_every_problem_is_reported_at_once_and_numbers_pass_as_text(base_parameters):
    parameters = changed(changed(base_parameters, "image_ft.scheme", "x"), "generate.seed", "0")
    assert [problem.split(" ")[:3] for problem in problems(parameters)] == [
        ["Unknown", "parameter", "image_ft.scheme"], ["generate.seed", "must", "be"]]
    # `--params generate.name=2024` arrives as a number; text fields take it.
    check_parameters(changed(base_parameters, "generate.name", 2024))


def test_the_choices_agree_with_the_code_that_uses_them():
    import typing

    from machining_t2v import training
    from machining_t2v.diffusion.loss import LossConfig
    from machining_t2v.evaluation.variants import SPLITS, VARIANT_ADAPTERS
    from machining_t2v.generation import generator
    from machining_t2v.parameters import models as parameters
    from machining_t2v.pipelines.motion_ft.nodes import MODES
    from machining_t2v.training import config as training_config

    assert typing.get_args(parameters.LrScheduler) == training_config.LR_SCHEDULERS
    assert typing.get_args(parameters.MixedPrecision) == ("auto", *training_config.MIXED_PRECISIONS)
    assert typing.get_args(parameters.Optimizer) == training_config.OPTIMIZERS
    assert typing.get_args(parameters.Sampler) == generator.SCHEDULERS
    assert typing.get_args(parameters.MotionMode) == MODES
    assert typing.get_args(parameters.Variant) == tuple(VARIANT_ADAPTERS)
    assert typing.get_args(parameters.Split) == SPLITS
    # `training` takes TrainingConfig's fields (plus num_train_epochs), `loss` LossConfig's, with their defaults.
    config_defaults = {f.name: f.default for f in dataclasses.fields(training.TrainingConfig)}
    params_defaults = {name: field.default for name, field in parameters.TrainingParams.model_fields.items()}
    assert params_defaults.pop("num_train_epochs") is None
    assert params_defaults.pop("mixed_precision") == "auto"  # resolved per machine by training_config_from_params
    assert params_defaults == {k: v for k, v in config_defaults.items() if k != "mixed_precision"}
    assert {name: field.default for name, field in parameters.LossParams.model_fields.items()} == {
        f.name: f.default for f in dataclasses.fields(LossConfig)}


def test_the_models_import_neither_torch_nor_kedro():
    code = ("import sys, machining_t2v.parameters; "
            "print(sorted(m for m in ('torch', 'diffusers', 'kedro') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _written(project: Path) -> list[Path]:
    return [path for path in (project / "data").rglob("*") if path.is_file() and path.name != ".kedro-run.lock"]


def test_a_run_with_an_unknown_parameter_fails_before_its_first_node(project, tmp_path):
    from tests.conftest import run_pipeline

    start = time.monotonic()
    with pytest.raises(ParameterError, match=r"Unknown parameter image_ft\.scheme "):
        run_pipeline(project, "image_ft", {"image_ft": {"scheme": "textual_inversion"}})
    assert time.monotonic() - start < 60
    assert _written(project) == []  # not even the sample videos
    # The check comes before the base model is looked up (a broken folder would fail that too).
    broken = tmp_path / "not_a_model"
    broken.mkdir()
    with pytest.raises(ParameterError, match=r"image_ft\.training\.max_steps must be a whole number"):
        run_pipeline(project, "image_ft", {"base_model": {"pretrained": str(broken)},
                                           "image_ft": {"training": {"max_steps": "many"}}})
    assert _written(project) == []
    # No MLflow run was opened, and the project lock was given back.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert client.search_runs([experiment.experiment_id for experiment in client.search_experiments()]) == []
    from machining_t2v.kedro_glue.hooks import ProjectLock

    lock = ProjectLock(project, timeout=0)
    grab = ("import fcntl, sys; f = open(sys.argv[1], 'a'); "
            "fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)")
    assert subprocess.run([sys.executable, "-c", grab, str(lock.path)], timeout=60).returncode == 0


def test_kedro_run_refuses_an_unknown_params_key_in_seconds(tmp_path):
    from tests.conftest import make_project

    project = make_project(tmp_path / "project")
    kedro = Path(sys.executable).with_name("kedro")
    start = time.monotonic()
    result = subprocess.run([str(kedro), "run", "--pipelines=image_ft", "--params", "image_ft.scheme=textual_inversion"],
                            cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "Unknown parameter image_ft.scheme" in output, output[-3000:]
    assert time.monotonic() - start < 120
    assert _written(project) == []


def test_the_training_launcher_refuses_an_unknown_params_key(tmp_path):
    from tests.conftest import make_project

    project = make_project(tmp_path / "project")
    result = subprocess.run([sys.executable, "-m", "machining_t2v.training.launch", "image_ft", "--project-path", str(project),
                             "--no-mlflow", "--params", "image_ft.trainig.max_steps=5"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Unknown parameter image_ft.trainig: did you mean image_ft.training?" in result.stderr
    assert _written(project) == []
