"""The recipe a pipeline quantizes with (shared by calibrate, insert-qdq and the recovery passes)."""

from __future__ import annotations

from dataclasses import dataclass

from ..diagnostics import RecipeError
from ..pm.options import option
from .recipe import Recipe, default_recipe
from .targets import get_target, target_names


@dataclass(frozen=True)
class PlanOptions:
    """The options that decide the placement plan, one group shared by ``calibrate`` and ``insert-qdq`` (both must
    plan the same tensors): their ``Options`` derive from it."""

    target: str = option("auto", "deployment target (auto: the recipe's, else tensorrt)",
                         choices=("auto",) + target_names())
    precision: str = option("auto", "int8, fp8, or weight-only int4-weights / int8-weights (blocked MatMul/Gemm "
                                    "weights, everything else float) (auto: the recipe's, else int8)",
                            choices=("auto", "int8", "fp8", "int4-weights", "int8-weights"))
    block_size: int = option(128, "inputs per weight block for the weight-only precisions", min=1)
    attention: str = option("recipe", "attention MatMuls (two activations): recipe (its quantize_bmm), float, "
                                      "or quantized (both inputs, as TensorRT's MHA fusion takes them)",
                            choices=("recipe", "float", "quantized"))


def default_observer(recipe: Recipe) -> str:
    """The target's default activation observer for the recipe's precision (each target file says which, chosen by
    measurement on the model zoo: docs/benchmarks.md, "choice of the default observer")."""
    from .recipe import WEIGHT_ONLY

    if recipe.precision in WEIGHT_ONLY:
        return "min_max"  # nothing is observed (weight-only); a recipe may still quantize some activation
    return get_target(recipe.target).default(recipe.precision).observer


def ensure_recipe(ctx, plan: PlanOptions | None = None) -> Recipe:
    """ctx.recipe, created from the plan options (target/precision defaults) when the user gave none.  A pass option
    that contradicts a user recipe is an error rather than a silent override.  ``attention`` (float|quantized)
    sets the recipe's ``quantize_bmm`` option (attention MatMuls) unless the user's recipe says otherwise."""
    plan = plan or PlanOptions()
    target, precision, attention, block_size = plan.target, plan.precision, plan.attention, plan.block_size
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
