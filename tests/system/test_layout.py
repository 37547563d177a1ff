"""The layout a newcomer reads: stage packages of modest size, and tests that mirror them."""

from __future__ import annotations

from ..conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "src" / "machining_t2v"
MAX_MODULE_LINES = 500


def test_no_product_module_is_over_500_lines():
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert sizes, PACKAGE
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"split these modules by job (at most {MAX_MODULE_LINES} lines): {too_long}"


def test_every_stage_package_has_a_test_folder():
    stages = sorted(path.name for path in PACKAGE.iterdir()
                    if path.is_dir() and (path / "__init__.py").exists())
    assert {"data", "models", "lora", "training", "diffusion", "evaluation", "generation", "pipelines"} <= set(stages)
    # The Kedro glue (datasets, hooks, MLflow) is exercised by real runs: tests/pipelines and tests/system.
    missing = [stage for stage in stages if stage != "kedro_glue" and not (PROJECT_ROOT / "tests" / stage).is_dir()]
    assert not missing, f"tests/ mirrors src/machining_t2v/: add tests/<stage>/ for {missing}"
