"""Training infrastructure shared by the language-model trainers.

* :mod:`~tokenrec_pipeline.training.engine` -- the DDP-capable epoch loop (:func:`prepare_training`,
  :func:`run_training_loop`) with its parameters (:class:`LoopConfig`) and outcome (:class:`TrainResult`),
  used by LLM4Rec (:func:`~tokenrec_pipeline.models.llm4rec.train_llm4rec`) and the autoregressive baseline
  (:func:`~tokenrec_pipeline.models.autoregressive.train_autoregressive`).
"""
