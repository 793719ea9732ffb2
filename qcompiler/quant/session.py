"""The recipe a pipeline quantizes with (shared by calibrate, insert-qdq and the recovery passes)."""

from __future__ import annotations

from ..diagnostics import RecipeError
from .recipe import Recipe, default_recipe
from .targets import get_target


def default_observer(recipe: Recipe) -> str:
    """The target's default activation observer for the recipe's precision (each target file says which, chosen by
    measurement on the model zoo: docs/benchmarks.md, "choice of the default observer")."""
    from .recipe import WEIGHT_ONLY

    if recipe.precision in WEIGHT_ONLY:
        return "min_max"  # nothing is observed (weight-only); a recipe may still quantize some activation
    return get_target(recipe.target).default(recipe.precision).observer


def ensure_recipe(ctx, target: str = "auto", precision: str = "auto", attention: str = "recipe",
                  block_size: int = 128) -> Recipe:
    """ctx.recipe, created from the target/precision defaults when the user gave none.  A pass option
    that contradicts a user recipe is an error rather than a silent override.  ``attention`` (float|quantized)
    sets the recipe's ``quantize_bmm`` option (attention MatMuls) unless the user's recipe says otherwise."""
    r = ctx.recipe
    if r is None:
        r = default_recipe("tensorrt" if target == "auto" else target, "int8" if precision == "auto" else precision,
                           block_size=block_size)
        ctx.recipe = r
    else:
        if target != "auto" and get_target(target).name != r.target:
            raise RecipeError(f"the pass asks for target {target}, the recipe says {r.target}",
                              hint="drop the pass option or change the recipe's target")
        if precision != "auto" and precision != r.precision:
            raise RecipeError(f"the pass asks for precision {precision}, the recipe says {r.precision}",
                              hint="drop the pass option or change the recipe's precision")
    if attention != "recipe":
        want = attention == "quantized"
        user = r.options.get("quantize_bmm")
        if user is not None and bool(user) != want and not getattr(r, "_bmm_from_pass", False):
            raise RecipeError(f"the pass asks for attention={attention}, the recipe says quantize_bmm: {user}",
                              hint="drop the pass option or change the recipe")
        r.options["quantize_bmm"] = want
        r._bmm_from_pass = True
    return r
