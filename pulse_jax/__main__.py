"""``python -m pulse_jax``: the pulse-jax command."""

import sys

from pulse_jax.launch import main

sys.exit(main())
