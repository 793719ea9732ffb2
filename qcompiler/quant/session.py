"""The recipe a pipeline quantizes with (shared by calibrate, insert-qdq and the recovery passes)."""

from __future__ import annotations

from ..diagnostics import RecipeError
from .recipe import Recipe, default_recipe

#: Default activation observer per (target, precision).  Chosen by measurement on the model zoo
#: (docs/benchmarks.md, "choice of the default observer").
DEFAULT_OBSERVER = {("tensorrt", "int8"): "percentile", ("tensorrt", "fp8"): "min_max",
                    ("onnxruntime", "int8"): "percentile", ("onnxruntime", "fp8"): "min_max"}


def default_observer(recipe: Recipe) -> str:
    return DEFAULT_OBSERVER.get((recipe.target, recipe.precision), "min_max")


def ensure_recipe(ctx, target: str = "auto", precision: str = "auto") -> Recipe:
    """ctx.recipe, created from the target/precision defaults when the user gave none.  A pass option
    that contradicts a user recipe is an error rather than a silent override."""
    r = ctx.recipe
    if r is None:
        r = default_recipe("tensorrt" if target == "auto" else target, "int8" if precision == "auto" else precision)
        ctx.recipe = r
        return r
    if target != "auto" and target != r.target:
        raise RecipeError(f"the pass asks for target {target}, the recipe says {r.target}",
                          hint="drop the pass option or change the recipe's target")
    if precision != "auto" and precision != r.precision:
        raise RecipeError(f"the pass asks for precision {precision}, the recipe says {r.precision}",
                          hint="drop the pass option or change the recipe's precision")
    return r
