"""Sequence models built from HJ block specs: ``HJLM`` (config-driven language model),
configs, data pipeline, training, generation, checkpoints and Hugging Face Mamba import."""
from hjseq.models.config import BlockSpec, ConfigError, ModelConfig, RunConfig, TrainConfig, load_config
from hjseq.models.kinds import get_kind, known_kinds, register_block
from hjseq.models.lm import HJLM, LSEMLP, RMSNorm

__all__ = ["HJLM", "LSEMLP", "RMSNorm", "BlockSpec", "ConfigError", "ModelConfig", "RunConfig",
           "TrainConfig", "load_config", "register_block", "get_kind", "known_kinds"]
