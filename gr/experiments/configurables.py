"""Gin names of the library's classes and functions (the registrations).

Importing this module registers every configurable the gin files name,
except run_experiment (gr/experiments/run.py). Each name and module is the
one the gin files, the scripts' --gin.X bindings and gin's config strings
have always used, so `train.optimizer = @OptimizerConfig()`,
`network.T5Config.emb_dim = 64` or `gr.train.train.seed = 1` keep working.

`gin.external_configurable` leaves the library object as it is and returns
a gin-bound one: calling the object exported here applies the bindings,
calling the library's (gr.train.train) does not.
"""

import gin

from gr.continual import generators
from gr.continual import period_plan
from gr.continual import strategies
from gr.continual import update as continual
from gr.experiments import dynamic
from gr.experiments import lexical_head
from gr.model import configs
from gr.model import models
from gr.model import network
from gr.model import pretrained_t5
from gr.search import retrieval
from gr.train import encoder_tuning
from gr.train import loop as train_lib
from gr.train import optimizer as optimizer_lib

# The model (gin/models/*.gin).
T5Config = gin.external_configurable(network.T5Config, module='network')
EncoderDecoderModel = gin.external_configurable(
  models.EncoderDecoderModel, module='models'
)
pretrained_encoder_config = gin.external_configurable(
  configs.bert_t5_config, 'pretrained_encoder_config', module='bert_network'
)
pretrained_t5_model = gin.external_configurable(
  pretrained_t5.pretrained_t5_model, module='pretrained_t5'
)

# The training loop (gin/runs/*.gin).
OptimizerConfig = gin.external_configurable(
  optimizer_lib.OptimizerConfig, module='gr.train'
)
train = gin.external_configurable(
  train_lib.train,
  module='gr.train',
  denylist=['init_params', 'batch_transform'],
)

# Search (run_experiment and run_dynamic_experiment).
SearchConfig = gin.external_configurable(
  retrieval.SearchConfig, module='retrieval'
)
# The lexical plan's term-weight head (run_experiment.term_weight_head).
HeadTraining = gin.external_configurable(
  lexical_head.HeadTraining, module='lexical_head'
)

# The pretrained encoder tuned before indexing (run_experiment.encoder_tuning).
EncoderTuning = gin.external_configurable(
  encoder_tuning.EncoderTuning, module='encoder_tuning'
)

# Continual indexing and the dynamic corpus (configs/dynamic_*.gin).
TrainSettings = gin.external_configurable(
  strategies.TrainSettings, module='continual'
)
TextPseudoQueries = gin.external_configurable(
  generators.TextPseudoQueries, module='continual'
)
StoredPseudoQueries = gin.external_configurable(
  generators.StoredPseudoQueries, module='continual'
)
index_corpus = gin.external_configurable(
  continual.index_corpus, module='gr.continual'
)
update_index = gin.external_configurable(
  continual.update_index, module='gr.continual'
)
PlanSettings = gin.external_configurable(
  period_plan.PlanSettings, module='continual'
)
run_dynamic_experiment = gin.external_configurable(
  dynamic.run_dynamic_experiment, module='gr.dynamic'
)
vector_query_generator = gin.external_configurable(
  dynamic.vector_query_generator, module='gr.dynamic'
)
