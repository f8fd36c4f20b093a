"""The shared training loop and its launcher.

- :mod:`t2i.train.task`: what a system hands the loop (``TrainTask``, ``OptimizerSpec``, ``EMASpec``);
  :mod:`t2i.train.optim` builds the conventional AdamW and EMAs from a ``train:`` block.
- :func:`t2i.train.loop.run_training`: the one loop that runs every system's task.
- :func:`t2i.train.launch.launch` / :func:`~t2i.train.launch.launch_training`: one
  process in-process, several through ``accelerate launch`` of :mod:`t2i.train.entry`.
"""
