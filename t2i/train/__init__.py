"""The shared training loop and its launcher.

- :func:`t2i.train.loop.run_training`: the one loop every system's ``train`` calls.
- :func:`t2i.train.launch.launch` / :func:`~t2i.train.launch.launch_training`: one
  process in-process, several through ``accelerate launch`` of :mod:`t2i.train.entry`.
"""
