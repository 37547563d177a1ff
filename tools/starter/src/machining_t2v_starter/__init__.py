"""The starter model's pretraining (maintainers only): the generic world it learns from
(:mod:`.world`), its training stages (:mod:`.stages`), the in-world evaluator's training
(:mod:`.evaluator_training`) and the Kedro pipelines that run them (``starter``,
``starter_check``). It imports the product (:mod:`machining_t2v`); the product never imports it.
"""
