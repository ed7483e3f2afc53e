"""Imported by the verifier pool's fork server, never by the parent.

Warms up sympy and math-verify once in the fork server, so every worker (and every replacement
after a hang) forks ready in milliseconds instead of paying ~2 s of imports.
"""

from zero_rl.rewards.worker import warm_up

warm_up()
