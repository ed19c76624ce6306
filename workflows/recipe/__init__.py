"""The real-data recipe's steps, one module per job; the command line is :mod:`workflows.realdata`.

- :mod:`.run`: what the recipe trains, holds out and scores (:data:`~.run.RECIPE`, :data:`~.run.OTHER_SCANS`) and
  what its steps hand on (:class:`~.run.RecipeRun`);
- :mod:`.sources`: steps 1-3, the labelled sources found, converted (grey levels matched) and split by patient;
- :mod:`.training`: step 4, each stage of each network trained through the bundle for the epochs planned;
- :mod:`.scoring`: steps 5-6, the held-out and unseen scans segmented by bundle inference and scored, the summary.
"""
