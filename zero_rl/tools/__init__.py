"""Tools over the library, each a module of its own: `plan` (a training step's memory per
device, from the compiled programs), `notebook` (open, sample and compare finished runs) and
`verify` (grade any model's outputs offline: `python -m zero_rl.tools.verify`)."""
