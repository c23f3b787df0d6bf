"""The PULSE search: core (one image, one seed) -> programs (vmapped, jitted) -> placement -> driver."""

from pulse_jax.latent_search.core import SearchState, Spec, make_spec
from pulse_jax.latent_search.driver import Chunk, SearchInit, SearchResult, search
from pulse_jax.latent_search.keys import seed_keys
from pulse_jax.latent_search.programs import compile_step_program, default_step_loop, seed_groups

__all__ = ["Chunk", "SearchInit", "SearchResult", "SearchState", "Spec", "compile_step_program",
           "default_step_loop", "make_spec", "search", "seed_groups", "seed_keys"]
