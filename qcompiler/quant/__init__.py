"""Quantization: specs, recipes, target placement rules, the placement plan, Q/DQ emission, lint."""
