"""The gin edge: every gin-bound driver and gin registration, and nothing else.

No module outside this package imports gin or this package
(tests/test_gin_edge.py checks it); the library's functions and classes
stay plain, and this package gives them their gin names.

  configurables.py  gin names of the library objects the gin files name,
                    under the names (and modules) they have always had:
                    network.T5Config, models.EncoderDecoderModel,
                    bert_network.pretrained_encoder_config,
                    pretrained_t5.pretrained_t5_model, OptimizerConfig,
                    train, retrieval.SearchConfig, continual.TrainSettings,
                    continual.TextPseudoQueries,
                    continual.StoredPseudoQueries, index_corpus,
                    update_index, run_dynamic_experiment,
                    dynamic.vector_query_generator.
  run.py            the run_experiment driver (index, train, evaluate).
  dynamic.py        the run_dynamic_experiment driver (the DSI++ grid of
                    docid schemes x continual strategies x seeds; gin
                    name gr.dynamic.run_dynamic_experiment).
  generate_queries.py  the DSI-QG driver (train doc2query, write, filter
                    and report its queries; scripts/generate_queries.py).
  gin_cli.py        the gin scripts' command line (--gin_file, --gin.X)
                    and entry wrapper `gin_cli.run(main)` (gr/entry.py's
                    run after the --gin. shorthand; scripts that parse
                    no gin call entry.run).

Gin files import what they name: `import gr.experiments.configurables`
(model, train and dynamic-corpus files) or `import gr.experiments.run`
(gin/runs/experiment.gin). Calling the library's own function (e.g.
gr.train.loop.train) bypasses the gin bindings; code that relies on gin
supplying arguments calls the objects exported here (configurables.train,
run.run_experiment, ...).

This file imports nothing, so a script that only needs gin_cli does not
load the library (TensorFlow, seqio) with it.
"""
