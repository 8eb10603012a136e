"""Artefact contracts and building blocks shared by the stages and models (no Kedro imports).

* :mod:`~tokenrec_pipeline.core.artefacts` -- typed artefacts passed between stages.
* :mod:`~tokenrec_pipeline.core.params` -- parameter mappings into config dataclasses
  (:func:`~tokenrec_pipeline.core.params.dataclass_from_dict`).
* :mod:`~tokenrec_pipeline.core.folders` -- model artefact folders written atomically
  (:func:`~tokenrec_pipeline.core.folders.staged_folder`) and their versioned JSON config
  (:func:`~tokenrec_pipeline.core.folders.read_saved_config`).
"""
