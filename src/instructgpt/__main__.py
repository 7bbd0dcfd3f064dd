"""``python -m instructgpt RECIPE.yaml`` and ``accelerate launch -m instructgpt RECIPE.yaml``."""

from instructgpt.cli import main

main()
